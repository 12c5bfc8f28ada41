"""Recorded worker processes: ``stop`` signals a recorded pid only while it still names the recorded process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mahabharatha.edge import processes
from mahabharatha.worker import state as S


@pytest.fixture
def store(tmp_path: Path) -> S.StateStore:
    s = S.StateStore(str(tmp_path), "f")
    s.create(S.new_state("f", [("T", 1)]))
    return s


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_a_recorded_worker_is_terminated(store: S.StateStore) -> None:
    proc = _sleeper()
    processes.record(store, 0, proc.pid)
    assert processes.stop_recorded(store, timeout=10) == [(0, proc.pid, "stopped")]
    assert proc.wait(timeout=10) == -15  # SIGTERM


def test_a_reused_pid_is_left_alone(store: S.StateStore) -> None:
    proc = _sleeper()
    try:
        processes.record(store, 0, proc.pid)
        with store.transaction() as data:  # as if the worker ended and its pid went to another process
            data["processes"]["0"]["start"] = "1" if processes.start_token(proc.pid) != "1" else "2"
        assert processes.stop_recorded(store, timeout=1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_recorded_on_another_host_is_left_alone(store: S.StateStore) -> None:
    proc = _sleeper()
    try:
        processes.record(store, 0, proc.pid)
        with store.transaction() as data:
            data["processes"]["0"]["host"] = "some-other-machine"
        assert processes.stop_recorded(store, timeout=1) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
