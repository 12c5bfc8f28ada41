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
import re
import stat
import tempfile
import threading
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


_SCHEMA_VERSION = 2  # PRAGMA user_version of state.db
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS run (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS processes (worker INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
)
_TABLES = frozenset({"run", "tasks", "processes"})


def _enc(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class StateStore:
    """The run state of one feature under ``state_dir``: ``state.db``, SQLite (standard library).

    One row per task (``tasks``: id, the task's record as JSON), one for the run (``run``: every top-level
    field but ``tasks`` and ``processes``), one per recorded worker process (``processes``). The database is
    in WAL mode; every write is one ``BEGIN IMMEDIATE`` transaction, committed with ``synchronous=FULL`` (an
    fsync of the log), so a commit survives a host crash. Readers never block writers.

    - :meth:`read` / :meth:`transaction` work on the whole document (the schema in this module's docstring,
      validated on every read): for the CLI (``status``, ``retry``, ``stop``), a start or a resume. A
      transaction writes back only the rows that changed and pokes the FIFO (so a running orchestrator notices).
    - :meth:`write` changes named tasks and run fields only: the orchestrator's per-claim/finish path, whose
      cost does not grow with the graph. :meth:`seq` tells whether someone else wrote since.
    - :meth:`export` writes ``state.json`` (the same document, indented: for people and tools). An old
      ``state.json`` (version 1) found without ``state.db`` is validated and imported (then renamed
      ``state.json.v1``), or refused with one line naming the field.
    """

    def __init__(self, state_dir: str, feature: str) -> None:
        self.dir = os.path.join(state_dir, feature)
        self.db_path = os.path.join(self.dir, "state.db")
        self.path = os.path.join(self.dir, "state.json")  # the human-readable export (and the old format)
        self.lock_path = os.path.join(self.dir, "lock")
        # Held (flock) by the one orchestrator driving this feature; others probe it to tell a live run.
        self.run_lock_path = os.path.join(self.dir, "orchestrator.lock")
        # A FIFO the orchestrator reads: a write by another process (stop, retry) pokes it, so the
        # orchestrator wakes on state changes without polling. Missing or unread: the poke is skipped.
        self.fifo_path = os.path.join(self.dir, "events")
        self._conn: Any = None
        self._mutex = threading.RLock()

    # -- connection ------------------------------------------------------------------------------------------
    def _db(self, create: bool = False) -> Any:
        import sqlite3

        if self._conn is not None:
            return self._conn
        if not os.path.exists(self.db_path):
            if not create:
                return None
            os.makedirs(self.dir, exist_ok=True)
        try:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            elif version != _SCHEMA_VERSION or not _TABLES <= tables:
                conn.close()
                raise StateError(
                    self.db_path, f"schema version {version} with tables {sorted(tables)}, expected version {_SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as exc:
            raise StateError(self.db_path, f"not a run state database: {exc}") from None
        del mode
        self._conn = conn
        return conn

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _tx(self, create: bool = False) -> Iterator[Any]:
        import sqlite3

        with self._mutex:
            conn = self._db(create=create)
            if conn is None:
                raise FileNotFoundError(self.db_path)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise StateError(self.db_path, f"cannot be written: {exc}") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- the whole document ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(self.db_path) or os.path.exists(self.path)

    def _migrate(self) -> bool:
        """Import an old ``state.json`` (version 1) when there is no database yet. True when one was imported."""
        if os.path.lexists(self.db_path) or not os.path.lexists(self.path):
            return False
        data = _read_legacy(self.path)
        if data is None:
            return False
        self.create(data, notify=False)
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path + ".v1")
        return True

    def read(self) -> dict[str, Any] | None:
        """The whole document (validated: :class:`StateError` naming the field), or None when there is none."""
        import sqlite3

        with self._mutex:
            self._migrate()
            conn = self._db()
            if conn is None:
                return None
            try:
                conn.execute("BEGIN")
                try:
                    data = self._load(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise StateError(self.db_path, f"cannot be read: {exc}") from None
        return data

    def _load(self, conn: Any) -> dict[str, Any] | None:
        row = conn.execute("SELECT doc FROM run WHERE id = 1").fetchone()
        if row is None:
            return None
        data = self._decode(row[0], "the run")
        data["tasks"] = {tid: self._decode(doc, f"task {tid!r}") for tid, doc in conn.execute("SELECT id, doc FROM tasks")}
        procs = {str(w): self._decode(doc, f"process {w}") for w, doc in conn.execute("SELECT worker, doc FROM processes")}
        if procs:
            data["processes"] = procs
        return _check(self.db_path, data)

    def _decode(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (ValueError, TypeError) as exc:
            raise StateError(self.db_path, f"{what}: not valid JSON: {exc}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Read the document, yield it for changes, write back the rows that changed, all in one transaction.

        Raises FileNotFoundError when there is no state yet."""
        self._migrate()
        with self._tx() as conn:
            data = self._load(conn)
            if data is None:
                raise FileNotFoundError(self.db_path)
            before_run = _enc(_run_part(data))
            before_tasks = {tid: _enc(t) for tid, t in data["tasks"].items()}
            before_procs = {k: _enc(v) for k, v in (data.get("processes") or {}).items()}
            yield data
            tasks = data["tasks"]
            changed = [(tid, _enc(t)) for tid, t in tasks.items() if before_tasks.get(tid) != _enc(t)]
            gone = [tid for tid in before_tasks if tid not in tasks]
            procs = {k: _enc(v) for k, v in (data.get("processes") or {}).items()}
            dirty = bool(changed or gone or procs != before_procs or _enc(_run_part(data)) != before_run)
            if dirty:
                conn.executemany("INSERT OR REPLACE INTO tasks (id, doc) VALUES (?, ?)", changed)
                conn.executemany("DELETE FROM tasks WHERE id = ?", [(tid,) for tid in gone])
                if procs != before_procs:
                    conn.execute("DELETE FROM processes")
                    conn.executemany("INSERT INTO processes (worker, doc) VALUES (?, ?)", [(int(k), v) for k, v in procs.items()])
                self._bump(data)
                conn.execute("INSERT OR REPLACE INTO run (id, doc) VALUES (1, ?)", (_enc(_run_part(data)),))
        if dirty:
            self.notify()

    def create(self, data: dict[str, Any], *, notify: bool = True) -> None:
        """Write a new document (replacing any)."""
        _check(self.db_path, data)
        with self._tx(create=True) as conn:
            conn.execute("DELETE FROM tasks")
            conn.execute("DELETE FROM processes")
            self._bump(data)
            conn.execute("INSERT OR REPLACE INTO run (id, doc) VALUES (1, ?)", (_enc(_run_part(data)),))
            conn.executemany("INSERT INTO tasks (id, doc) VALUES (?, ?)", [(tid, _enc(t)) for tid, t in data["tasks"].items()])
            conn.executemany(
                "INSERT INTO processes (worker, doc) VALUES (?, ?)",
                [(int(k), _enc(v)) for k, v in (data.get("processes") or {}).items()],
            )
        if notify:
            self.notify()

    @staticmethod
    def _bump(run: dict[str, Any]) -> None:
        run["updated"] = time.time()
        run["seq"] = int(run.get("seq", 0)) + 1

    # -- one row at a time (the orchestrator) ----------------------------------------------------------------
    def read_run(self) -> dict[str, Any] | None:
        """The run's fields (no tasks), or None when there is no state."""
        with self._mutex:
            if self._conn is None:
                self._migrate()
            conn = self._db()
            if conn is None:
                return None
            row = conn.execute("SELECT doc FROM run WHERE id = 1").fetchone()
        return None if row is None else self._decode(row[0], "the run")

    def seq(self) -> int:
        """The write counter (0 when there is no state, -1 when it cannot be read)."""
        try:
            run = self.read_run()
        except (ValueError, OSError):
            return -1
        return int((run or {}).get("seq", 0))

    def write(self, tasks: dict[str, dict[str, Any]], run: dict[str, Any] | None = None) -> tuple[int, int]:
        """Replace the named task records and set the given run fields, in one transaction whose cost does not
        depend on the number of tasks. Returns (seq before, seq after): a gap from the caller's last write means
        another process wrote in between."""
        with self._tx() as conn:
            row = conn.execute("SELECT doc FROM run WHERE id = 1").fetchone()
            if row is None:
                raise FileNotFoundError(self.db_path)
            current = self._decode(row[0], "the run")
            before = int(current.get("seq", 0))
            current.update(run or {})
            self._bump(current)
            conn.executemany("INSERT OR REPLACE INTO tasks (id, doc) VALUES (?, ?)", [(tid, _enc(t)) for tid, t in tasks.items()])
            conn.execute("UPDATE run SET doc = ? WHERE id = 1", (_enc(current),))
        return before, int(current["seq"])

    def set_process(self, worker_id: int, entry: dict[str, Any] | None) -> None:
        """Record (or with None forget) worker ``worker_id``'s process (does not count as a state change)."""
        with self._tx() as conn:
            if entry is None:
                conn.execute("DELETE FROM processes WHERE worker = ?", (worker_id,))
            else:
                conn.execute("INSERT OR REPLACE INTO processes (worker, doc) VALUES (?, ?)", (worker_id, _enc(entry)))

    def export(self) -> None:
        """Write ``state.json``: the whole document, indented, replaced atomically (for people and tools)."""
        data = self.read()
        if data is None:
            return
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

    def try_run_lock(self) -> int | None:
        """Take the feature's run lock (held by the one process driving its run) without waiting: the open
        descriptor (closing it releases the lock), or None when another process holds it."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.run_lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the feature's lock file (blocking); kept for callers that serialise other work on it."""
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _run_part(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("tasks", "processes")}


_MAX_STATE_BYTES = 256 << 20


def _read_legacy(path: str) -> dict[str, Any] | None:
    """An old ``state.json`` document, validated (StateError naming the field), or None when there is none.
    Never a symlink, a FIFO (it would hang) or a device; bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file where a parent dir should be
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(path, "it is a symlink") from None
        raise StateError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise StateError(path, "it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise StateError(path, "it is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(_MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise StateError(path, f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(raw) > _MAX_STATE_BYTES:
        raise StateError(path, f"larger than {_MAX_STATE_BYTES >> 20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateError(path, "not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise StateError(path, f"not valid JSON: {str(exc)[:200]}") from None
    return _check(path, data)


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
