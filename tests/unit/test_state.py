"""The shared state: document operations, atomic writes, and the lock under real concurrent claimers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from mahabharatha.worker import state as S


def _store(tmp_path: Path, tasks: int = 40, levels: int = 1) -> S.StateStore:
    store = S.StateStore(str(tmp_path / "state"), "feat")
    store.create(S.new_state("feat", [(f"T{i:03d}", 1 + i % levels) for i in range(tasks)]))
    return store


def test_new_state_starts_at_lowest_level_all_pending() -> None:
    data = S.new_state("f", [("b", 2), ("a", 1)])
    assert data["level"] == 1 and data["levels"] == [1, 2] and data["status"] == "running"
    assert {t["status"] for t in data["tasks"].values()} == {"pending"}
    assert S.new_state("f", [])["status"] == "done"


def test_claim_takes_only_current_level_and_counts_attempts() -> None:
    data = S.new_state("f", [("a", 1), ("b", 2)])
    assert S.claim_next(data, 0) == "a"
    assert data["tasks"]["a"] == {**data["tasks"]["a"], "status": "claimed", "worker": 0, "attempts": 1}
    assert S.claim_next(data, 1) is None  # b is on level 2
    assert not S.level_settled(data, 1)
    assert S.release_worker(data, 0) == ["a"]
    assert data["tasks"]["a"]["status"] == "pending" and data["tasks"]["a"]["worker"] is None
    assert S.claim_next(data, 1) == "a" and data["tasks"]["a"]["attempts"] == 2
    S.finish_task(data, "a", S.DONE, commit="abc")
    assert S.level_settled(data, 1)
    assert S.summary(data) == {1: {"done": 1}, 2: {"pending": 1}}


def test_no_claims_once_the_run_is_final() -> None:
    data = S.new_state("f", [("a", 1)])
    data["status"] = "stopped"
    assert S.claim_next(data, 0) is None


def test_transaction_writes_atomically_and_only_on_change(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=3)
    before = Path(store.path).stat().st_mtime_ns
    with store.transaction() as data:
        pass  # unchanged: no write
    assert Path(store.path).stat().st_mtime_ns == before
    with store.transaction() as data:
        S.claim_next(data, 7)
    on_disk = json.loads(Path(store.path).read_text())
    assert on_disk["tasks"]["T000"]["worker"] == 7
    assert sorted(os.listdir(store.dir)) == ["lock", "state.json"]  # no temp files left behind


def test_transaction_without_state_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with S.StateStore(str(tmp_path), "nope").transaction():
            pass


def test_notify_pokes_a_listening_fifo_and_never_blocks_without_one(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=1)
    store.notify()  # no FIFO: nothing happens
    os.mkfifo(store.fifo_path)
    store.notify()  # FIFO without reader: still returns at once
    fd = os.open(store.fifo_path, os.O_RDWR | os.O_NONBLOCK)
    try:
        with store.transaction() as data:
            S.claim_next(data, 0)
        assert os.read(fd, 10) == b"."
    finally:
        os.close(fd)


def _claimer(state_dir: str, worker_id: int, out: multiprocessing.Queue) -> None:
    store = S.StateStore(state_dir, "feat")
    mine = []
    while True:
        with store.transaction() as data:
            tid = S.claim_next(data, worker_id)
            if tid is not None:
                S.finish_task(data, tid, S.DONE)
        if tid is None:
            break
        mine.append(tid)
    out.put((worker_id, mine))


def test_concurrent_claimers_never_claim_the_same_task(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=60)
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path / "state"), w, out)) for w in range(6)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    claimed = [tid for _, mine in results for tid in mine]
    assert sorted(claimed) == sorted(f"T{i:03d}" for i in range(60))  # each exactly once
    data = store.read()
    assert data is not None
    assert {t["status"] for t in data["tasks"].values()} == {"done"}
    assert all(t["attempts"] == 1 for t in data["tasks"].values())
