"""The orchestrator: run a feature's task graph level by level with workers, merge each level, react to exits.

``orchestrate(plan, graph)`` is the real run behind ``mahabharatha kurukshetra``:

1. The graph is validated by the caller (:func:`mahabharatha.core.graph.load_graph`) before anything starts.
2. The base branch ``mahabharatha/<feature>/base`` is created from ``HEAD`` when missing (the user's branch
   never moves). The shared state is created, or resumed: tasks a previous run left claimed go back to
   pending, done work stays done (its commits are on the worker branches or already merged).
3. Workers start through a launcher (:mod:`.launchers`: containers, or host processes in subprocess mode).
4. The loop wakes on events only: a worker exit (Docker ``die`` events, or the process ending) or a state
   change (workers poke a FIFO in the state directory). When no task of the current level is pending or
   claimed, the worker branches are merged into the base branch with plumbing (``merge-tree``,
   ``commit-tree``, ``update-ref``: the user's checkout and index are never touched); a conflict fails the
   run naming the files. Dependants of failed tasks become blocked, then the level advances.
5. Exit policy: 2 → restart the worker (same work); 137/OOMKilled → its task back to pending and restart,
   up to ``workers.retry_attempts``, then the task fails with advice to raise
   ``resources.container_memory_limit``; 1 → its task fails (the worker restarts while work remains);
   3 → the run is blocked; 130 not caused by us → the run is stopped (resume by running again).
   ``workers.timeout_minutes`` bounds each worker (it is stopped and its task fails).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import json
import os
import queue
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from .. import events as E
from ..core.graph import TaskGraph
from ..core.model import LaunchPlan
from ..core.plan import run_branch_prefix, worker_branch_prefix
from ..core.policy import ExitFacts, HeldTask, decide
from ..errors import MahabharathaError, OrchestrationError
from ..worker import protocol as P
from ..worker import state as S
from . import worktrees as _worktrees
from .channel import ChannelServer
from .git import git, git_ok, pack_objects
from .importer import ImportRejected, adopt, discard, import_bundle
from .safefs import append_line_nofollow, read_regular
from .journal import JournalWriter
from .launchers import ContainerLauncher, SubprocessLauncher

if TYPE_CHECKING:  # pragma: no cover
    from docker import DockerClient

__all__ = [
    "RunResult",
    "Run",
    "execute",
    "orchestrate",
    "merge_into_base",
    "init_state",
    "settle_level",
]

_IDENTITY = ("-c", "user.name=mahabharatha orchestrator", "-c", "user.email=orchestrator@mahabharatha.invalid")
_MAX_CONTEXT_RESTARTS = 10  # per task: an agent that always hits its limit must not loop forever
# Claims of one task in one run beyond every legitimate retry (context restarts, OOM retries, one spare): a
# worker (or its agent, which can reach the channel) that keeps giving the task back must not loop forever.
_MAX_EXTRA_CLAIMS = _MAX_CONTEXT_RESTARTS + 2
_MAX_HAVES = 256  # commits remembered per remote worker as "it has these" (a pack excludes what they reach)
_MAX_PROGRESS_NOTES = 200  # per worker and run: the agent can reach its worker's channel too, and flood it
_SECONDS_PER_MINUTE = 60.0  # tests shrink it to exercise workers.timeout_minutes quickly
_WAKE_S = 5.0  # longest wait for an event; the loop wakes earlier when a worker's timeout falls due


class _Claim(NamedTuple):
    task_id: str
    start: str  # the commit the worker was told to start the task from
    level: int
    since: float  # monotonic time of the claim: workers.timeout_minutes counts from here


class RunResult(msgspec.Struct, frozen=True):
    status: str  # done | blocked | failed | stopped
    exit_code: int
    message: str
    levels: dict[int, dict[str, int]]
    base_branch: str
    worker_branches: tuple[str, ...]
    seconds: float
    usage: dict[str, Any] = {}  # tokens and cost per task, level and in total (see worker.state.usage_summary)


# ------------------------------------------------------------------------------------------------------------
# State


def init_state(store: S.StateStore, graph: TaskGraph) -> tuple[dict[str, Any], bool]:
    """Create the state for ``graph``, or resume the existing one. Returns (state, resumed)."""
    os.makedirs(store.dir, exist_ok=True)
    if not store.exists():
        store.create(S.new_state(graph.feature, ((t.id, t.level) for t in graph.tasks)))
        return store.read() or {}, False
    with store.transaction() as data:
        known = data["tasks"]
        for t in graph.tasks:  # tasks added to the graph since: pending; levels follow the graph
            if t.id not in known:
                known[t.id] = S.new_task(t.level)
            known[t.id]["level"] = t.level
        for tid in [tid for tid in known if tid not in {t.id for t in graph.tasks}]:
            del known[tid]
        for task in known.values():
            if task["status"] == S.CLAIMED:  # left by a stopped run: claimable again
                task.update(status=S.PENDING, worker=None)
            if task["status"] == S.BLOCKED:  # recomputed at the next level end
                task.update(status=S.PENDING, error="")
        data["levels"] = sorted({t["level"] for t in known.values()})
        for tid, dep in _blocked_by(graph, known).items():
            known[tid].update(status=S.BLOCKED, error=f"blocked by {dep}")
        if data["status"] != "done" or any(t["status"] == S.PENDING for t in known.values()):
            data["status"] = S.RUNNING
            data["message"] = ""
            S.rewind_to_pending(data)
        snapshot = dict(data)
    return snapshot, True


def _blocked_by(graph: TaskGraph, tasks: dict[str, Any]) -> dict[str, str]:
    """task id -> the failed/blocked dependency that blocks it (transitively), for tasks not yet run."""
    out: dict[str, str] = {}
    for t in sorted(graph.tasks, key=lambda t: t.level):
        if tasks[t.id]["status"] != S.PENDING:
            continue
        for dep in t.dependencies:
            if tasks[dep]["status"] in (S.FAILED, S.BLOCKED) or dep in out:
                out[t.id] = dep
                break
    return out


def settle_level(data: dict[str, Any], graph: TaskGraph) -> None:
    """After a level is merged: block dependants of failures, advance to the next level with pending work, or
    end the run (done / blocked / failed)."""
    tasks = data["tasks"]
    for tid, dep in _blocked_by(graph, tasks).items():
        tasks[tid].update(status=S.BLOCKED, error=f"blocked by {dep}")
    pending = sorted(t["level"] for t in tasks.values() if t["status"] == S.PENDING)
    if pending:
        data["level"] = pending[0]
        return
    failed = sorted(tid for tid, t in tasks.items() if t["status"] == S.FAILED)
    blocked = sorted(tid for tid, t in tasks.items() if t["status"] == S.BLOCKED)
    if blocked:
        data["status"] = "blocked"
        data["message"] = f"failed: {', '.join(failed)}; blocked: {', '.join(blocked)}"
    elif failed:
        data["status"] = "failed"
        data["message"] = f"failed: {', '.join(failed)}"
    else:
        data["status"] = "done"
        data["message"] = ""


# ------------------------------------------------------------------------------------------------------------
# Merging (plumbing only: the user's checkout and index are never touched)


def merge_into_base(repo: str, base_branch: str, branches: list[str], message: str) -> list[str]:
    """Merge each branch into ``base_branch`` (fast-forward when possible, else a merge commit made with
    ``merge-tree --write-tree``). Returns the branches merged. Raises :class:`OrchestrationError` naming the
    conflicting files; the base branch then stays where the last clean merge left it."""
    merged = []
    for branch in branches:
        base = git(repo, "rev-parse", f"refs/heads/{base_branch}")
        tip = git(repo, "rev-parse", f"refs/heads/{branch}")
        if git_ok(repo, "merge-base", "--is-ancestor", tip, base):
            continue  # nothing new
        if git_ok(repo, "merge-base", "--is-ancestor", base, tip):
            git(repo, "update-ref", f"refs/heads/{base_branch}", tip, base)
            merged.append(branch)
            continue
        out = git(repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", base, tip, check=False)
        lines = out.splitlines()
        tree = lines[0].strip() if lines else ""
        conflicted = [line for line in lines[1:] if line.strip()]
        if conflicted or len(tree) < 40:
            files = ", ".join(dict.fromkeys(conflicted)) or "(unknown)"
            raise OrchestrationError(
                f"merging {branch} into {base_branch} conflicts in: {files}",
                hint="tasks of one level must not change the same files; fix the task graph, resolve by hand on "
                f"{base_branch}, then run again",
            )
        commit = git(repo, *_IDENTITY, "commit-tree", tree, "-p", base, "-p", tip, "-m", f"{message}: merge {branch}")
        git(repo, "update-ref", f"refs/heads/{base_branch}", commit, base)
        merged.append(branch)
    return merged


# ------------------------------------------------------------------------------------------------------------
# The run


class _FifoReader:
    """Wakes the loop on every state write (workers poke the FIFO in the state directory)."""

    def __init__(self, store: S.StateStore, events: queue.Queue[tuple[Any, ...]]) -> None:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISFIFO(os.lstat(store.fifo_path).st_mode) and not os.path.isdir(store.fifo_path):
                os.unlink(store.fifo_path)  # a plain file (copied state dir, a stray write): no wake-ups through it
        if not os.path.lexists(store.fifo_path):
            os.mkfifo(store.fifo_path, 0o666)
        self.fd = os.open(store.fifo_path, os.O_RDWR)  # RDWR: never EOF, never blocks on open
        self.events = events
        self.closed = False
        threading.Thread(target=self._run, daemon=True, name="mahabharatha-state-fifo").start()

    def _run(self) -> None:
        while not self.closed:
            try:
                if not os.read(self.fd, 4096):
                    return
            except OSError:
                return
            self.events.put(("state",))

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            os.write(self.fd, b".")
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Foreign(Mapping[str, str]):
    """Files other tasks of a level own (path -> task id), as a view of the level's table without copying it."""

    def __init__(self, owners: dict[str, str], task_id: str) -> None:
        self.owners = owners
        self.task_id = task_id

    def __getitem__(self, path: str) -> str:
        owner = self.owners[path]
        if owner == self.task_id:
            raise KeyError(path)
        return owner

    def __contains__(self, path: object) -> bool:
        return self.owners.get(path, self.task_id) != self.task_id  # type: ignore[call-overload]

    def __iter__(self) -> Iterator[str]:
        return (p for p, owner in self.owners.items() if owner != self.task_id)

    def __len__(self) -> int:
        return sum(1 for owner in self.owners.values() if owner != self.task_id)


class _Run:
    """One run. The state lives in memory while the run lasts (with indexes: pending task ids per level in a
    heap, open and per-status counts per level, the tasks each worker holds), and every change is persisted as
    the changed rows only (:meth:`StateStore.write`), so a claim or a finish costs the same at any graph size.
    Writes by other processes (``stop``, ``retry``) bump the state's ``seq``: the run then reloads."""

    def __init__(
        self, plan: LaunchPlan, graph: TaskGraph, out: Callable[[str], None], launcher_factory: Callable[..., Any],
        on_event: Callable[[E.Event], None] | None = None,
    ) -> None:
        self.plan = plan
        self.graph = graph
        self.out = out
        self.on_event = on_event
        self.store = S.StateStore(plan.state_dir, plan.feature)
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.launcher_factory = launcher_factory
        self.launcher: Any = None
        self.alive: dict[int, Any] = {}  # worker id -> current container id / pid
        self.started_at: dict[int, float] = {}
        self.context_restarts: dict[str, int] = {}  # task id -> exits 2 on it
        self.error_restarts: dict[int, int] = {}
        self.timed_out: set[int] = set()
        self.stopping = False  # we are ending the run (stop signal or final status)
        self.stopped_by_user = False
        self.seconds_per_minute = _SECONDS_PER_MINUTE
        self._restore_signals: Callable[[], None] = lambda: None  # set while an interrupted run stops its workers
        # Every change of the state in this process happens under this lock (the channel's threads and the
        # loop); waiting claims sleep on ``changed`` and wake on every change.
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.claims: dict[int, _Claim] = {}
        self._subjects: dict[str, str] = {}  # commit -> subject, for prompts naming what dependencies did
        self.last_task: dict[int, str] = {}  # worker id -> the task it claimed last (exit 2 names it)
        self.server: ChannelServer | None = None
        # Workers that may keep leftovers (``park``): once per container start, before its first claim. The
        # agent can reach its worker's socket too; it must not fill the user's repository with parked refs.
        self.may_park: set[int] = set()
        self.parked_claim: dict[int, _Claim] = {}  # remote workers: the claim whose leftovers were kept
        self.progress_notes: dict[int, int] = {}  # worker id -> progress notes written in this run
        self.claim_counts: dict[str, int] = {}  # task id -> claims in this run
        self.progress_path = os.path.join(plan.repo, ".gsd", "specs", plan.feature, P.PROGRESS_FILE)
        # The graph, indexed once (its own lookups are linear scans).
        self.task_of = {t.id: t for t in graph.tasks}
        self.raw_of = dict(zip((t.id for t in graph.tasks), graph.raw_tasks)) if graph.raw_tasks else {}
        self.owners: dict[int, dict[str, str]] = {}
        for t in graph.tasks:
            for path in t.files.owned:
                self.owners.setdefault(t.level, {})[path] = t.id
        self.tips: dict[int, str] = {}  # worker id -> its branch's commit, as this run last set or saw it
        # Remote transport: commits each worker's private repository has (sent to it, or made by it and
        # imported), so a claim sends only the objects it lacks.
        self.remote = plan.transport == "remote"
        self.sent: dict[int, list[str]] = {}
        self.base_tip = ""
        self._ancestry: dict[tuple[str, str], bool] = {}
        # The in-memory state and its indexes (see _load).
        self.run_doc: dict[str, Any] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.heaps: dict[int, list[str]] = {}
        self.counts: dict[int, dict[str, int]] = {}
        self.held: dict[int, set[str]] = {}
        self.cost = 0.0
        self.dirty: set[str] = set()
        self.my_seq = 0
        self.journal: JournalWriter | None = None  # open while the run holds its lock
        self.stop_announced = False
        self.review_asked: set[int] = set()
        self.starts: dict[str, str] = {}  # task id -> the commit its last attempt started from (review's reject)

    # -- the state in memory ---------------------------------------------------------------------------------
    def _load(self, data: dict[str, Any]) -> None:
        """(Re)build the in-memory state and its indexes from a whole document (start, resume, foreign write)."""
        self.run_doc = {k: v for k, v in data.items() if k not in ("tasks", "processes")}
        self.tasks = data["tasks"]
        self.heaps, self.counts, self.held, self.cost = {}, {}, {}, 0.0
        for tid in sorted(self.tasks):
            t = self.tasks[tid]
            self._index(tid, t, +1)
            self.cost += float((t.get("usage") or {}).get("cost_usd") or 0)
        self.my_seq = int(self.run_doc.get("seq", 0))
        self.dirty.clear()

    def _index(self, tid: str, t: dict[str, Any], sign: int) -> None:
        level, status = t["level"], t["status"]
        counts = self.counts.setdefault(level, {})
        counts[status] = counts.get(status, 0) + sign
        if status == S.PENDING and sign > 0:
            heapq.heappush(self.heaps.setdefault(level, []), tid)
        if status == S.CLAIMED and t.get("worker") is not None:
            mine = self.held.setdefault(t["worker"], set())
            if sign > 0:
                mine.add(tid)
            else:
                mine.discard(tid)

    def _set(self, tid: str, **fields: Any) -> dict[str, Any]:
        """Change one task's record (indexes follow); persisted by the next :meth:`_save`."""
        t = self.tasks[tid]
        self._index(tid, t, -1)
        t.update(fields)
        if t["status"] == S.PENDING:
            t["worker"] = None
        self._index(tid, t, +1)
        self.dirty.add(tid)
        return t

    def _save(self, **run: Any) -> None:
        """Persist the changed tasks and the given run fields (one transaction, one row per change)."""
        self.run_doc.update(run)
        tasks = {tid: self.tasks[tid] for tid in self.dirty}
        self.dirty.clear()
        before, after = self.store.write(tasks, run or None)
        foreign = before != self.my_seq
        self.my_seq = after
        self.run_doc["seq"] = after
        if foreign:  # someone else (stop, retry) wrote in between: their rows are newer than our memory
            self._reload()

    def _reload(self) -> None:
        data = self.store.read() or {}
        if data:
            self._load(data)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[dict[str, Any]]:
        """A whole-document transaction under the run's lock (O(tasks): for tests and rare paths); the memory
        reloads afterwards and waiting claims wake."""
        with self.changed:
            with self.store.transaction() as data:
                yield data
            self._reload()
            self.changed.notify_all()

    def _sync(self) -> None:
        """Notice writes by other processes (``mahabharatha stop``, ``retry``): reload when the seq moved."""
        run = self.store.read_run() or {}
        if int(run.get("seq", 0)) != self.my_seq:
            self._reload()
            self.changed.notify_all()

    def _status(self) -> str:
        return str(self.run_doc.get("status", "failed"))

    def _open(self, level: int) -> int:
        counts = self.counts.get(level, {})
        return counts.get(S.PENDING, 0) + counts.get(S.CLAIMED, 0)

    def _npending(self) -> int:
        return sum(c.get(S.PENDING, 0) for c in self.counts.values())

    def _pop_pending(self, level: int) -> str | None:
        heap = self.heaps.get(level, [])
        while heap:
            tid = heapq.heappop(heap)
            t = self.tasks.get(tid)
            if t is not None and t["status"] == S.PENDING and t["level"] == level:
                return tid
        return None

    # -- helpers -------------------------------------------------------------------------------------------
    def _worker_branches(self) -> list[str]:
        return [spec.worktree.branch for spec in self.plan.workers]

    def _emit(self, event: E.Event) -> None:
        if self.journal is not None:
            try:
                self.journal.append(event)
            except OSError as exc:  # a full disk must not take the run down: say it once, go on without
                self.journal = None
                self.out(f"note: the event journal stopped being written: {exc}")
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a broken callback must not take the run down
                self.on_event(event)
        text = E.describe(event)
        if text is not None:
            self.out(text)

    def _log(self, text: str) -> None:
        self._emit(E.Notice(text))

    def _failed_event(self, tid: str, wid: int | None) -> None:
        self._emit(E.TaskFailed(tid, wid, self.tasks[tid].get("error", "")))

    def _finish_level_if_settled(self) -> None:
        with self.changed:  # settled-check, merge and advance in one step: no claim or finish in between
            self._finish_level_locked()
            self.changed.notify_all()

    def _finish_level_locked(self) -> None:
        while True:
            if self._status() != S.RUNNING:
                return
            level = self.run_doc["level"]
            if self._open(level):
                return
            if self.plan.review and not self._review_gate(level):
                return  # waits for `mahabharatha approve` (a state write wakes the loop, which comes back here)
            counts = {s: n for s, n in self.counts.get(level, {}).items() if n}
            try:
                merged = merge_into_base(
                    self.plan.repo, self.plan.base_branch, self._existing_branches(), f"mahabharatha {self.plan.feature} level {level}"
                )
            except OrchestrationError as exc:
                self._save(status="failed", message=str(exc))
                self._log(f"level {level}: {exc}")
                return
            self.base_tip = ""
            if self.plan.review:
                self._save(review={"level": level, "state": "merged", "reject": []})
            self._settle_locked()
            self._emit(E.LevelMerged(level, counts, tuple(merged), self.plan.base_branch, self._base_commit()))
            if self._status() != S.RUNNING:
                return
            self._emit(E.LevelStarted(self.run_doc["level"], self._base_commit()))

    # -- workers.review ------------------------------------------------------------------------------------
    def _review_gate(self, level: int) -> bool:
        """True when ``level`` may be merged: its review was approved. Otherwise apply the rejections asked for
        (``mahabharatha reject``), ask for a review once (the diff stat, an event) and return False."""
        review = self.run_doc.get("review") if isinstance(self.run_doc.get("review"), dict) else {}
        same = review.get("level") == level
        if same and review.get("state") == "approved":
            return True
        rejects = [t for t in review.get("reject") or [] if isinstance(t, str)] if same else []
        if same and review.get("state") == "waiting" and not rejects and level in self.review_asked:
            return False  # asked already (by this run); still waiting
        for tid in rejects:
            self._reject(tid, level)
        done = tuple(sorted(tid for tid, t in self.tasks.items() if t["level"] == level and t["status"] == S.DONE))
        self._save(review={"level": level, "state": "waiting", "reject": []})
        self.review_asked.add(level)
        self._emit(E.ReviewRequested(level, self._level_stat(), done))
        return False

    def _level_stat(self) -> str:
        """``git diff --stat`` of what merging the level would bring: the base against each worker branch."""
        base = self._base_commit()
        parts = []
        for branch in self._existing_branches():
            tip = git(self.plan.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
            if not tip or git_ok(self.plan.repo, "merge-base", "--is-ancestor", tip, base):
                continue
            stat = git(self.plan.repo, "diff", "--no-color", "--stat", f"{base}...{tip}", "--", check=False)
            if stat:
                parts.append(f"{branch}:\n{stat}")
        return "\n".join(parts)

    def _reject(self, tid: str, level: int) -> None:
        """Fail a done task of the level under review and take its commit off its worker's branch (kept under
        the task's failed ref). Only a worker's latest task can come off: later work on top is named instead."""
        t = self.tasks.get(tid)
        if t is None or t["level"] != level or t["status"] != S.DONE:
            self._log(f"review: cannot reject {tid}: not a done task of level {level}")
            return
        commit, wid = str(t.get("commit") or ""), t.get("worker")
        ref = P.failed_ref(self.plan.feature, tid)
        if commit and wid is not None and 0 <= wid < len(self.plan.workers):
            branch = f"refs/heads/{self.plan.workers[wid].worktree.branch}"
            tip = git(self.plan.repo, "rev-parse", "--verify", "--quiet", branch, check=False)
            if tip != commit:
                later = sorted(o for o, x in self.tasks.items() if x.get("worker") == wid and x["level"] == level
                               and x["status"] == S.DONE and o != tid)
                self._log(f"review: cannot reject {tid} alone: worker {wid} has later work on top ({', '.join(later) or tip[:10]}); reject that first")
                return
            start = self.starts.get(tid) or git(self.plan.repo, "rev-parse", "--verify", "--quiet", f"{commit}^", check=False)
            git(self.plan.repo, "update-ref", ref, commit)
            git(self.plan.repo, "update-ref", branch, start, commit)
            self.tips[wid] = start
        self._set(tid, status=S.FAILED, commit="", error="rejected in review" + (f" (work kept at {ref})" if commit else ""))
        self._save()
        self._failed_event(tid, wid)

    def _settle_locked(self) -> None:
        """The in-memory :func:`settle_level`: block dependants of failures, advance or end, in one write."""
        for tid, dep in _blocked_by(self.graph, self.tasks).items():
            self._set(tid, status=S.BLOCKED, error=f"blocked by {dep}")
        pending = [lvl for lvl in sorted(self.counts) if self.counts[lvl].get(S.PENDING, 0)]
        if pending:
            self._save(level=pending[0])
            return
        failed = sorted(tid for tid, t in self.tasks.items() if t["status"] == S.FAILED)
        blocked = sorted(tid for tid, t in self.tasks.items() if t["status"] == S.BLOCKED)
        if blocked:
            self._save(status="blocked", message=f"failed: {', '.join(failed)}; blocked: {', '.join(blocked)}")
        elif failed:
            self._save(status="failed", message=f"failed: {', '.join(failed)}")
        else:
            self._save(status="done", message="")

    def _existing_branches(self) -> list[str]:
        """Every worker branch of the feature, including those of an earlier run with more workers (their done
        tasks' commits must reach the base too), in worker order."""
        prefix = f"refs/heads/{worker_branch_prefix(self.plan.feature)}"
        # for-each-ref matches a literal pattern only up to a '/', so ask for the run's branch directory.
        refs = git(
            self.plan.repo, "for-each-ref", "--format=%(refname)", f"refs/heads/{run_branch_prefix(self.plan.feature)}"
        ).splitlines()
        numbered = []
        for ref in refs:
            suffix = ref[len(prefix):] if ref.startswith(prefix) else ""
            if suffix.isdigit():
                numbered.append((int(suffix), ref[len("refs/heads/"):]))
        return [branch for _, branch in sorted(numbered)]

    def _pending_work(self) -> bool:
        return self._status() == S.RUNNING and self._npending() > 0

    def _restart(self, wid: int, why: str) -> None:
        self._emit(E.WorkerStarted(wid, why))
        with self.changed:
            self.may_park.add(wid)
        self.launcher.restart(wid)
        self.alive[wid] = self.launcher.current(wid)
        self.started_at[wid] = time.monotonic()
        self._emit(E.WorkerReady(wid))

    def _mark_stopped(self, message: str) -> bool:
        if self._status() != S.RUNNING:
            return False
        self._save(status="stopped", message=message)
        self._stopping_event(message)
        return True

    def _stopping_event(self, message: str) -> None:
        if not self.stop_announced:
            self.stop_announced = True
            self._emit(E.RunStopping(message))

    def _base_commit(self) -> str:
        return git(self.plan.repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{self.plan.base_branch}", check=False)

    def _usage_event(self, tid: str, wid: int | None, usage: Any) -> None:
        """One attempt's usage as a ``task_usage`` event (only bounded numbers: the worker's report is untrusted)."""
        if not isinstance(usage, dict):
            return
        counted: dict[str, Any] = {}
        for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
                counted[key] = value
        cost = usage.get("cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and 0 <= cost < 10**6:
            counted["cost_usd"] = round(float(cost), 6)
        model = usage.get("model")
        if isinstance(model, str):
            counted["model"] = model[:80]
        if counted:
            self._emit(E.TaskUsage(tid, wid, **counted))

    def _release(self, wid: int, status: str = S.PENDING, error: str = "") -> list[str]:
        """The tasks ``wid`` holds go to ``status`` (in memory; the caller saves)."""
        mine = sorted(self.held.get(wid, ()))
        for tid in mine:
            self._set(tid, status=status, error=error[:500])
        return mine

    def _note(self, line: str) -> None:
        """Append one line to the feature's progress.md (the orchestrator's words; never through a symlink)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        prefix = f"- {stamp} "
        with contextlib.suppress(MahabharathaError, OSError):  # a note, never a reason to stop the run
            append_line_nofollow(self.progress_path, prefix + line, limit_line=len(prefix) + P.MAX_PROGRESS_CHARS)

    # -- the workers' channel --------------------------------------------------------------------------------
    def handle(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        """Answer one request of worker ``wid`` (called on its connection's thread)."""
        op = message["op"]
        if not self.run_doc and op != "hello":  # served before run() loaded the state (the unit tests' harness)
            with self.lock:
                if not self.run_doc:
                    self._reload()
        if op == "hello":
            spec = self.plan.workers[wid]
            start = _worktrees.ensure_worker_branch(self.plan.repo, spec.worktree.branch, self.plan.base_branch)
            # Not under the run's lock: a restart waits (holding it) for this very worker to announce itself.
            self.tips[wid] = start
            reply: dict[str, Any] = {"ok": True, "start": start, "feature": self.plan.feature, "branch": spec.worktree.branch}
            if self.remote:
                reply["_blob"] = pack_objects(self.plan.repo, [start])
                reply["spec"] = self._spec_files()
                self.sent[wid] = [start]
            return reply
        if op == "secrets":  # remote transport: credentials over the channel, never through the engine
            if not self.remote:
                return {"ok": False, "error": "credentials are sent over the channel to remote workers only"}
            spec = self.plan.workers[wid]
            return {"ok": True, "env": {s.name: s.value.reveal() for s in spec.secret_environment}}
        if op == "claim":
            reply = self._claim(wid)
            if self.remote and reply.get("start"):
                self._send_missing(wid, reply, [reply["start"], reply.get("checkpoint") or ""])
            return reply
        if op == "finish":
            return self._finish(wid, message, blob)
        if op == "park":
            return self._park(wid, message, blob)
        if op == "checkpoint":
            return self._checkpoint(wid, message, blob)
        if op == "release":
            with self.changed:
                released = self._release(wid)
                self._save()
                self.claims.pop(wid, None)
                self.changed.notify_all()
            self.events.put(("state",))
            return {"ok": True, "released": released}
        if op == "progress":
            n = self.progress_notes[wid] = self.progress_notes.get(wid, 0) + 1
            if n <= _MAX_PROGRESS_NOTES:
                self._note(f"worker {wid}: {str(message.get('line', ''))}")
            elif n == _MAX_PROGRESS_NOTES + 1:
                self._note(f"worker {wid}: more than {_MAX_PROGRESS_NOTES} progress notes; further ones are dropped")
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {op!r}"}

    def _has(self, wid: int, commit: str) -> None:
        """Worker ``wid``'s repository has ``commit`` now (remote transport bookkeeping, bounded)."""
        if self.remote and commit:
            known = self.sent.setdefault(wid, [])
            if commit not in known:
                known.append(commit)
                del known[:-_MAX_HAVES]

    def _send_missing(self, wid: int, reply: dict[str, Any], wants: list[str]) -> None:
        """Attach to ``reply`` a pack of the commits in ``wants`` the worker lacks (outside the run's lock)."""
        known = self.sent.get(wid, [])
        missing = [c for c in wants if c and c not in known]
        if missing:
            reply["_blob"] = pack_objects(self.plan.repo, missing, known)
            for commit in missing:
                self._has(wid, commit)

    def _spec_files(self) -> dict[str, str]:
        """The feature's spec files for a worker nothing is mounted into (small, regular files only)."""
        out: dict[str, str] = {}
        budget = P.MAX_SPEC_BYTES
        for name in P.SPEC_FILES:
            path = os.path.join(self.plan.repo, ".gsd", "specs", self.plan.feature, name)
            with contextlib.suppress(MahabharathaError, OSError, UnicodeDecodeError):
                text = read_regular(path, limit=max(budget, 0), what=f"the spec file {name}", follow_symlinks=False).decode("utf-8")
                budget -= len(text.encode("utf-8"))
                out[name] = text
        return out

    def _start_for(self, wid: int) -> str:
        """The commit worker ``wid``'s next task starts from: the level's base when the worker branch is
        behind it (the level merged it), else the worker branch (it holds tasks of this level already).
        Tips and ancestry are remembered: git is asked only when a branch moved."""
        spec = self.plan.workers[wid]
        mine = self.tips.get(wid) or _worktrees.ensure_worker_branch(self.plan.repo, spec.worktree.branch, self.plan.base_branch)
        self.tips[wid] = mine
        if not self.base_tip:
            self.base_tip = git(self.plan.repo, "rev-parse", f"refs/heads/{self.plan.base_branch}")
        base = self.base_tip
        key = (mine, base)
        if key not in self._ancestry:
            self._ancestry[key] = mine == base or git_ok(self.plan.repo, "merge-base", "--is-ancestor", mine, base)
        return base if self._ancestry[key] else mine

    def _claim(self, wid: int) -> dict[str, Any]:
        with self.changed:
            while True:
                status = self._status()
                if status in S.FINAL or self.stopping:
                    return {"ok": True, "final": status if status in S.FINAL else "stopped"}
                if status == S.RUNNING:
                    level = self.run_doc["level"]
                    task_id = self._take(wid)
                    if task_id is not None:
                        self.may_park.discard(wid)
                        t = self.tasks[task_id]
                        attempt = t["attempts"]
                        start = self._start_for(wid)
                        self.claims[wid] = _Claim(task_id, start, level, time.monotonic())
                        self.last_task[wid] = task_id
                        self.changed.notify_all()
                        self._emit(E.TaskClaimed(task_id, wid, attempt, level, start))
                        raw_text = self.raw_of.get(task_id)
                        raw = json.loads(raw_text) if raw_text is not None else json.loads(self.graph.raw_task(task_id))
                        return {
                            "ok": True, "task": raw, "task_id": task_id, "attempt": attempt, "start": start,
                            "level": level, "checkpoint": str(t.get("checkpoint") or ""), "context": self._context(task_id),
                        }
                    elif self._open(level) == 0:
                        self.events.put(("state",))  # the level is settled: the loop merges it
                self.changed.wait(timeout=_WAKE_S)

    def _take(self, wid: int) -> str | None:
        """The state part of a claim (under the lock): give back what ``wid`` held, take the first pending task
        of the current level (by id), persist that one row. None when the level has nothing pending."""
        if wid in self.claims or self.held.get(wid):  # a worker holds one task at a time
            self._release(wid)
            self.claims.pop(wid, None)
        task_id = self._pop_pending(self.run_doc["level"])
        while task_id is not None and self._claimed_too_often(task_id):
            # Claimed and given back over and over (released or checkpointed each time, e.g. by a hostile
            # agent): the run must end, so the task fails.
            n = self.claim_counts[task_id] - 1
            self._set(task_id, status=S.FAILED, worker=None, error=(
                f"given back {n} times in this run without a result (released or checkpointed each time); see the "
                "worker's log"))
            self._emit(E.TaskFailed(task_id, wid, self.tasks[task_id]["error"]))
            task_id = self._pop_pending(self.run_doc["level"])
        if task_id is not None:
            t = self.tasks[task_id]
            self._set(task_id, status=S.CLAIMED, worker=wid, error="", attempts=t.get("attempts", 0) + 1)
        if self.dirty:
            self._save()
        return task_id

    def _context(self, task_id: str) -> dict[str, Any]:
        """What a task's prompt names beside the task: its dependencies, their files and commit subjects."""
        deps = []
        for dep_id in self.task_of[task_id].dependencies:
            dep = self.task_of[dep_id]
            commit = str((self.tasks.get(dep_id) or {}).get("commit") or "")
            subject = self._subjects.get(commit) if commit else ""
            if subject is None:
                subject = self._subjects[commit] = git(self.plan.repo, "log", "-1", "--format=%s", commit, check=False)
            deps.append({"id": dep_id, "title": dep.title, "files": list(dep.files.owned), "subject": subject[:200]})
        return {"dependencies": deps}

    def _claimed_too_often(self, task_id: str) -> bool:
        n = self.claim_counts[task_id] = self.claim_counts.get(task_id, 0) + 1
        return n > 1 + _MAX_EXTRA_CLAIMS + self.plan.retry_attempts

    def _owns(self, wid: int, task_id: str) -> bool:
        claim = self.claims.get(wid)
        task = self.tasks.get(task_id) or {}
        return (
            claim is not None and claim.task_id == task_id and task.get("status") == S.CLAIMED and task.get("worker") == wid
        )

    def _foreign(self, task_id: str, level: int) -> Mapping[str, str]:
        """Files other tasks of ``level`` own (path -> task id): a result touching them is rejected."""
        return _Foreign(self.owners.get(level, {}), task_id)

    def _add_cost(self, task: dict[str, Any], usage: Any) -> None:
        before = float((task.get("usage") or {}).get("cost_usd") or 0)
        _add_usage(task, usage)
        self.cost += float((task.get("usage") or {}).get("cost_usd") or 0) - before

    def _finish(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        task_id, status, commit = message.get("task"), message.get("status"), message.get("commit") or ""
        if not isinstance(task_id, str) or status not in (S.DONE, S.FAILED) or not isinstance(commit, str):
            return {"ok": False, "error": "finish needs task (text), status (done|failed) and commit (text)"}
        error = _clip(" ".join(str(message.get("error") or "").split()), 400)
        spec = self.plan.workers[wid]
        feature = self.plan.feature
        failed_ref = P.failed_ref(feature, task_id)
        with self.changed:
            if not self._owns(wid, task_id):
                return {"ok": True, "status": "lost", "error": f"task {task_id} is no longer claimed by worker {wid}"}
            claim = self.claims[wid]
            self.starts[task_id] = claim.start
        # Verified outside the lock (other workers claim and finish meanwhile), in an incoming ref of its own;
        # adopted onto the worker branch below, under the lock, only if the task is still this worker's: a
        # task the timeout failed meanwhile must not reach the worker branch (and so the base).
        incoming = f"refs/mahabharatha/incoming/{feature}/worker-{wid}-{uuid.uuid4().hex[:8]}"
        verified = False
        if status == S.DONE and commit:
            try:
                if blob is None:
                    raise ImportRejected("a commit without its bundle")
                import_bundle(
                    self.plan.repo, blob, expected_ref=f"refs/heads/{spec.worktree.branch}", commit=commit,
                    dest_ref=None, incoming_ref=incoming, start=claim.start,
                    foreign=self._foreign(task_id, claim.level), keep_rejected_at=failed_ref,  # type: ignore[arg-type]
                )
                verified = True
            except ImportRejected as exc:
                status = S.FAILED
                kept = git_ok(self.plan.repo, "rev-parse", "--verify", "--quiet", failed_ref)
                error = _clip(f"result rejected: {exc}" + (f" (work kept at {failed_ref})" if kept else ""), 480)
                commit = ""
        elif status == S.FAILED:
            if commit and blob is not None:
                try:
                    import_bundle(
                        self.plan.repo, blob, expected_ref=P.PARK_REF, commit=commit, dest_ref=failed_ref,
                        incoming_ref=incoming,
                    )
                    error = _clip(error, 400) + f" (work kept at {failed_ref})"
                except ImportRejected as exc:
                    error = _clip(error, 300) + f" (its work could not be kept: {_clip(str(exc), 150)})"
            commit = ""
            error = error or "failed"
        with self.changed:
            if not self._owns(wid, task_id) or self.claims.get(wid) is not claim:
                if verified:
                    discard(self.plan.repo, incoming)
                return {"ok": True, "status": "lost", "error": f"task {task_id} is no longer claimed by worker {wid}"}
            if verified:
                adopt(self.plan.repo, incoming, f"refs/heads/{spec.worktree.branch}", commit)
                self.tips[wid] = commit
                self._has(wid, commit)
            task = self._set(task_id, status=status, commit=commit, error=error[:500])
            self._add_cost(task, message.get("usage"))
            self._usage_event(task_id, wid, message.get("usage"))
            if status == S.DONE:
                task.pop("checkpoint", None)
            self._check_budget()
            self._save()
            self.claims.pop(wid, None)
            self.changed.notify_all()
            if status == S.DONE:
                self._emit(E.TaskDone(task_id, wid, commit))
            else:
                self._failed_event(task_id, wid)
        self.events.put(("state",))
        self._note(f"worker {wid}: {task_id} {status}" + (f" {commit[:10]}" if commit else "") + (f": {error}" if error else ""))
        return {"ok": True, "status": status, "error": error, "commit": commit}

    def _check_budget(self) -> None:
        """workers.max_cost_usd: once the run's agents together cost that much, the run stops (resumable)."""
        budget = self.plan.max_cost_usd
        if budget is None or self._status() != S.RUNNING:
            return
        if self.cost >= budget:
            self.run_doc.update(
                status="stopped",
                message=f"cost budget reached: {P.format_money(self.cost)} of workers.max_cost_usd={P.format_money(budget)}; raise it and run again to resume",
            )
            self._save(status=self.run_doc["status"], message=self.run_doc["message"])
            self._stopping_event(self.run_doc["message"])

    def _checkpoint(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        """The worker's agent reached its context threshold: keep the work so far (verified like any result)
        under the task's checkpoint ref and give the task back; the next attempt continues from it."""
        task_id, commit = message.get("task"), message.get("commit") or ""
        if not isinstance(task_id, str) or not isinstance(commit, str):
            return {"ok": False, "error": "checkpoint needs task and commit (text)"}
        with self.changed:
            if not self._owns(wid, task_id):
                return {"ok": True, "status": "lost", "error": f"task {task_id} is no longer claimed by worker {wid}"}
            claim = self.claims[wid]
            ref = P.checkpoint_ref(self.plan.feature, task_id)
            kept = ""
            if commit and blob is not None:
                try:
                    import_bundle(
                        self.plan.repo, blob, expected_ref=P.PARK_REF, commit=commit, dest_ref=ref,
                        incoming_ref=f"refs/mahabharatha/incoming/{self.plan.feature}/worker-{wid}", start=claim.start,
                        foreign=self._foreign(task_id, claim.level),  # type: ignore[arg-type]
                    )
                    kept = commit
                    self._has(wid, commit)
                except ImportRejected as exc:
                    self._log(f"worker {wid}: the checkpoint of {task_id} was rejected: {exc}")
            self._release(wid)
            task = self._set(
                task_id, checkpoint=kept, error=_clip(f"checkpoint after {str(message.get('reason') or 'the context limit')}", 300)
            )
            self._add_cost(task, message.get("usage"))
            self._usage_event(task_id, wid, message.get("usage"))
            self._check_budget()
            self._save()
            self.claims.pop(wid, None)
            self.changed.notify_all()
        self.events.put(("state",))
        self._note(f"worker {wid}: {task_id} checkpoint" + (f" {kept[:10]}" if kept else " (no changes yet)"))
        return {"ok": True, "ref": ref if kept else ""}

    def _park(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        commit = message.get("commit")
        if message.get("kind") != "interrupted" or not isinstance(commit, str) or blob is None:
            return {"ok": False, "error": "park needs kind=interrupted, a commit and its bundle"}
        prefix = P.interrupted_ref_prefix(self.plan.feature, wid)
        with self.changed:
            # Once per worker start, before its first task; a remote worker (its workspace goes with its
            # container) also once for the task it still holds, as it leaves it. Each park keeps a ref and its
            # objects in the user's repository: the agent can speak for its worker, so never more than that.
            claim = self.claims.get(wid) if self.remote else None
            leaving = claim is not None and self.parked_claim.get(wid) is not claim
            if wid not in self.may_park and not leaving:
                return {"ok": False, "error": "leftovers are kept once per worker start, before its first task"}
            ref = f"{prefix}{int(time.time())}"
            n = 1
            while git_ok(self.plan.repo, "rev-parse", "--verify", "--quiet", ref):
                n += 1
                ref = f"{prefix}{int(time.time())}-{n}"
            try:
                import_bundle(
                    self.plan.repo, blob, expected_ref=P.PARK_REF, commit=commit, dest_ref=ref,
                    incoming_ref=f"refs/mahabharatha/incoming/{self.plan.feature}/worker-{wid}",
                )
            except ImportRejected as exc:
                return {"ok": False, "error": str(exc)}
            if wid not in self.may_park and claim is not None:
                self.parked_claim[wid] = claim
            self.may_park.discard(wid)
        self._log(f"worker {wid}: kept uncommitted leftovers of an interrupted task at {ref}")
        return {"ok": True, "ref": ref}

    # -- exits ---------------------------------------------------------------------------------------------
    def _on_exit(self, wid: int, code: int | None, oom: bool, lost: bool = False) -> None:
        with self.changed:
            self._on_exit_locked(wid, code, oom, lost)
            self.changed.notify_all()

    def facts(self, wid: int, code: int | None, oom: bool, lost: bool = False) -> ExitFacts:
        """What :func:`mahabharatha.core.policy.decide` needs to know about worker ``wid``'s exit."""
        last = self.last_task.get(wid, "")
        held = tuple(HeldTask(tid, int(self.tasks[tid].get("attempts", 0))) for tid in sorted(self.held.get(wid, ())))
        return ExitFacts(
            worker=wid, code=code, meaning=P.exit_meaning(code) + (", OOMKilled" if oom else ""), oom=oom,
            oom_known=self.plan.containers, lost=lost, timed_out=wid in self.timed_out,
            ending=self._status() in S.FINAL or self.stopping, held=held, last_task=last,
            last_task_pending=(self.tasks.get(last) or {}).get("status") == S.PENDING,
            context_restarts=self.context_restarts.get(last, 0), error_restarts=self.error_restarts.get(wid, 0),
            pending=self._pending_work(), retry_attempts=self.plan.retry_attempts,
            mem_limit=self.plan.workers[wid].mem_limit, max_context_restarts=_MAX_CONTEXT_RESTARTS,
        )

    def _on_exit_locked(self, wid: int, code: int | None, oom: bool, lost: bool = False) -> None:
        self.alive.pop(wid, None)
        self.claims.pop(wid, None)  # its claimed task is settled below, by the exit policy
        self.tips.pop(wid, None)  # a new worker says hello again
        f = self.facts(wid, code, oom, lost)
        self.timed_out.discard(wid)
        d = decide(f)
        for change in d.changes:
            self._set(change.task, status=change.status, error=change.error[:500])
        if d.count == "context":
            self.context_restarts[f.last_task] = f.context_restarts + 1
        elif d.count == "error":
            self.error_restarts[wid] = f.error_restarts + 1
        if d.stopped_by_user:
            self.stopped_by_user = True
        if d.stop_run and self._status() == S.RUNNING:
            self._save(status="stopped", message=d.stop_run)
        elif d.changes:
            self._save()
        for change in d.changes:
            if change.status == S.FAILED:
                self._failed_event(change.task, wid)
        held = ", ".join(h.task for h in f.held)
        self._emit(E.WorkerExited(wid, code, f.meaning, oom, held or f.last_task, d.note))
        if d.restart:
            self._restart(wid, d.restart)

    def _check_timeouts(self) -> float:
        """Stop workers whose task attempt runs longer than ``workers.timeout_minutes`` (counted from the claim);
        return seconds until the next deadline."""
        limit = self.plan.timeout_minutes * self.seconds_per_minute
        wait = _WAKE_S
        with self.changed:
            now = time.monotonic()
            for wid, claim in sorted(self.claims.items()):
                if wid not in self.alive or wid in self.timed_out:
                    continue
                if now - claim.since > limit:
                    self.timed_out.add(wid)
                    minutes = self.plan.timeout_minutes
                    # Fail its task first (under the lock): a finish arriving later finds it no longer claimed.
                    failed = self._release(wid, S.FAILED, f"task attempt timed out after {minutes} min (workers.timeout_minutes)")
                    self._save()
                    self.claims.pop(wid, None)
                    self.changed.notify_all()
                    for tid in failed:
                        self._failed_event(tid, wid)
                    self._log(f"worker {wid}: task {claim.task_id} over workers.timeout_minutes={minutes}; stopping it; failed {', '.join(failed) or 'no task'}")
                    self.launcher.stop(wid)
                else:
                    wait = min(wait, claim.since + limit - now + 0.01)
        return wait

    # -- main ----------------------------------------------------------------------------------------------
    def request_stop(self, message: str = "stopped by the caller; run again to resume") -> None:
        """Ask the run to stop (from any thread): the loop marks it stopped and stops the workers."""
        self.events.put(("stop", message))

    def run(self) -> RunResult:
        os.makedirs(self.store.dir, exist_ok=True)
        lock_fd = self.store.try_run_lock()
        if lock_fd is None:
            raise OrchestrationError(
                f"another `mahabharatha kurukshetra` is running feature {self.plan.feature} in {self.plan.repo}",
                hint="wait for it, or stop it with `mahabharatha stop`",
            )
        try:
            # Under the lock: one run appends to the feature's journal at a time (a resumed run continues it).
            self.journal = JournalWriter(self.plan.repo, self.plan.feature)
            return self._run()
        finally:
            self._restore_signals()  # Ctrl-C works again once the workers are stopped and closed
            journal, self.journal = self.journal, None
            if journal is not None:
                with contextlib.suppress(OSError):
                    journal.close()  # fsync: the run's record survives a crash of the machine
            os.close(lock_fd)
            self.store.close()

    def _run(self) -> RunResult:
        t0 = time.monotonic()
        plan = self.plan
        _worktrees.ensure_base_branch(plan.repo, plan.base_branch)
        data, resumed = init_state(self.store, self.graph)
        with self.lock:
            self._load(self.store.read() or data)
        done = sum(c.get(S.DONE, 0) for c in self.counts.values())
        self._emit(E.RunStarted(
            plan.feature, len(self.tasks), tuple(self.run_doc.get("levels") or ()), resumed, done,
            int(self.run_doc.get("level", 0)), self._base_commit(),
        ))
        fifo = _FifoReader(self.store, self.events)
        if self.remote:  # one TCP listener, a token per worker; the runtime package is served from it
            self.server = ChannelServer(
                {}, self.handle, tcp=plan.channel, workers=[spec.worker_id for spec in plan.workers],
                runtime_dir=os.path.dirname(P.__file__),
            )
        else:
            self.server = ChannelServer({spec.worker_id: spec.channel_socket for spec in plan.workers}, self.handle)
        try:
            self.server.start()
            self._finish_level_if_settled()  # a resumed run may stand at a level end
            if self._status() == S.RUNNING:
                n = len(plan.workers)
                self._emit(E.WorkersStarting(plan.feature, n, plan.mode, len(self.graph.tasks), len(self.graph.levels)))
                if plan.containers:  # the launch in the words the tutorial uses
                    self._log(f"Container mode: using image {plan.image}")
                    if self.remote and self.server.link is not None:
                        self._log(f"Engine {plan.engine} ({plan.engine_source}): nothing mounted; workers dial {self.server.link.url}")
                    for spec in plan.workers:
                        self._log(f"Launching Worker {spec.worker_id}: {spec.name} (memory={spec.mem_limit}, cpus={spec.cpus})")
                link = {"link": self.server.link} if self.remote else {}
                self.launcher = self.launcher_factory(plan, self.events, self.out, **link)
                with self.changed:
                    self.may_park.update(spec.worker_id for spec in plan.workers)
                self.launcher.start_all()
                for spec in plan.workers:
                    self.alive[spec.worker_id] = self.launcher.current(spec.worker_id)
                    self.started_at[spec.worker_id] = time.monotonic()
                    self._emit(E.WorkerStarted(spec.worker_id))
                    self._emit(E.WorkerReady(spec.worker_id))
                self._log("All containers running. Orchestrator started." if plan.containers else f"{n} worker(s) ready")
                self._loop()
        except KeyboardInterrupt:
            # A second Ctrl-C (or a SIGTERM) must not cut the stop short and leave containers behind.
            self._restore_signals = _ignore_interrupts()
            self._log("interrupted: stopping workers (run again to resume; Ctrl-C is ignored until they have stopped)")
            self.stopping = True
            with contextlib.suppress(Exception):
                with self.changed:
                    self._mark_stopped("interrupted; run again to resume")
                    self.changed.notify_all()
            if self.launcher is not None:
                self.launcher.stop_all()
            self._release_claims()
        except BaseException as exc:
            # Our own failure (engine gone, git error, a bug): never leave a fleet waiting for a level advance
            # that will not come. Stop it, record why, and let the error reach the caller.
            with contextlib.suppress(Exception):
                with self.changed:
                    self._mark_stopped(_clip(f"orchestrator stopped: {exc}", 500))
            if self.launcher is not None:
                try:
                    self.launcher.stop_all()
                except Exception:  # noqa: BLE001 - workers may still run: leave their claims alone
                    pass
                else:
                    self._release_claims()
                with contextlib.suppress(Exception):
                    self.launcher.close(success=False)
            with contextlib.suppress(Exception):
                self.store.export()
            raise
        finally:
            fifo.close()
            with self.changed:
                self.stopping = True
                self.changed.notify_all()
            self.server.close()
        with self.changed:
            self._sync()
            if self._status() == S.RUNNING:  # every worker gone with work left
                self._save(status="failed", message=self.run_doc.get("message") or "all workers exited with work left; see the logs")
        if self.launcher is not None:
            self.launcher.close(success=self._status() == "done")
        data = self.store.read() or {}
        with contextlib.suppress(OSError):
            self.store.export()
        status = data.get("status", "failed")
        code = {"done": P.EXIT_DONE, "blocked": P.EXIT_BLOCKED, "stopped": P.EXIT_STOPPED}.get(status, P.EXIT_ERROR)
        result = RunResult(
            status=status,
            exit_code=code,
            message=data.get("message", ""),
            levels=S.summary(data),
            base_branch=plan.base_branch,
            worker_branches=tuple(self._worker_branches()),
            seconds=time.monotonic() - t0,
            usage=S.usage_summary(data),
        )
        self._emit(E.RunFinished(result.status, result.exit_code, result.message, result.seconds))
        return result

    def _release_claims(self) -> None:
        """Every worker is stopped: tasks still claimed (a worker killed before it could release them, e.g. a
        launch cut short) go back to pending, so the state shows what a resumed run will do."""
        with contextlib.suppress(Exception):
            with self.changed:
                for wid in sorted(w for w, held in self.held.items() if held):
                    self._release(wid)
                self._save()

    def _loop(self) -> None:
        while True:
            self._finish_level_if_settled()
            status = self._status()
            if status in S.FINAL:
                if not self.stopping:
                    with self.changed:
                        self.stopping = True
                        self.changed.notify_all()
                    if status == "stopped":  # e.g. `mahabharatha stop` asked through the state
                        self._stopping_event(str(self.run_doc.get("message") or "stop requested"))
                        if not self.stopped_by_user:
                            self._log(f"run stopped ({self.run_doc.get('message') or 'stop requested'}): stopping the workers")
                        self.launcher.stop_all()
                if not self.alive:
                    return
            elif not self.alive:
                return
            wait = self._check_timeouts() if not self.stopping else _WAKE_S
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                # Safety net, not the mechanism: if an exit event was lost (e.g. the engine's event stream
                # broke), ask for the exits directly; and look for writes of other processes.
                with self.changed:
                    self._sync()
                for wid, code, oom, lost in self.launcher.poll_exits(dict(self.alive)):
                    self._on_exit(wid, code, oom, lost)
                continue
            kind = event[0]
            if kind == "state":
                with self.changed:
                    self._sync()
                continue
            if kind == "stop":
                with self.changed:
                    self._mark_stopped(event[1])
                    self.changed.notify_all()
                continue
            if kind == "die":  # container: read exit code and OOMKilled from the engine
                _, wid, cid = event
                if self.alive.get(wid) != cid:
                    continue  # an old container of this worker (replaced)
                code, oom, lost = self.launcher.exit_of(cid)
                self._on_exit(wid, code, oom, lost)
            elif kind == "exit":  # subprocess
                _, wid, code, oom, pid = event
                if self.alive.get(wid) != pid:
                    continue
                self._on_exit(wid, code, oom)


_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "turns", "duration_ms")


def _add_usage(task: dict[str, Any], usage: Any) -> None:
    """Add one attempt's usage (as the worker reported it: untrusted, so only bounded numbers) to the task's."""
    if not isinstance(usage, dict):
        return
    total = task.get("usage") if isinstance(task.get("usage"), dict) else {}
    for key in _USAGE_KEYS:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
            total[key] = int(total.get(key, 0)) + value
    cost = usage.get("cost_usd")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool) and 0 <= cost < 10**6:
        total["cost_usd"] = round(float(total.get("cost_usd", 0.0)) + float(cost), 6)
    model = usage.get("model")
    if isinstance(model, str) and model:
        total["model"] = model[:80]
    if total:
        task["usage"] = total


def _clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut (a path or hint cut mid-way must not look whole)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ignore_interrupts() -> Callable[[], None]:
    """Ignore SIGINT, SIGTERM and SIGHUP (main thread only) while the run stops its workers; return the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _prepared(
    plan: LaunchPlan, graph: TaskGraph | None, *, out: Callable[[str], None] | None, client: DockerClient | None,
    keep_failed: bool, on_event: Callable[[E.Event], None] | None,
) -> _Run:
    """Checks before any effect (graph, run branches checked out, engine, images, names), then the run."""
    graph = graph if graph is not None else plan.graph
    if graph is None:
        from ..core.graph import graph_path
        from ..errors import GraphError

        raise GraphError(
            f"{graph_path(plan.repo, plan.feature)}: no task graph for feature {plan.feature!r}, so the plan has none",
            hint="run the design phase first, it writes the task graph; then plan again",
        )
    if graph.feature != plan.feature:
        raise OrchestrationError(
            f"the task graph is for feature {graph.feature!r}, the launch for {plan.feature!r}",
            hint="fix `feature` in the task graph or pass --feature",
        )
    _worktrees.refuse_checked_out_run_branches(plan.repo, plan.feature)
    if plan.mode == "container":
        from .executor import preflight

        # Engine, images and names first: a run that cannot start must not create the base branch or the
        # state (else the next attempt "resumes" a run that never began).
        factory: Callable[..., Any] = functools.partial(
            ContainerLauncher, client=preflight(plan, client=client), keep_failed=keep_failed
        )
    elif plan.mode == "kubernetes":
        from .kube import KubeLauncher, kube_client

        # (``client`` is a kubernetes ApiClient here, or None for kubeconfig's)
        factory = functools.partial(
            KubeLauncher, api_client=kube_client(client), namespace=plan.namespace or "default", keep_failed=keep_failed
        )
    elif plan.mode == "swarm":
        from .swarm import SwarmLauncher, swarm_preflight

        factory = functools.partial(SwarmLauncher, client=swarm_preflight(plan, client=client), keep_failed=keep_failed)
    else:
        factory = SubprocessLauncher
    return _Run(plan, graph, out if out is not None else (lambda _line: None), factory, on_event)


def _run_it(run: _Run) -> RunResult:
    try:
        return run.run()
    except S.StateError as exc:  # a hand-edited or foreign state: one line, not a traceback
        raise OrchestrationError(str(exc)) from None


def orchestrate(
    plan: LaunchPlan,
    graph: TaskGraph | None = None,
    *,
    out: Callable[[str], None] = print,
    client: DockerClient | None = None,
    keep_failed: bool = False,
    on_event: Callable[[E.Event], None] | None = None,
) -> RunResult:
    """Run ``graph`` (default: the plan's own) with the plan's workers until the run is done, blocked, failed
    or stopped. ``out`` gets one text line per event that has one (:func:`mahabharatha.events.describe`),
    ``on_event`` every :mod:`typed event <mahabharatha.events>`."""
    return _run_it(_prepared(plan, graph, out=out, client=client, keep_failed=keep_failed, on_event=on_event))


def execute(
    plan: LaunchPlan,
    *,
    client: DockerClient | None = None,
    keep_failed: bool = False,
    on_event: Callable[[E.Event], None] | None = None,
    out: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the feature the plan describes, as ``mahabharatha kurukshetra`` does, and return its result.

    Takes the feature's run lock; checks the engine, images and container names (container mode) before
    anything changes; creates the base branch and the state (or resumes them); starts the workers; merges
    each level into ``mahabharatha/<feature>/base``; applies the exit policy; stops and removes the containers
    at the end (``keep_failed`` keeps them after a failure). Progress arrives as typed events through
    ``on_event`` (see :mod:`mahabharatha.events`), and as text lines through ``out`` (default: none).

    ``KeyboardInterrupt`` (Ctrl-C, or a signal the caller turns into one) stops the workers, removes the
    containers, leaves the state resumable and returns a ``stopped`` result. ``client`` is a
    ``docker.DockerClient`` (default: from the environment). Raises :class:`~mahabharatha.errors.GraphError`
    when the plan has no task graph, and the other :class:`~mahabharatha.errors.MahabharathaError` subclasses for
    anything the user can fix (one line each).
    """
    return orchestrate(plan, None, out=out if out is not None else (lambda _line: None), client=client,
                       keep_failed=keep_failed, on_event=on_event)


_DONE = object()


class Run:
    """``execute`` in a background thread, as a context manager and an iterator of events::

        with mahabharatha.Run(plan) as run:
            for event in run:            # typed events until the run finishes
                print(event)
        print(run.result)                # the RunResult

    Leaving the block (normally, by an exception or Ctrl-C) stops the run if it still goes, waits for its
    workers to stop and their containers to be removed, like testcontainers' containers do. :meth:`stop`
    asks the run to stop from any thread (the result is then ``stopped``, resumable).
    """

    def __init__(
        self, plan: LaunchPlan, *, client: DockerClient | None = None, keep_failed: bool = False,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self._events: queue.Queue[Any] = queue.Queue()
        self._run = _prepared(plan, None, out=out, client=client, keep_failed=keep_failed, on_event=self._events.put)
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mahabharatha-run", daemon=True)

    def _main(self) -> None:
        try:
            self.result = _run_it(self._run)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self.error = exc
        finally:
            self._events.put(_DONE)

    def start(self) -> Run:
        self._thread.start()
        return self

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self._thread.is_alive():
            self.stop()
        self._join()

    def __iter__(self) -> Iterator[E.Event]:
        while True:
            event = self._events.get()
            if event is _DONE:
                return
            yield event

    def stop(self, message: str = "stopped by the caller; run again to resume") -> None:
        """Ask the run to stop: it marks the run stopped, stops the workers and removes their containers."""
        self._run.request_stop(message)

    def _join(self) -> None:
        while self._thread.is_alive():
            try:
                self._thread.join(timeout=0.5)
            except KeyboardInterrupt:  # a second Ctrl-C: keep waiting, the cleanup must finish
                self.stop()

    def wait(self) -> RunResult:
        """Block until the run ends; return its result (or raise its error)."""
        try:
            self._join()
        except KeyboardInterrupt:
            self.stop()
            self._join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
