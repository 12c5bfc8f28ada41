"""Worker processes of subprocess mode, found again by ``mahabharatha stop`` from another process.

The orchestrator records each worker process it starts in the run state (``processes``: worker id -> pid,
host and a start token), so ``stop`` can signal the workers even when the orchestrator is gone. A pid is
signalled only when it still names the process that was recorded: same host, and the same start time
(``/proc/<pid>/stat``) or, where there is no ``/proc``, a session leader (workers start their own session),
so a reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any

from ..worker import state as S

__all__ = ["start_token", "record", "stop_recorded"]

_POLL_S = 0.05  # how often stop() looks whether a signalled worker is gone (it is not our child: no wait())


def start_token(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from ``/proc``), or "" where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""  # field 22 of stat(5); fields[0] is field 3


def record(store: S.StateStore, worker_id: int, pid: int) -> None:
    """Note in the run state that worker ``worker_id`` is process ``pid`` on this host."""
    entry = {"pid": pid, "host": socket.gethostname(), "start": start_token(pid)}
    store.set_process(worker_id, entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            if fh.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False  # a zombie: it has exited, its parent has not reaped it yet
    return True


def _still_ours(entry: dict[str, Any]) -> bool:
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 1 or entry.get("host") != socket.gethostname() or not _alive(pid):
        return False
    token = start_token(pid)
    if token or entry.get("start"):
        return token == entry.get("start")
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def stop_recorded(store: S.StateStore, timeout: float = 30.0) -> list[tuple[int, int, str]]:
    """SIGTERM every recorded worker process that still runs (the worker ends its agent, puts its task back
    and exits 130), SIGKILL those still there after ``timeout`` seconds. Returns (worker id, pid, how)
    with how = "stopped" or "killed after <timeout> s"."""
    data = store.read() or {}
    targets = []
    for wid, entry in sorted((data.get("processes") or {}).items(), key=lambda kv: int(kv[0])):
        if isinstance(entry, dict) and _still_ours(entry):
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], signal.SIGTERM)
            targets.append((int(wid), entry["pid"]))
    deadline = time.monotonic() + timeout
    out = []
    for wid, pid in targets:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            out.append((wid, pid, f"killed after {timeout:g} s"))
        else:
            out.append((wid, pid, "stopped"))
    return out
