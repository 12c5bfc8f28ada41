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
import fcntl
import json
import os
import queue
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import msgspec

from ..core.graph import TaskGraph
from ..core.model import LaunchPlan
from ..core.plan import run_branch_prefix, worker_branch_prefix
from ..errors import OrchestrationError
from ..worker import protocol as P
from ..worker import state as S
from . import worktrees as _worktrees
from .channel import ChannelServer
from .git import git, git_ok
from .importer import ImportRejected, import_bundle
from .launchers import ContainerLauncher, SubprocessLauncher

__all__ = [
    "RunResult",
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


class _Run:
    def __init__(self, plan: LaunchPlan, graph: TaskGraph, out: Callable[[str], None], launcher_factory: Callable[..., Any]) -> None:
        self.plan = plan
        self.graph = graph
        self.out = out
        self.store = S.StateStore(plan.state_dir, plan.feature)
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.launcher_factory = launcher_factory
        self.alive: dict[int, Any] = {}  # worker id -> current container id / pid
        self.started_at: dict[int, float] = {}
        self.context_restarts: dict[str, int] = {}  # task id -> exits 2 on it
        self.error_restarts: dict[int, int] = {}
        self.timed_out: set[int] = set()
        self.stopping = False  # we are ending the run (stop signal or final status)
        self.stopped_by_user = False
        self.seconds_per_minute = _SECONDS_PER_MINUTE
        self.reported: dict[str, str] = {}  # task id -> status last reported
        self._restore_signals: Callable[[], None] = lambda: None  # set while an interrupted run stops its workers
        # Every change of the state in this process happens under this lock (the channel's threads and the
        # loop); waiting claims sleep on ``changed`` and wake on every change.
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.claims: dict[int, _Claim] = {}
        self.last_task: dict[int, str] = {}  # worker id -> the task it claimed last (exit 2 names it)
        self.server: ChannelServer | None = None
        # Workers that may keep leftovers (``park``): once per container start, before its first claim. The
        # agent can reach its worker's socket too; it must not fill the user's repository with parked refs.
        self.may_park: set[int] = set()
        self.progress_notes: dict[int, int] = {}  # worker id -> progress notes written in this run
        self.claim_counts: dict[str, int] = {}  # task id -> claims in this run
        self.progress_path = os.path.join(plan.repo, ".gsd", "specs", plan.feature, P.PROGRESS_FILE)

    # -- helpers -------------------------------------------------------------------------------------------
    def _worker_branches(self) -> list[str]:
        return [spec.worktree.branch for spec in self.plan.workers]

    def _log(self, text: str) -> None:
        self.out(text)

    def _finish_level_if_settled(self) -> None:
        with self.changed:  # settled-check, merge and advance in one step: no claim or finish in between
            self._finish_level_locked()
            self.changed.notify_all()

    def _finish_level_locked(self) -> None:
        while True:
            data = self.store.read() or {}
            if data.get("status") != S.RUNNING:
                return
            level = data["level"]
            if not S.level_settled(data, level):
                return
            counts = S.summary(data).get(level, {})
            shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            try:
                merged = merge_into_base(
                    self.plan.repo, self.plan.base_branch, self._existing_branches(), f"mahabharatha {self.plan.feature} level {level}"
                )
            except OrchestrationError as exc:
                with self.store.transaction() as d:
                    d["status"] = "failed"
                    d["message"] = str(exc)
                self._log(f"level {level}: {exc}")
                return
            with self.store.transaction() as d:
                settle_level(d, self.graph)
                new_level, status = d["level"], d["status"]
            self._log(f"level {level} finished ({shown}); merged {len(merged)} branch(es) into {self.plan.base_branch}")
            if status != S.RUNNING:
                return
            self._log(f"level {new_level} started")

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
        data = self.store.read() or {}
        return data.get("status") == S.RUNNING and any(t["status"] == S.PENDING for t in data["tasks"].values())

    def _restart(self, wid: int, why: str) -> None:
        self._log(f"worker {wid}: {why}; restarting")
        with self.changed:
            self.may_park.add(wid)
        self.launcher.restart(wid)
        self.alive[wid] = self.launcher.current(wid)
        self.started_at[wid] = time.monotonic()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[dict[str, Any]]:
        """A state transaction under the run's lock; waiting claims wake afterwards."""
        with self.changed:
            with self.store.transaction() as data:
                yield data
            self.changed.notify_all()

    def _note(self, line: str) -> None:
        """Append one line to the feature's progress.md (the orchestrator's words; never through a symlink)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        clean = "".join(ch if ch.isprintable() else " " for ch in line)[: P.MAX_PROGRESS_CHARS]
        with contextlib.suppress(OSError):
            fd = os.open(self.progress_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.write(fd, f"- {stamp} {clean}\n".encode("utf-8", "replace"))
            finally:
                os.close(fd)

    # -- the workers' channel --------------------------------------------------------------------------------
    def handle(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        """Answer one request of worker ``wid`` (called on its connection's thread)."""
        op = message["op"]
        if op == "hello":
            spec = self.plan.workers[wid]
            start = _worktrees.ensure_worker_branch(self.plan.repo, spec.worktree.branch, self.plan.base_branch)
            return {"ok": True, "start": start, "feature": self.plan.feature, "branch": spec.worktree.branch}
        if op == "claim":
            return self._claim(wid)
        if op == "finish":
            return self._finish(wid, message, blob)
        if op == "park":
            return self._park(wid, message, blob)
        if op == "checkpoint":
            return self._checkpoint(wid, message, blob)
        if op == "release":
            with self._tx() as d:
                released = S.release_worker(d, wid)
                self.claims.pop(wid, None)
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

    def _start_for(self, wid: int) -> str:
        """The commit worker ``wid``'s next task starts from: the level's base when the worker branch is
        behind it (the level merged it), else the worker branch (it holds tasks of this level already)."""
        spec = self.plan.workers[wid]
        mine = _worktrees.ensure_worker_branch(self.plan.repo, spec.worktree.branch, self.plan.base_branch)
        base = git(self.plan.repo, "rev-parse", f"refs/heads/{self.plan.base_branch}")
        return base if git_ok(self.plan.repo, "merge-base", "--is-ancestor", mine, base) else mine

    def _claim(self, wid: int) -> dict[str, Any]:
        with self.changed:
            while True:
                data = self.store.read() or {}
                status = data.get("status")
                if status in S.FINAL or self.stopping:
                    return {"ok": True, "final": status if status in S.FINAL else "stopped"}
                if status == S.RUNNING:
                    with self.store.transaction() as d:
                        if wid in self.claims:  # a worker holds one task at a time
                            S.release_worker(d, wid)
                            self.claims.pop(wid, None)
                        task_id = S.claim_next(d, wid)
                        while task_id is not None and self._claimed_too_often(task_id):
                            n = self.claim_counts[task_id] - 1
                            S.finish_task(d, task_id, S.FAILED, error=(
                                f"given back {n} times in this run without a result (released or checkpointed each "
                                "time); see the worker's log"))
                            task_id = S.claim_next(d, wid)
                        attempt = d["tasks"][task_id]["attempts"] if task_id else 0
                        level = d["level"]
                    if task_id is not None:
                        self.may_park.discard(wid)
                        start = self._start_for(wid)
                        self.claims[wid] = _Claim(task_id, start, level, time.monotonic())
                        self.last_task[wid] = task_id
                        self.changed.notify_all()
                        self.events.put(("state",))
                        raw = json.loads(self.graph.raw_task(task_id))
                        checkpoint = str(d["tasks"][task_id].get("checkpoint") or "")
                        return {
                            "ok": True, "task": raw, "task_id": task_id, "attempt": attempt, "start": start,
                            "level": level, "checkpoint": checkpoint, "context": self._context(task_id, d),
                        }
                self.changed.wait(timeout=_WAKE_S)

    def _context(self, task_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """What a task's prompt names beside the task: its dependencies, their files and commit subjects."""
        deps = []
        for dep_id in self.graph.task(task_id).dependencies:
            dep = self.graph.task(dep_id)
            commit = str(data["tasks"].get(dep_id, {}).get("commit") or "")
            subject = git(self.plan.repo, "log", "-1", "--format=%s", commit, check=False) if commit else ""
            deps.append({"id": dep_id, "title": dep.title, "files": list(dep.files.owned), "subject": subject[:200]})
        return {"dependencies": deps}

    def _claimed_too_often(self, task_id: str) -> bool:
        n = self.claim_counts[task_id] = self.claim_counts.get(task_id, 0) + 1
        return n > 1 + _MAX_EXTRA_CLAIMS + self.plan.retry_attempts

    def _owns(self, data: dict[str, Any], wid: int, task_id: str) -> bool:
        claim = self.claims.get(wid)
        task = data["tasks"].get(task_id) or {}
        return (
            claim is not None and claim.task_id == task_id and task.get("status") == S.CLAIMED and task.get("worker") == wid
        )

    def _foreign(self, task_id: str, level: int) -> dict[str, str]:
        """Files other tasks of ``level`` own (path -> task id): a result touching them is rejected."""
        return {path: t.id for t in self.graph.tasks_at(level) if t.id != task_id for path in t.files.owned}

    def _finish(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        task_id, status, commit = message.get("task"), message.get("status"), message.get("commit") or ""
        if not isinstance(task_id, str) or status not in (S.DONE, S.FAILED) or not isinstance(commit, str):
            return {"ok": False, "error": "finish needs task (text), status (done|failed) and commit (text)"}
        error = _clip(" ".join(str(message.get("error") or "").split()), 400)
        spec = self.plan.workers[wid]
        feature = self.plan.feature
        failed_ref = P.failed_ref(feature, task_id)
        # Under the lock from the ownership check to the state write: a task the timeout failed meanwhile must
        # not reach the worker branch (and so the base).
        with self.changed:
            data = self.store.read() or {}
            if not self._owns(data, wid, task_id):
                return {"ok": True, "status": "lost", "error": f"task {task_id} is no longer claimed by worker {wid}"}
            claim = self.claims[wid]
            incoming = f"refs/mahabharatha/incoming/{feature}/worker-{wid}"
            if status == S.DONE and commit:
                try:
                    if blob is None:
                        raise ImportRejected("a commit without its bundle")
                    import_bundle(
                        self.plan.repo, blob, expected_ref=f"refs/heads/{spec.worktree.branch}", commit=commit,
                        dest_ref=f"refs/heads/{spec.worktree.branch}", incoming_ref=incoming, start=claim.start,
                        foreign=self._foreign(task_id, claim.level), keep_rejected_at=failed_ref,
                    )
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
            with self.store.transaction() as d:
                S.finish_task(d, task_id, status, commit=commit, error=error)
                _add_usage(d["tasks"][task_id], message.get("usage"))
                if status == S.DONE:
                    d["tasks"][task_id].pop("checkpoint", None)
                self._check_budget(d)
            self.claims.pop(wid, None)
            self.changed.notify_all()
        self.events.put(("state",))
        self._note(f"worker {wid}: {task_id} {status}" + (f" {commit[:10]}" if commit else "") + (f": {error}" if error else ""))
        return {"ok": True, "status": status, "error": error, "commit": commit}

    def _check_budget(self, d: dict[str, Any]) -> None:
        """workers.max_cost_usd: once the run's agents together cost that much, the run stops (resumable)."""
        budget = self.plan.max_cost_usd
        if budget is None or d.get("status") != S.RUNNING:
            return
        spent = sum(float((t.get("usage") or {}).get("cost_usd") or 0) for t in d["tasks"].values())
        if spent >= budget:
            S.mark_stopped(d, f"cost budget reached: ${spent:.2f} of workers.max_cost_usd=${budget:g}; raise it and run again to resume")

    def _checkpoint(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        """The worker's agent reached its context threshold: keep the work so far (verified like any result)
        under the task's checkpoint ref and give the task back; the next attempt continues from it."""
        task_id, commit = message.get("task"), message.get("commit") or ""
        if not isinstance(task_id, str) or not isinstance(commit, str):
            return {"ok": False, "error": "checkpoint needs task and commit (text)"}
        with self.changed:
            data = self.store.read() or {}
            if not self._owns(data, wid, task_id):
                return {"ok": True, "status": "lost", "error": f"task {task_id} is no longer claimed by worker {wid}"}
            claim = self.claims[wid]
            ref = P.checkpoint_ref(self.plan.feature, task_id)
            kept = ""
            if commit and blob is not None:
                try:
                    import_bundle(
                        self.plan.repo, blob, expected_ref=P.PARK_REF, commit=commit, dest_ref=ref,
                        incoming_ref=f"refs/mahabharatha/incoming/{self.plan.feature}/worker-{wid}", start=claim.start,
                        foreign=self._foreign(task_id, claim.level),
                    )
                    kept = commit
                except ImportRejected as exc:
                    self._log(f"worker {wid}: the checkpoint of {task_id} was rejected: {exc}")
            with self.store.transaction() as d:
                task = d["tasks"][task_id]
                S.release_worker(d, wid)
                _add_usage(task, message.get("usage"))
                task["checkpoint"] = kept
                task["error"] = _clip(f"checkpoint after {str(message.get('reason') or 'the context limit')}", 300)
                self._check_budget(d)
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
            if wid not in self.may_park:
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
            self.may_park.discard(wid)
        self._log(f"worker {wid}: kept uncommitted leftovers of an interrupted task at {ref}")
        return {"ok": True, "ref": ref}

    # -- exits ---------------------------------------------------------------------------------------------
    def _on_exit(self, wid: int, code: int | None, oom: bool) -> None:
        with self.changed:
            self._on_exit_locked(wid, code, oom)
            self.changed.notify_all()

    def _on_exit_locked(self, wid: int, code: int | None, oom: bool) -> None:
        self.alive.pop(wid, None)
        self.claims.pop(wid, None)  # its claimed task is settled below, by the exit policy
        data = self.store.read() or {}
        final = data.get("status") in S.FINAL
        meaning = P.exit_meaning(code) + (", OOMKilled" if oom else "")
        if wid in self.timed_out:
            self.timed_out.discard(wid)
            self._log(f"worker {wid} exited {code} ({meaning}) after its timeout")
            if self._pending_work() and not self.stopping:
                self._restart(wid, "timed out")
            return
        if final or self.stopping:
            self._log(f"worker {wid} exited {code} ({meaning})")
            return
        if code == P.EXIT_CONTEXT_LIMIT:
            task_id = self.last_task.get(wid, "")
            n = self.context_restarts[task_id] = self.context_restarts.get(task_id, 0) + 1
            if n <= _MAX_CONTEXT_RESTARTS:
                self._restart(wid, f"context limit reached on {task_id or 'its task'} (exit 2)")
                return
            why = (
                f"context limit reached on {n} attempts in a row: the task is too big for one context; split it in "
                "the task graph (or raise workers.context_threshold_percent), then `mahabharatha retry`"
            )
            with self.store.transaction() as d:
                S.release_worker(d, wid)
                task = d["tasks"].get(task_id)
                if task is not None and task["status"] == S.PENDING:
                    task.update(status=S.FAILED, error=why)
            self._log(f"worker {wid}: task {task_id} failed: {why}")
        elif code == P.EXIT_OOM or oom:
            retries = self.plan.retry_attempts
            mem = self.plan.workers[wid].mem_limit
            with self.store.transaction() as d:
                mine = [tid for tid, t in d["tasks"].items() if t["status"] == S.CLAIMED and t.get("worker") == wid]
                for tid in mine:
                    t = d["tasks"][tid]
                    if t["attempts"] <= retries:
                        t.update(status=S.PENDING, worker=None, error=f"killed ({meaning}) on attempt {t['attempts']}")
                    else:
                        t.update(
                            status=S.FAILED,
                            error=f"killed ({meaning}) on {t['attempts']} attempts; raise resources.container_memory_limit (now {mem})",
                        )
            self._log(f"worker {wid} exited {code} ({meaning}); task(s) {', '.join(mine) or 'none'}")
            if self._pending_work():
                self._restart(wid, "killed")
            return
        elif code == P.EXIT_STOPPED:
            self.stopped_by_user = True
            self._log(f"worker {wid} stopped (exit 130): stopping the run; run kurukshetra again to resume")
            with self.store.transaction() as d:
                S.release_worker(d, wid)
                S.mark_stopped(d, "stopped by signal; run again to resume")
            return
        elif code == P.EXIT_BLOCKED:
            self._log(f"worker {wid} reports all remaining tasks blocked (exit 3)")
            return
        else:  # 1 or anything unexpected: its task fails
            with self.store.transaction() as d:
                failed = S.release_worker(d, wid, status=S.FAILED, error=f"worker exited {code} ({meaning}); see its log")
            self._log(f"worker {wid} exited {code} ({meaning}); failed {', '.join(failed) or 'no task'}")
            n = self.error_restarts[wid] = self.error_restarts.get(wid, 0) + 1
            if n <= self.plan.retry_attempts + 1 and self._pending_work():
                self._restart(wid, "error")
                return
        self._log(f"worker {wid} exited {code} ({meaning})")

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
                    with self.store.transaction() as d:
                        failed = S.release_worker(d, wid, status=S.FAILED, error=f"task attempt timed out after {minutes} min (workers.timeout_minutes)")
                    self.claims.pop(wid, None)
                    self.changed.notify_all()
                    self._log(f"worker {wid}: task {claim.task_id} over workers.timeout_minutes={minutes}; stopping it; failed {', '.join(failed) or 'no task'}")
                    self.launcher.stop(wid)
                else:
                    wait = min(wait, claim.since + limit - now + 0.01)
        return wait

    # -- main ----------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        os.makedirs(self.store.dir, exist_ok=True)
        lock_fd = os.open(self.store.run_lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OrchestrationError(
                    f"another `mahabharatha kurukshetra` is running feature {self.plan.feature} in {self.plan.repo}",
                    hint="wait for it, or stop it with `mahabharatha stop`",
                ) from None
            return self._run()
        finally:
            self._restore_signals()  # Ctrl-C works again once the workers are stopped and closed
            os.close(lock_fd)

    def _run(self) -> RunResult:
        t0 = time.monotonic()
        plan = self.plan
        _worktrees.ensure_base_branch(plan.repo, plan.base_branch)
        data, resumed = init_state(self.store, self.graph)
        self.reported = {tid: t["status"] for tid, t in data["tasks"].items() if t["status"] in (S.DONE, S.FAILED)}
        if resumed:
            counts = S.summary(data)
            done = sum(c.get(S.DONE, 0) for c in counts.values())
            self._log(f"resuming {plan.feature}: {done}/{len(data['tasks'])} tasks already done, level {data['level']}")
        fifo = _FifoReader(self.store, self.events)
        self.launcher = None
        self.server = ChannelServer({spec.worker_id: spec.channel_socket for spec in plan.workers}, self.handle)
        try:
            self.server.start()
            self._finish_level_if_settled()  # a resumed run may stand at a level end
            if (self.store.read() or {}).get("status") == S.RUNNING:
                n = len(plan.workers)
                self._log(f"starting {n} worker(s) ({plan.mode}) for {plan.feature}: {len(self.graph.tasks)} tasks in {len(self.graph.levels)} levels")
                if plan.mode == "container":  # the launch in the words the tutorial uses
                    self._log(f"Container mode: using image {plan.image}")
                    for spec in plan.workers:
                        self._log(f"Launching Worker {spec.worker_id}: {spec.name} (memory={spec.mem_limit}, cpus={spec.cpus})")
                self.launcher = self.launcher_factory(plan, self.events, self.out)
                with self.changed:
                    self.may_park.update(spec.worker_id for spec in plan.workers)
                self.launcher.start_all()
                for spec in plan.workers:
                    self.alive[spec.worker_id] = self.launcher.current(spec.worker_id)
                    self.started_at[spec.worker_id] = time.monotonic()
                self._log("All containers running. Orchestrator started." if plan.mode == "container" else f"{n} worker(s) ready")
                self._loop()
        except KeyboardInterrupt:
            # A second Ctrl-C (or a SIGTERM) must not cut the stop short and leave containers behind.
            self._restore_signals = _ignore_interrupts()
            self._log("interrupted: stopping workers (run again to resume; Ctrl-C is ignored until they have stopped)")
            self.stopping = True
            with contextlib.suppress(Exception):
                with self._tx() as d:
                    S.mark_stopped(d, "interrupted; run again to resume")
            if self.launcher is not None:
                self.launcher.stop_all()
            self._release_claims()
        except BaseException as exc:
            # Our own failure (engine gone, git error, a bug): never leave a fleet waiting for a level advance
            # that will not come. Stop it, record why, and let the error reach the caller.
            with contextlib.suppress(Exception):
                with self.store.transaction() as d:
                    S.mark_stopped(d, _clip(f"orchestrator stopped: {exc}", 500))
            if self.launcher is not None:
                try:
                    self.launcher.stop_all()
                except Exception:  # noqa: BLE001 - workers may still run: leave their claims alone
                    pass
                else:
                    self._release_claims()
                with contextlib.suppress(Exception):
                    self.launcher.close(success=False)
            raise
        finally:
            fifo.close()
            with self.changed:
                self.stopping = True
                self.changed.notify_all()
            self.server.close()
        data = self.store.read() or {}
        status = data.get("status", "failed")
        if status == S.RUNNING:  # every worker gone with work left
            status = "failed"
            with self.store.transaction() as d:
                d.update(status="failed", message=d.get("message") or "all workers exited with work left; see the logs")
            data = self.store.read() or {}
        if self.launcher is not None:
            self.launcher.close(success=status == "done")
        code = {"done": P.EXIT_DONE, "blocked": P.EXIT_BLOCKED, "stopped": P.EXIT_STOPPED}.get(status, P.EXIT_ERROR)
        return RunResult(
            status=status,
            exit_code=code,
            message=data.get("message", ""),
            levels=S.summary(data),
            base_branch=plan.base_branch,
            worker_branches=tuple(self._worker_branches()),
            seconds=time.monotonic() - t0,
            usage=S.usage_summary(data),
        )

    def _release_claims(self) -> None:
        """Every worker is stopped: tasks still claimed (a worker killed before it could release them, e.g. a
        launch cut short) go back to pending, so the state shows what a resumed run will do."""
        with contextlib.suppress(Exception):
            with self.store.transaction() as d:
                for wid in sorted({t.get("worker") for t in d["tasks"].values() if t["status"] == S.CLAIMED}):
                    S.release_worker(d, wid)

    def _report_tasks(self) -> None:
        """One line per task that finished (done/failed) since the last look: launch progress for the user."""
        data = self.store.read() or {}
        for tid, t in sorted(data.get("tasks", {}).items()):
            status = t["status"]
            if status in (S.DONE, S.FAILED) and self.reported.get(tid) != status:
                self.reported[tid] = status
                if status == S.DONE:
                    self._log(f"task {tid} done by worker {t.get('worker')}" + (f" ({t['commit'][:10]})" if t.get("commit") else ""))
                else:
                    self._log(f"task {tid} FAILED: {t.get('error', '')}")
            elif status not in (S.DONE, S.FAILED):
                self.reported.pop(tid, None)

    def _loop(self) -> None:
        while True:
            self._report_tasks()
            self._finish_level_if_settled()
            data = self.store.read() or {}
            if data.get("status") in S.FINAL:
                if not self.stopping:
                    with self.changed:
                        self.stopping = True
                        self.changed.notify_all()
                    if data.get("status") == "stopped":  # e.g. `mahabharatha stop` asked through the state
                        if not self.stopped_by_user:
                            self._log(f"run stopped ({data.get('message') or 'stop requested'}): stopping the workers")
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
                # broke), ask for the exits directly.
                for wid, code, oom in self.launcher.poll_exits(dict(self.alive)):
                    self._on_exit(wid, code, oom)
                continue
            kind = event[0]
            if kind == "state":
                continue
            if kind == "die":  # container: read exit code and OOMKilled from the engine
                _, wid, cid = event
                if self.alive.get(wid) != cid:
                    continue  # an old container of this worker (replaced)
                code, oom = self.launcher.exit_of(cid)
                self._on_exit(wid, code, oom)
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


def orchestrate(
    plan: LaunchPlan,
    graph: TaskGraph,
    *,
    out: Callable[[str], None] = print,
    client: Any = None,
    keep_failed: bool = False,
) -> RunResult:
    """Run ``graph`` with the plan's workers until the run is done, blocked, failed or stopped."""
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
        client = preflight(plan, client=client)

        def factory(p: LaunchPlan, events: queue.Queue[tuple[Any, ...]], o: Callable[[str], None]) -> Any:
            return ContainerLauncher(p, events, o, client=client, keep_failed=keep_failed)
    else:
        factory = SubprocessLauncher
    try:
        return _Run(plan, graph, out, factory).run()
    except S.StateError as exc:  # a hand-edited or foreign state.json: one line, not a traceback
        raise OrchestrationError(str(exc)) from None
