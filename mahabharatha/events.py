"""The typed progress events of a run: what :func:`mahabharatha.execute` reports while it drives a feature.

The orchestrator calls ``on_event(event)`` for each of them, in the order they happen (from several threads:
the callback must be quick and thread-safe; :class:`mahabharatha.Run` queues them for an iterator). Every
event is a frozen msgspec Struct, tagged by its ``event`` field, so a journal can write and read them back::

    line = msgspec.json.encode(event)                       # b'{"event":"task_done","task":"T1",...}'
    again = msgspec.json.decode(line, type=Event)           # the same value

The CLI's text lines are views of the events: :func:`describe` gives the line for an event (``None`` for
events that have no line of their own, such as ``WorkerReady``). Nothing secret is ever in an event.

=====================  ==============================================================================
event                  when
=====================  ==============================================================================
``run_started``        state created or resumed (``resumed``, ``done`` tasks, the current ``level``)
``workers_starting``   before the fleet starts (``workers``, ``mode``, ``tasks``, ``levels``)
``worker_started``     a worker (re)started; ``reason`` is empty for the first start
``worker_ready``       a worker announced itself (containers: its ready line; subprocess: started)
``worker_exited``      a worker ended: ``code`` (None when unknown), ``meaning``, ``oom``, the ``task`` it
                       held, ``note`` (what the exit policy did about it)
``task_claimed``       a worker took a task (``attempt`` counts from 1; ``start``: the commit it starts from)
``task_done``          a task's result was verified and imported (``commit``, "" when it changed nothing)
``task_failed``        a task failed (``reason``)
``level_merged``       a level settled and was merged (``counts`` per status, ``merged`` branches, ``commit``:
                       the base branch's commit after the merge)
``level_started``      the run moved on to a level (``base``: the base branch's commit the level starts
                       from, "" when unknown)
``task_usage``         what a task's attempt cost, as its agent reported it (tokens, ``cost_usd``, model)
``run_stopping``       the run is stopping (``message`` says why: a signal, ``mahabharatha stop``, a budget);
                       a later run resumes it (``run_started`` with ``resumed``)
``review_requested``   ``workers.review``: a settled level waits for ``mahabharatha approve`` before its merge
                       (``stat``: its diff stat against the level's base)
``notice``             anything else worth a line (``text``), e.g. a rejected checkpoint
``run_finished``       the run ended (``status``, ``exit_code``, ``message``, ``seconds``)
=====================  ==============================================================================
"""

from __future__ import annotations

from typing import Union

import msgspec

__all__ = [
    "Event",
    "RunStarted",
    "WorkersStarting",
    "WorkerStarted",
    "WorkerReady",
    "WorkerExited",
    "TaskClaimed",
    "TaskDone",
    "TaskFailed",
    "LevelMerged",
    "LevelStarted",
    "Notice",
    "ReviewRequested",
    "TaskUsage",
    "RunStopping",
    "RunFinished",
    "describe",
]


class _Event(msgspec.Struct, frozen=True, tag_field="event"):
    pass


class RunStarted(_Event, tag="run_started"):
    feature: str
    tasks: int
    levels: tuple[int, ...]
    resumed: bool = False
    done: int = 0
    level: int = 0
    base: str = ""  # the base branch's commit when the run (and so its current level) starts


class WorkersStarting(_Event, tag="workers_starting"):
    feature: str
    workers: int
    mode: str
    tasks: int
    levels: int


class WorkerStarted(_Event, tag="worker_started"):
    worker: int
    reason: str = ""  # why it was restarted ("" for the first start)


class WorkerReady(_Event, tag="worker_ready"):
    worker: int


class WorkerExited(_Event, tag="worker_exited"):
    worker: int
    code: int | None
    meaning: str
    oom: bool = False
    task: str = ""
    note: str = ""


class TaskClaimed(_Event, tag="task_claimed"):
    task: str
    worker: int
    attempt: int
    level: int
    start: str = ""  # the commit the worker starts the task from (its diff's left side)


class TaskDone(_Event, tag="task_done"):
    task: str
    worker: int | None
    commit: str = ""


class TaskFailed(_Event, tag="task_failed"):
    task: str
    worker: int | None
    reason: str


class LevelMerged(_Event, tag="level_merged"):
    level: int
    counts: dict[str, int]
    merged: tuple[str, ...]
    base_branch: str
    commit: str = ""  # the base branch's commit after the merge


class LevelStarted(_Event, tag="level_started"):
    level: int
    base: str = ""  # the base branch's commit the level starts from (its diff's left side)


class Notice(_Event, tag="notice"):
    text: str


class ReviewRequested(_Event, tag="review_requested"):
    level: int
    stat: str
    tasks: tuple[str, ...] = ()  # the level's done tasks (what `reject TASK` may name)


class TaskUsage(_Event, tag="task_usage"):
    task: str
    worker: int | None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""


class RunStopping(_Event, tag="run_stopping"):
    message: str


class RunFinished(_Event, tag="run_finished"):
    status: str
    exit_code: int
    message: str
    seconds: float


Event = Union[
    RunStarted, WorkersStarting, WorkerStarted, WorkerReady, WorkerExited, TaskClaimed, TaskDone, TaskFailed,
    LevelMerged, LevelStarted, Notice, ReviewRequested, TaskUsage, RunStopping, RunFinished,
]


def describe(event: Event) -> str | None:
    """The text line the CLI prints for ``event`` (None: the event has no line of its own)."""
    if isinstance(event, RunStarted):
        if not event.resumed:
            return None
        return f"resuming {event.feature}: {event.done}/{event.tasks} tasks already done, level {event.level}"
    if isinstance(event, WorkersStarting):
        return f"starting {event.workers} worker(s) ({event.mode}) for {event.feature}: {event.tasks} tasks in {event.levels} levels"
    if isinstance(event, WorkerStarted):
        return f"worker {event.worker}: {event.reason}; restarting" if event.reason else None
    if isinstance(event, WorkerExited):
        return f"worker {event.worker} exited {event.code} ({event.meaning})" + (f"; {event.note}" if event.note else "")
    if isinstance(event, TaskDone):
        return f"task {event.task} done by worker {event.worker}" + (f" ({event.commit[:10]})" if event.commit else "")
    if isinstance(event, TaskFailed):
        return f"task {event.task} FAILED: {event.reason}"
    if isinstance(event, LevelMerged):
        shown = ", ".join(f"{n} {s}" for s, n in sorted(event.counts.items()))
        return f"level {event.level} finished ({shown}); merged {len(event.merged)} branch(es) into {event.base_branch}"
    if isinstance(event, LevelStarted):
        return f"level {event.level} started"
    if isinstance(event, Notice):
        return event.text
    if isinstance(event, ReviewRequested):
        shown = ", ".join(event.tasks) or "none"
        stat = "\n".join("    " + line for line in event.stat.splitlines()) or "    (no changes)"
        return (f"level {event.level} waits for review before its merge (done: {shown}): `mahabharatha approve` "
                f"merges it, `mahabharatha reject TASK` fails a task and keeps its work\n{stat}")
    return None  # WorkerReady, TaskClaimed, TaskUsage, RunStopping (its own lines say it), RunFinished (the CLI prints a summary of the result instead)
