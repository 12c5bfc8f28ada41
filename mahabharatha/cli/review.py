"""``mahabharatha diff [TASK | --worker N | --level L] [--stat | --name-only | --name-status]``: what a task, a
worker or a level changed, against the level's base.

The commits come from the journal (:mod:`mahabharatha.edge.journal`): each level's base (``run_started`` /
``level_started``), the commit after its merge (``level_merged``), where each task started (``task_claimed``)
and what it committed (``task_done``). ``git diff`` runs through the hardened host git
(:func:`mahabharatha.edge.git.git`: no hooks, no fsmonitor); only full commit ids and the run's own refs are
passed to it, never text from elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from .. import events as E
from ..errors import MahabharathaError

__all__ = ["cmd_diff", "RunCommits", "run_commits"]

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@dataclass
class RunCommits:
    bases: dict[int, str] = field(default_factory=dict)  # level -> base commit when it started
    merged: dict[int, str] = field(default_factory=dict)  # level -> base commit after its merge
    claims: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # task -> (worker, level, start)
    done: dict[str, str] = field(default_factory=dict)  # task -> its commit ("" when it changed nothing)
    failed: set[str] = field(default_factory=set)
    by_worker: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (worker, level) -> commits in order


def _sha(text: str) -> str:
    return text if _SHA.match(text or "") else ""


def run_commits(entries: list[E.Event]) -> RunCommits:
    """The commits a diff needs, from the journal's events (the latest record of each wins: a retried task, a
    resumed run)."""
    rc = RunCommits()
    for event in entries:
        if isinstance(event, E.RunStarted) and _sha(event.base):
            rc.bases[event.level] = event.base
        elif isinstance(event, E.LevelStarted) and _sha(event.base):
            rc.bases[event.level] = event.base
        elif isinstance(event, E.LevelMerged) and _sha(event.commit):
            rc.merged[event.level] = event.commit
        elif isinstance(event, E.TaskClaimed):
            rc.claims[event.task] = (event.worker, event.level, _sha(event.start))
        elif isinstance(event, E.TaskDone):
            rc.done[event.task] = _sha(event.commit)
            rc.failed.discard(event.task)
            claim = rc.claims.get(event.task)
            if claim is not None and rc.done[event.task]:
                rc.by_worker.setdefault((claim[0], claim[1]), []).append(rc.done[event.task])
        elif isinstance(event, E.TaskFailed):
            rc.failed.add(event.task)
            rc.done.pop(event.task, None)
    return rc


def _range(args: argparse.Namespace, repo: str, feature: str, rc: RunCommits) -> tuple[str, str, str]:
    """(left, right, what) for the request."""
    from ..edge.git import git_ok
    from ..worker.protocol import failed_ref

    task, worker, level = getattr(args, "task", None), getattr(args, "worker", None), getattr(args, "level", None)
    if task is not None:
        if task not in rc.claims:
            raise MahabharathaError(f"no task {task!r} was claimed in the journal of feature {feature}", hint="see `mahabharatha status`")
        _, tlevel, start = rc.claims[task]
        left = start or rc.bases.get(tlevel, "")
        if task in rc.done:
            if not rc.done[task]:
                raise MahabharathaError(f"task {task} is done and changed nothing")
            right = rc.done[task]
        else:
            ref = failed_ref(feature, task)
            if task in rc.failed and git_ok(repo, "rev-parse", "--verify", "--quiet", ref):
                right = ref  # a failed task's kept work
            else:
                raise MahabharathaError(f"task {task} has no commit (not done, and no work kept under {ref})")
        if not left:
            raise MahabharathaError(f"the journal does not say where task {task} started")
        return left, right, f"task {task}"
    if worker is not None:
        levels = sorted(lv for (w, lv) in rc.by_worker if w == worker)
        if level is None:
            if not levels:
                raise MahabharathaError(f"worker {worker} committed nothing in this feature's journal")
            level = levels[-1]
        commits = rc.by_worker.get((worker, level))
        if not commits:
            raise MahabharathaError(f"worker {worker} committed nothing in level {level}")
        base = rc.bases.get(level)
        if not base:
            raise MahabharathaError(f"the journal has no base for level {level}")
        return base, commits[-1], f"worker {worker}, level {level}"
    if level is None:
        if not rc.merged:
            raise MahabharathaError("no level has been merged yet", hint="pass TASK or --worker N")
        level = max(rc.merged)
    base = rc.bases.get(level)
    if not base:
        raise MahabharathaError(f"the journal has no base for level {level}", hint="see `mahabharatha events`")
    if level not in rc.merged:
        raise MahabharathaError(f"level {level} is not merged yet", hint="`--worker N --level L` shows each worker's work so far")
    return base, rc.merged[level], f"level {level}"


def cmd_diff(args: argparse.Namespace) -> int:
    from ..edge.git import git
    from ..edge.journal import read_entries
    from .common import repo_feature

    repo, feature = repo_feature(args)
    entries = [e.event for e in read_entries(repo, feature)]
    if not entries:
        raise MahabharathaError(f"no event journal for feature {feature!r}", hint="start a run with `mahabharatha kurukshetra`")
    left, right, what = _range(args, repo, feature, run_commits(entries))
    flags = [f for f, on in (("--stat", args.stat), ("--name-only", args.name_only), ("--name-status", args.name_status)) if on]
    out = git(repo, "diff", "--no-color", "--no-ext-diff", "--no-textconv", *flags, left, right, "--")
    print(f"# {what}: git diff {left[:12]} {right if right.startswith('refs/') else right[:12]}", file=sys.stderr)
    if out:
        print(out)
    return 0


@contextlib.contextmanager
def _review(args: argparse.Namespace) -> Iterator[tuple[str, dict, dict]]:
    """A state transaction on the level waiting for review: (feature, state document, review record)."""
    from .common import repo_feature, state_store

    repo, feature = repo_feature(args)
    store = state_store(repo, feature)
    if not store.exists():
        raise MahabharathaError(f"no run state for feature {feature!r}", hint="start one with `mahabharatha kurukshetra`")
    with store.transaction() as data:
        yield feature, data, _waiting(data, feature)


def _waiting(data: dict, feature: str) -> dict:
    review = data.get("review") if isinstance(data.get("review"), dict) else {}
    if review.get("state") != "waiting":
        raise MahabharathaError(
            f"no level of feature {feature} is waiting for review",
            hint="set `workers.review: true` in .mahabharatha/config.yaml; a run then pauses before each merge",
        )
    return review


def cmd_approve(args: argparse.Namespace) -> int:
    """Let the level under review merge (the run waiting on it goes on)."""
    with _review(args) as (_feature, _data, review):
        review["state"] = "approved"
        level = review.get("level")
    print(f"Level {level} approved: the run merges it and goes on.")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Fail a done task of the level under review; its work is kept under its failed ref, never merged."""
    from ..worker.protocol import failed_ref

    with _review(args) as (feature, data, review):
        task = data["tasks"].get(args.task)
        if task is None or task.get("level") != review.get("level") or task.get("status") != "done":
            raise MahabharathaError(
                f"{args.task!r} is not a done task of level {review.get('level')}, the level under review",
                hint="see `mahabharatha status`",
            )
        review["reject"] = sorted({*(review.get("reject") or []), args.task})
    print(f"Task {args.task} rejected: the run fails it and keeps its work at {failed_ref(feature, args.task)}; "
          "the level waits for `mahabharatha approve` again.")
    return 0
