"""The shared state of one feature's run: format and lock, defined once for the host and the workers.

Lives in ``<state_dir>/<feature>/`` (``R/.mahabharatha/state/F`` on the host, the same directory bind-mounted
at ``/workspace/.mahabharatha/state/F`` in every container):

- ``state.json``: the run (schema below), replaced atomically (temp file + ``os.replace``), so a reader
  without the lock always sees a whole document;
- ``lock``: every read-modify-write holds ``fcntl.flock`` on this file. flock works across bind mounts of
  one host filesystem (the containers share the host kernel).

Schema (version 1)::

    {"version": 1, "feature": "F", "level": 1, "levels": [1, 2],
     "status": "running" | "done" | "blocked" | "failed" | "stopped",
     "message": "", "updated": <unix time>, "seq": <write counter>,
     "tasks": {"T1": {"level": 1, "status": "pending" | "claimed" | "done" | "failed" | "blocked",
                      "worker": 0 | null, "attempts": 0, "commit": "" , "error": ""}}}

Every read checks each field's type and range (``seq`` a whole number >= 0, ``worker`` a number or null,
``commit`` hex, a ``status`` from the lists above, ``true`` is never a number; ``version``, ``feature``,
``message``, ``updated``, ``seq`` and ``processes`` (edge.processes' ``{"<worker id>": {...}}``) may be
missing, so may a task's ``worker``, ``attempts``, ``commit``, ``error``, which then get the values of a
task never attempted); a violation is a :class:`StateError` naming the field. Unknown keys are kept.

``level`` is the level workers take tasks from; only the orchestrator advances it (after merging the level)
and sets a final ``status``. Workers claim, finish and release tasks. Nothing secret is ever written here:
only ids, statuses, commit ids and short error texts of our own making.

Standard library only (this module runs inside worker containers).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "VERSION",
    "PENDING",
    "CLAIMED",
    "DONE",
    "FAILED",
    "BLOCKED",
    "RUNNING",
    "FINAL",
    "StateStore",
    "StateError",
    "new_state",
    "new_task",
    "rewind_to_pending",
    "claim_next",
    "finish_task",
    "release_worker",
    "mark_stopped",
    "level_settled",
    "summary",
    "usage_summary",
    "format_usage",
]

VERSION = 1
PENDING, CLAIMED, DONE, FAILED, BLOCKED = "pending", "claimed", "done", "failed", "blocked"
RUNNING = "running"
FINAL = frozenset({"done", "blocked", "failed", "stopped"})  # run statuses after which workers exit


_TASK_STATUSES = frozenset({PENDING, CLAIMED, DONE, FAILED, BLOCKED})
# A task record's fields beside its level and status, with the values of a task never attempted.
_TASK_DEFAULTS: dict[str, Any] = {"worker": None, "attempts": 0, "commit": "", "error": ""}


class StateError(ValueError):
    """``state.json`` exists but is not a run state document (truncated, edited, not JSON). One line naming
    the file and the fix; the host turns it into a user-facing error (this module cannot import those)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(
            f"{path}: corrupt run state ({problem}); move it away to start the feature's run afresh "
            "(committed work stays on its mahabharatha/<feature>/* branches)"
        )


_RUN_STATUSES = frozenset({RUNNING, *FINAL})
_HEX_RE = re.compile(r"[0-9a-fA-F]{0,64}")  # a commit id (SHA-1 or SHA-256), or "" before there is one


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _shown(value: Any) -> str:
    """A found value as JSON spells it (strings cut), for messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > 40:
        value = value[:40] + "..."
    try:
        return json.dumps(value)
    except ValueError:  # NaN / Infinity
        return str(value)


_MISSING: Any = object()


def _bad(path: str, where: str, key: str, value: Any, expected: str) -> StateError:
    if value is _MISSING:
        found = "is missing"
    elif isinstance(value, list) and key == "levels":  # say which element
        found = f"holds {next((_shown(x) for x in value if not _whole(x)), '?')}"
    elif isinstance(value, dict) and key == "processes":
        found = f"has {next((f'entry {k!r}' for k, e in value.items() if not _worker_key(k) or not isinstance(e, dict)), '?')}"
    else:
        found = f"is {'null' if value is None else _shown(value)}"
    return StateError(path, f"{where}field {key!r} {found}, expected {expected}")


def _worker_key(key: str) -> bool:
    return key.isascii() and key.isdigit()


def _whole(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _one_of(options: frozenset[str]) -> str:
    return "one of " + ", ".join(sorted(options))


# Top-level fields: (required, valid?, expected). Unknown keys are kept as they are (other code adds its own).
_RUN_FIELDS: dict[str, tuple[bool, Any, str]] = {  # the required ones first: a gutted document names 'status'
    "status": (True, lambda v: v in _RUN_STATUSES if isinstance(v, str) else False, _one_of(_RUN_STATUSES)),
    "level": (True, _whole, "a whole number >= 0"),
    "levels": (True, lambda v: isinstance(v, list) and all(_whole(x) for x in v), "a list of whole numbers >= 0"),
    "tasks": (True, lambda v: isinstance(v, dict), "an object of tasks"),
    "version": (False, lambda v: _is_int(v) and v == VERSION, f"{VERSION} (this mahabharatha's state format)"),
    "feature": (False, lambda v: isinstance(v, str), "text"),
    "message": (False, lambda v: isinstance(v, str), "text"),
    "updated": (False, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a unix time"),
    "seq": (False, _whole, "a whole number >= 0"),
    # edge.processes: {"<worker id>": {"pid": ..., "host": ..., "start": ...}} (entries are checked where used)
    "processes": (
        False,
        lambda v: isinstance(v, dict) and all(_worker_key(k) and isinstance(e, dict) for k, e in v.items()),
        "an object of worker numbers to process records",
    ),
}
# Task fields beside the required level and status: (valid?, expected); missing ones get _TASK_DEFAULTS.
_TASK_FIELDS: dict[str, tuple[Any, str]] = {
    "level": (_whole, "a whole number >= 0"),
    "status": (lambda v: v in _TASK_STATUSES if isinstance(v, str) else False, _one_of(_TASK_STATUSES)),
    "worker": (lambda v: v is None or _whole(v), "a worker number >= 0 or null"),
    "attempts": (_whole, "a whole number >= 0"),
    "commit": (lambda v: isinstance(v, str) and _HEX_RE.fullmatch(v) is not None, "a commit id (hex) or \"\""),
    "error": (lambda v: isinstance(v, str), "text"),
}


def _check(path: str, data: Any) -> dict[str, Any]:
    """``data`` when every field has the type and range its readers rely on (missing optional task fields are
    filled with their defaults), else :class:`StateError` naming the field, e.g. ``task 'T1': field 'attempts'
    is null, expected a whole number >= 0``. Unknown keys are tolerated."""
    if not isinstance(data, dict):
        raise StateError(path, f"expected a JSON object, found {_shown(data)}")
    for key, (required, valid, expected) in _RUN_FIELDS.items():
        value = data.get(key, _MISSING)
        if value is _MISSING and not required:
            continue
        if value is _MISSING or not valid(value):
            raise _bad(path, "", key, value, expected)
    for tid, task in data["tasks"].items():
        _check_task(path, tid, task)
    return data


def _check_task(path: str, tid: str, task: Any) -> None:
    # The common case inline (a claim reads every task of a 10,000-task run): exact JSON types, no bools.
    # Anything missing or unusual takes the slow path below, which fills defaults and names the problem.
    if type(task) is dict:
        level, status, worker = task.get("level"), task.get("status"), task.get("worker", _MISSING)
        attempts, commit = task.get("attempts"), task.get("commit")
        if (
            type(level) is int and level >= 0
            and type(status) is str and status in _TASK_STATUSES
            and (worker is None or (type(worker) is int and worker >= 0))
            and type(attempts) is int and attempts >= 0
            and type(commit) is str and (not commit or _HEX_RE.fullmatch(commit) is not None)
            and type(task.get("error")) is str
            and "usage" not in task and "checkpoint" not in task
        ):
            return
    where = f"task {tid!r}: "
    if not isinstance(task, dict):
        raise StateError(path, f"{where}expected an object, found {_shown(task)}")
    for key, (valid, expected) in _TASK_FIELDS.items():
        value = task.get(key, _MISSING)
        if value is _MISSING and key in _TASK_DEFAULTS:
            task[key] = _TASK_DEFAULTS[key]
            continue
        if value is _MISSING or not valid(value):
            raise _bad(path, where, key, value, expected)
    for key, (valid, expected) in _OPTIONAL_TASK_FIELDS.items():
        value = task.get(key, _MISSING)
        if value is not _MISSING and not valid(value):
            raise _bad(path, where, key, value, expected)


def _usage_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    for key, v in value.items():
        if key == "model":
            if not isinstance(v, str):
                return False
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            return False
    return True


# Task fields a run may add: tokens and cost of its attempts, the commit of its context checkpoint.
_OPTIONAL_TASK_FIELDS: dict[str, tuple[Any, str]] = {
    "usage": (_usage_ok, "an object of token counts, cost_usd and model"),
    "checkpoint": (lambda v: isinstance(v, str) and (not v or _HEX_RE.fullmatch(v) is not None), "a commit id (hex) or \"\""),
}


_MAX_STATE_BYTES = 256 << 20


class StateStore:
    """``state.json`` + ``lock`` of one feature under ``state_dir``."""

    def __init__(self, state_dir: str, feature: str) -> None:
        self.dir = os.path.join(state_dir, feature)
        self.path = os.path.join(self.dir, "state.json")
        self.lock_path = os.path.join(self.dir, "lock")
        # Held (flock) by the one orchestrator driving this feature; others probe it to tell a live run.
        self.run_lock_path = os.path.join(self.dir, "orchestrator.lock")
        # A FIFO the orchestrator reads: every write pokes it, so the host wakes on state changes without
        # polling (FIFOs work across bind mounts: one kernel). Missing or unread: the poke is skipped.
        self.fifo_path = os.path.join(self.dir, "events")

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def read(self) -> dict[str, Any] | None:
        """The current document without locking (atomic replace makes it consistent), or None.

        Raises :class:`StateError` when the file is not a run state (only a hand edit or a foreign write can
        do that: writes are atomic).
        """
        try:
            # Never a symlink, a FIFO (it would hang) or a device; bounded.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file where a parent dir should be
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateError(self.path, "it is a symlink") from None
            raise StateError(self.path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise StateError(self.path, "it is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise StateError(self.path, "it is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                raw = fh.read(_MAX_STATE_BYTES + 1)
        except OSError as exc:
            raise StateError(self.path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
        finally:
            os.close(fd)
        if len(raw) > _MAX_STATE_BYTES:
            raise StateError(self.path, f"larger than {_MAX_STATE_BYTES >> 20} MiB")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise StateError(self.path, "not UTF-8 text") from None
        except (ValueError, RecursionError) as exc:
            raise StateError(self.path, f"not valid JSON: {str(exc)[:200]}") from None
        return _check(self.path, data)

    def _write(self, data: dict[str, Any]) -> None:
        data["updated"] = time.time()
        data["seq"] = int(data.get("seq", 0)) + 1  # waiters compare this (mtimes can repeat within a tick)
        fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.notify()

    def notify(self) -> None:
        """Poke the orchestrator's FIFO (never blocks; nothing happens when nobody listens)."""
        try:
            fd = os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):  # a plain file planted there is never written
                os.write(fd, b".")
        except OSError:
            pass
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the feature's lock (blocking)."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Lock, read, yield the document for changes, write it back (when changed), unlock.

        Raises FileNotFoundError when there is no state yet.
        """
        with self.lock():
            data = self.read()
            if data is None:
                raise FileNotFoundError(self.path)
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)

    def create(self, data: dict[str, Any]) -> None:
        """Write a new document (under the lock)."""
        with self.lock():
            self._write(data)

    def seq(self) -> int:
        """The write counter of the current document (0 when there is none)."""
        try:
            data = self.read()
        except ValueError:
            return -1
        return int((data or {}).get("seq", 0))


# ----------------------------------------------------------------------------------------------------------
# Operations on the document (pure functions of the dict; call them inside a transaction)


def new_task(level: int) -> dict[str, Any]:
    """A task record as a fresh run has it: pending, never attempted."""
    return {"level": level, "status": PENDING, **_TASK_DEFAULTS}


def new_state(feature: str, tasks: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """A fresh run: every task pending, the lowest level current."""
    table = {tid: new_task(level) for tid, level in tasks}
    levels = sorted({t["level"] for t in table.values()})
    return {
        "version": VERSION,
        "feature": feature,
        "level": levels[0] if levels else 0,
        "levels": levels,
        "status": RUNNING if levels else "done",
        "message": "",
        "tasks": table,
    }


def claim_next(data: dict[str, Any], worker_id: int) -> str | None:
    """Claim the first pending task (by id order) of the current level for ``worker_id``; None if there is none."""
    if data.get("status") != RUNNING:
        return None
    level = data["level"]
    for tid in sorted(data["tasks"]):
        task = data["tasks"][tid]
        if task["level"] == level and task["status"] == PENDING:
            task.update(status=CLAIMED, worker=worker_id, error="")
            task["attempts"] = task.get("attempts", 0) + 1
            return tid
    return None


def finish_task(data: dict[str, Any], task_id: str, status: str, *, commit: str = "", error: str = "") -> None:
    task = data["tasks"][task_id]
    task.update(status=status, commit=commit, error=error[:500])


def release_worker(data: dict[str, Any], worker_id: int, *, status: str = PENDING, error: str = "") -> list[str]:
    """Tasks claimed by ``worker_id`` go back to ``status`` (pending: claimable again). Returns their ids."""
    released = []
    for tid, task in sorted(data["tasks"].items()):
        if task["status"] == CLAIMED and task.get("worker") == worker_id:
            task.update(status=status, error=error[:500])
            if status == PENDING:
                task["worker"] = None
            released.append(tid)
    return released


def mark_stopped(data: dict[str, Any], message: str) -> bool:
    """A running run becomes "stopped" (its workers then exit 130; the next ``kurukshetra`` resumes it). A run
    that already ended keeps its status. Returns whether it was running."""
    if data.get("status") != RUNNING:
        return False
    data.update(status="stopped", message=message)
    return True


def rewind_to_pending(data: dict[str, Any]) -> None:
    """After tasks went back to pending (a resume, a retry): when the lowest level holding pending tasks lies
    below the current one, make it current again (workers only take tasks of the current level)."""
    pending = [t["level"] for t in data["tasks"].values() if t["status"] == PENDING]
    if pending and min(pending) < data["level"]:
        data["level"] = min(pending)


def level_settled(data: dict[str, Any], level: int) -> bool:
    """True when no task of ``level`` is pending or claimed."""
    return all(t["status"] not in (PENDING, CLAIMED) for t in data["tasks"].values() if t["level"] == level)


_SUMMED = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens", "cost_usd", "turns", "duration_ms")


def usage_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Tokens and cost per task, per level and in total, for tasks whose agent reported usage:
    ``{"tasks": {id: usage}, "levels": {level: usage}, "total": usage}`` (empty dicts when none did)."""
    tasks: dict[str, dict[str, Any]] = {}
    levels: dict[int, dict[str, Any]] = {}
    total: dict[str, Any] = {}
    for tid, task in sorted(data["tasks"].items()):
        usage = task.get("usage")
        if not isinstance(usage, dict) or not usage:
            continue
        tasks[tid] = usage
        for bucket in (levels.setdefault(task["level"], {}), total):
            for key in _SUMMED:
                if isinstance(usage.get(key), (int, float)):
                    bucket[key] = bucket.get(key, 0) + usage[key]
    return {"tasks": tasks, "levels": dict(sorted(levels.items())), "total": total}


def format_usage(usage: dict[str, Any]) -> str:
    """``12.3k in (40.1k cached), 4.5k out, $0.12`` (empty when there is nothing to say)."""
    def k(n: float) -> str:
        return f"{n / 1000:.1f}k" if n >= 1000 else str(int(n))

    if not usage:
        return ""
    parts = [f"{k(usage.get('input_tokens', 0))} in"]
    cached = usage.get("cache_read_tokens", 0) + usage.get("cache_creation_tokens", 0)
    if cached:
        parts[0] += f" ({k(cached)} cached)"
    parts.append(f"{k(usage.get('output_tokens', 0))} out")
    if "cost_usd" in usage:
        parts.append(f"${usage['cost_usd']:.2f}")
    return ", ".join(parts)


def summary(data: dict[str, Any]) -> dict[int, dict[str, int]]:
    """{level: {status: count}} for reports."""
    out: dict[int, dict[str, int]] = {}
    for task in data["tasks"].values():
        counts = out.setdefault(task["level"], {})
        counts[task["status"]] = counts.get(task["status"], 0) + 1
    return dict(sorted(out.items()))
