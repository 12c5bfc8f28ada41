"""``mahabharatha kurukshetra`` (plan, launch, orchestrate) and ``mahabharatha demo``.

The ``--dry-run`` branch lives in :mod:`.dryrun`. A real run is :func:`mahabharatha.plan` (which reads and
validates the task graph before anything starts) then :func:`mahabharatha.execute`, and ends with a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LaunchError

if TYPE_CHECKING:  # pragma: no cover
    from ..core.graph import TaskGraph
    from ..edge.orchestrator import RunResult

__all__ = ["cmd_kurukshetra", "cmd_demo", "format_summary", "read_graph"]


_stdout_gone = False


_output_lock = threading.Lock()  # events arrive from several threads: one whole line at a time


def _say(text: str) -> None:
    """A progress line on stdout. A reader that left (`kurukshetra | head -2`) is no reason to stop the
    workers: further lines are dropped, the run goes on, and the exit code still reports it."""
    _say_plain(f"[{time.strftime('%H:%M:%S')}] {text}")


def _say_plain(text: str) -> None:
    global _stdout_gone
    with _output_lock:
        if _stdout_gone:
            return
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            _stdout_gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _say_err(text: str) -> None:
    """Progress lines when stdout carries the JSON result (``kurukshetra --json``)."""
    with _output_lock:
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        sys.stderr.flush()


def read_graph(repo: str, feature: str) -> TaskGraph:
    """Load and validate ``.gsd/specs/<feature>/task-graph.json`` (GraphError when missing, not a regular file,
    too big, unreadable, invalid or written for another feature): see
    :func:`mahabharatha.edge.graphfile.read_task_graph`."""
    from ..edge.graphfile import read_task_graph

    return read_task_graph(repo, feature)


def format_summary(result: RunResult, *, repo: str) -> str:
    from ..worker.state import format_usage

    lines = [f"Run {result.status} in {result.seconds:.1f} s" + (f": {result.message}" if result.message else "")]
    usage = result.usage or {}
    for level, counts in result.levels.items():
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        spent = format_usage((usage.get("levels") or {}).get(level) or {})
        lines.append(f"  level {level}: {shown}" + (f" ({spent})" if spent else ""))
    if usage.get("total"):
        lines.append(f"  agents used: {format_usage(usage['total'])}")
    lines.append(f"  base branch: {result.base_branch} (merged work; `git log {result.base_branch}` in {repo})")
    lines.append(f"  worker branches: {', '.join(result.worker_branches)}")
    if result.status == "stopped":
        lines.append("  run `mahabharatha kurukshetra` again to resume")
    elif result.status in ("failed", "blocked"):
        lines.append("  see `mahabharatha status` and `mahabharatha logs`; `mahabharatha retry` puts failed tasks back")
    return "\n".join(lines)


def _uncommitted_note(repo: str, base_branch: str) -> str:
    """When a fresh run's base branch will be made from HEAD while the checkout has uncommitted changes to
    tracked files: say they are not part of the run (workers see commits only)."""
    from ..edge.git import git, git_ok

    if git_ok(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{base_branch}"):
        return ""  # resuming: the base exists and holds the run's own history
    changed = git(repo, "status", "--porcelain", "--untracked-files=no", check=False).splitlines()
    if not changed:
        return ""
    return (
        f"your checkout has uncommitted changes to {len(changed)} tracked file(s); workers start from the last "
        f"commit (HEAD), so those changes are not part of this run (commit them first if they should be)"
    )


def _dirty_worktree_notes(launch_plan: Any) -> list[str]:
    """Worker worktrees of an earlier run holding uncommitted changes: the worker will park them on a ref and
    start clean (never lost, never mixed into a task's commit). Say where, since the worktree will not show
    them any more."""
    from ..edge.git import git
    from ..edge.worktrees import uncommitted_changes
    from ..worker.protocol import interrupted_ref_prefix

    notes = []
    for spec in launch_plan.workers:
        path = spec.worktree.path
        if not (Path(path) / ".git").exists():
            continue
        try:
            tip = git(launch_plan.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{spec.worktree.branch}", check=False)
            if not tip:
                continue
            changes = uncommitted_changes(launch_plan.repo, path, tip)
        except Exception:  # noqa: BLE001 - a broken worktree is reported by the launch itself
            continue
        if changes:
            shown = ", ".join(c[3:] for c in changes[:3]) + (" …" if len(changes) > 3 else "")
            ref = interrupted_ref_prefix(launch_plan.feature, spec.worker_id) + "*"
            notes.append(
                f"worktree {path} has uncommitted changes ({shown}); worker {spec.worker_id} keeps them on {ref} "
                f"and starts clean (`git log -p --glob='{ref}'` shows them)"
            )
    return notes


def cmd_kurukshetra(args: argparse.Namespace) -> int:
    if getattr(args, "render", None) and not getattr(args, "dry_run", False):
        from ..errors import ConfigError

        raise ConfigError(f"--render {args.render} prints the plan and runs nothing: add --dry-run")
    if getattr(args, "dry_run", False):
        from .dryrun import run_dry_run

        return run_dry_run(args)
    from ..edge.orchestrator import execute
    from ..planning import plan

    as_json = bool(getattr(args, "json", False))  # the result as one JSON document on stdout, progress on stderr
    say = _say_err if as_json else _say
    launch_plan = plan(
        getattr(args, "repo", "."),
        feature=getattr(args, "feature", None),
        workers=getattr(args, "workers", None),
        mode=getattr(args, "mode", None),
    )
    if launch_plan.graph is None:  # before anything starts
        read_graph(launch_plan.repo, launch_plan.feature)  # raises the one-line "no task graph" error
    for notice in launch_plan.notices:
        say(f"note: {notice}")
    uncommitted = _uncommitted_note(launch_plan.repo, launch_plan.base_branch)
    if uncommitted:
        say(f"note: {uncommitted}")
    for note in _dirty_worktree_notes(launch_plan):
        say(f"note: {note}")
    from .live import run_with_view

    result = run_with_view(launch_plan, execute, say=say, keep_failed=getattr(args, "keep_failed", False), plain=as_json)
    if as_json:
        import json

        from .documents import result_document
        from .common import state_store

        doc = result_document(result, repo=launch_plan.repo, feature=launch_plan.feature,
                              data=state_store(launch_plan.repo, launch_plan.feature).read())
        print(format_summary(result, repo=launch_plan.repo), file=sys.stderr, flush=True)
        _say_plain(json.dumps(doc, indent=1, sort_keys=True))
        return result.exit_code
    _say_plain(format_summary(result, repo=launch_plan.repo))
    return result.exit_code


def _demo_image(client: Any, requested: str | None) -> str:
    """The image the demo runs: ``--image``, else ``mahabharatha-worker`` when present, else build
    ``mahabharatha-worker:demo`` (no claude CLI needed) from the package's Dockerfile, saying so."""
    from ..edge.images import DEFAULT_IMAGE, ensure_image, image_exists

    if requested:
        if not image_exists(client, requested):
            raise LaunchError(f"image {requested} not found on the Docker engine", hint="build it or drop --image")
        return requested
    if image_exists(client, DEFAULT_IMAGE):
        return DEFAULT_IMAGE
    tag = f"{DEFAULT_IMAGE}:demo"
    if image_exists(client, tag):
        return tag
    base = os.environ.get("MAHABHARATHA_DEMO_BASE_IMAGE")
    if not base:
        base = "mahabharatha-base:trixie" if image_exists(client, "mahabharatha-base:trixie") else "python:3.12-slim"
    _say(f"worker image {DEFAULT_IMAGE} not found: building {tag} (BASE_IMAGE={base}, without the claude CLI) ...")
    try:
        ensure_image(client, tag, buildargs={"BASE_IMAGE": base, "INSTALL_CLAUDE": "0"}, on_output=lambda line: print(f"    {line}", flush=True))
    except LaunchError as exc:
        exc.hint = (
            f"{exc.hint + '; ' if exc.hint else ''}offline? build a local base with "
            "`scripts/build_offline_base.sh mahabharatha-base:trixie` and run the demo again "
            "(or set MAHABHARATHA_DEMO_BASE_IMAGE, or pass --image)"
        )
        raise
    _say(f"built {tag}")
    return tag


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the sample feature in containers with the scripted agent and show the merged result."""
    from ..core.graph import load_graph
    from ..demo import DEMO_FEATURE, create_demo_repo, graph_text
    from ..edge.executor import make_client
    from ..edge.git import git
    from ..edge.orchestrator import execute
    from ..errors import ConfigError
    from ..planning import plan

    workers = getattr(args, "workers", 3) or 3
    sample = load_graph("the demo's task graph", graph_text())
    widest = max(len(sample.tasks_at(level)) for level in sample.levels)
    if workers > widest:  # more would only start containers with nothing to do
        _say(f"note: the sample feature has at most {widest} tasks per level: using {widest} workers, not {workers}")
        workers = widest
    where = None
    if getattr(args, "dir", None):
        where = Path(args.dir)
        if where.exists() and not where.is_dir():
            raise ConfigError(f"--dir {where}: not a directory", hint="pass a new or empty directory for the demo")
        if (where / "repo").exists():
            raise ConfigError(
                f"--dir {where}: {where / 'repo'} already exists (the demo creates a fresh repository there)",
                hint="pass a new or empty directory, or remove that one",
            )
    client = make_client(workers=workers)
    image = _demo_image(client, getattr(args, "image", None))
    where = where if where is not None else Path(tempfile.mkdtemp(prefix="mahabharatha-demo-"))
    # A prefix of its own: container names are global on an engine, and two demos may run at once.
    prefix = f"mahabharatha-demo-{uuid.uuid4().hex[:6]}"
    repo = create_demo_repo(where / "repo", image=image, workers=workers, container_prefix=prefix)
    _say(f"demo repository: {repo}")
    empty_home = Path(tempfile.mkdtemp(prefix="mahabharatha-demo-home-"))
    # No credentials and no ~/.claude: the scripted agent needs none, and none should reach the containers.
    launch_plan = plan(str(repo), feature=DEMO_FEATURE, workers=workers, mode="container", environ={}, home=empty_home)
    result = execute(launch_plan, out=_say, client=client)
    print(format_summary(result, repo=str(repo)), flush=True)
    base = launch_plan.base_branch
    print(f"\n$ git log --oneline --graph {base}", flush=True)
    print(git(repo, "log", "--oneline", "--graph", base))
    print(f"\n$ git ls-tree -r --name-only {base}")
    print(git(repo, "ls-tree", "-r", "--name-only", base))
    if result.status == "done":
        print(f"\n$ git show {base}:wordcount/core.py")
        print(git(repo, "show", f"{base}:wordcount/core.py"))
        print(f"\nTry it: git -C {repo} switch {base} && echo 'the cat the dog' | python3 -m wordcount")
    sys.stdout.flush()
    return result.exit_code
