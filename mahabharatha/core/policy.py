"""The exit policy: what a worker's exit does to the run, as a pure function. No I/O, no clock.

:func:`decide` maps the facts of one exit (:class:`ExitFacts`: the code, what the worker held, the counters
so far) to a :class:`Decision`: task changes, whether to restart the worker, whether the run stops, and the
note the run reports. The orchestrator gathers the facts, applies the decision to the state and the fleet.

=================================  ==========================================================================
exit                               decision
=================================  ==========================================================================
after its timeout                  (its task was failed by the timeout) restart while work is pending
the run is ending                  nothing
lost (container removed by hand)   its task back to pending (not counted as a failure), restart
2 (context limit)                  its task back to pending, restart; after ``max_context_restarts`` exits 2
                                   on one task that task fails naming the fix (``retry`` puts it back)
137 with OOMKilled (or 137 where   its task back to pending up to ``retry_attempts`` times, then failed with
the engine cannot tell, subprocess)  advice to raise ``resources.container_memory_limit``; restart
137 without OOMKilled (container)  killed by someone (SIGKILL): the same retries, advice not about memory
130                                the run stops (resumable), its task back to pending
3                                  nothing (the worker saw every remaining task blocked)
1 or anything else                 its task fails; restart up to ``retry_attempts + 1`` times
=================================  ==========================================================================
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ExitFacts", "HeldTask", "TaskChange", "Decision", "decide"]

EXIT_CONTEXT_LIMIT, EXIT_BLOCKED, EXIT_STOPPED, EXIT_OOM = 2, 3, 130, 137


class HeldTask(msgspec.Struct, frozen=True):
    """A task the worker held (claimed) when it exited."""

    task: str
    attempts: int  # attempts so far, this one included


class ExitFacts(msgspec.Struct, frozen=True):
    worker: int
    code: int | None
    meaning: str
    oom: bool = False  # the engine says OOMKilled
    oom_known: bool = False  # the engine reports OOM kills (containers): a 137 without the flag is not memory
    lost: bool = False  # the worker's container is gone (removed by hand): nothing the task did
    timed_out: bool = False
    ending: bool = False  # the run is final or being stopped
    held: tuple[HeldTask, ...] = ()
    last_task: str = ""  # the task the worker claimed last (an exit 2 names it)
    last_task_pending: bool = False  # ... and it is pending now (the worker gave it back before exiting)
    context_restarts: int = 0  # exits 2 on last_task so far, this one not included
    error_restarts: int = 0  # restarts of this worker after errors so far
    pending: bool = False  # tasks other than ``held`` are pending in the run
    retry_attempts: int = 2
    mem_limit: str = ""
    max_context_restarts: int = 10


class TaskChange(msgspec.Struct, frozen=True):
    task: str
    status: Literal["pending", "failed"]
    error: str = ""


class Decision(msgspec.Struct, frozen=True):
    changes: tuple[TaskChange, ...] = ()
    restart: str = ""  # why the worker restarts ("" = it does not)
    stop_run: str = ""  # the run becomes stopped with this message
    note: str = ""  # what the run says about the exit
    count: Literal["", "context", "error"] = ""  # which counter this exit adds one to
    stopped_by_user: bool = False


def _restart_if(pending: bool, reason: str) -> str:
    return reason if pending else ""


def decide(f: ExitFacts) -> Decision:
    """The decision for one worker exit (see the module's table)."""
    held_ids = ", ".join(h.task for h in f.held)
    back = tuple(TaskChange(h.task, "pending") for h in f.held)
    if f.timed_out:
        return Decision(note="after its timeout", restart="" if f.ending else _restart_if(f.pending, "timed out"))
    if f.ending:
        return Decision()
    if f.lost:
        note = f"container removed: a lost worker; task(s) {held_ids or 'none'} back to pending"
        changes = tuple(TaskChange(h.task, "pending", "worker lost (its container was removed)") for h in f.held)
        return Decision(changes=changes, note=note, restart=_restart_if(f.pending or bool(f.held), "lost"))
    if f.code == EXIT_CONTEXT_LIMIT:
        task = f.last_task
        n = f.context_restarts + 1
        if n <= f.max_context_restarts:
            return Decision(
                changes=back, count="context", restart=f"context limit reached on {task or 'its task'} (exit 2)"
            )
        why = (
            f"context limit reached on {n} attempts in a row: the task is too big for one context; split it in "
            "the task graph (or raise workers.context_threshold_percent), then `mahabharatha retry`"
        )
        failing = {h.task for h in f.held} | ({task} if task and f.last_task_pending else set())
        changes = tuple(TaskChange(t, "failed", why) for t in sorted(failing))
        changes += tuple(c for c in back if c.task not in failing)
        return Decision(
            changes=changes, count="context", note=f"task {task} failed: {why}", restart=_restart_if(f.pending, "next task")
        )
    if f.code == EXIT_OOM or f.oom:
        memory = f.oom or not f.oom_known
        changes = []
        for h in f.held:
            if h.attempts <= f.retry_attempts:
                changes.append(TaskChange(h.task, "pending", f"killed ({f.meaning}) on attempt {h.attempts}"))
            elif memory:
                changes.append(TaskChange(
                    h.task, "failed",
                    f"killed ({f.meaning}) on {h.attempts} attempts; raise resources.container_memory_limit (now {f.mem_limit})",
                ))
            else:
                changes.append(TaskChange(
                    h.task, "failed", f"killed ({f.meaning}, not by the memory limit) on {h.attempts} attempts; see its log",
                ))
        pending = f.pending or any(c.status == "pending" for c in changes)
        return Decision(changes=tuple(changes), note=f"task(s) {held_ids or 'none'}", restart=_restart_if(pending, "killed"))
    if f.code == EXIT_STOPPED:
        return Decision(
            changes=back, stop_run="stopped by signal; run again to resume", stopped_by_user=True,
            note="stopping the run; run kurukshetra again to resume",
        )
    if f.code == EXIT_BLOCKED:
        return Decision(note="all remaining tasks blocked")
    why = f"worker exited {f.code} ({f.meaning}); see its log"
    changes = tuple(TaskChange(h.task, "failed", why) for h in f.held)
    restart = _restart_if(f.pending and f.error_restarts + 1 <= f.retry_attempts + 1, "error")
    return Decision(changes=changes, count="error", note=f"failed {held_ids or 'no task'}", restart=restart)
