"""The shared state: document operations, atomic writes, and the lock under real concurrent claimers."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_transaction_writes_only_on_change_and_the_export_is_the_document(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=3)
    before = store.seq()
    with store.transaction() as data:
        pass  # unchanged: no write
    assert store.seq() == before
    with store.transaction() as data:
        S.claim_next(data, 7)
    assert store.seq() == before + 1
    assert S.StateStore(str(tmp_path / "state"), "feat").read()["tasks"]["T000"]["worker"] == 7  # another reader
    store.export()
    on_disk = json.loads(Path(store.path).read_text())
    assert on_disk["tasks"]["T000"]["worker"] == 7
    assert not [n for n in os.listdir(store.dir) if n.endswith(".tmp")]  # no temp files left behind


def test_write_changes_named_rows_only_and_reports_foreign_writes(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=3)
    seq = store.seq()
    task = store.read()["tasks"]["T001"]
    task.update(status="claimed", worker=2, attempts=1)
    assert store.write({"T001": task}, {"level": 1}) == (seq, seq + 1)
    other = S.StateStore(str(tmp_path / "state"), "feat")
    with other.transaction() as data:  # e.g. `mahabharatha retry` from another process
        data["message"] = "hi"
    before, after = store.write({}, None)
    assert before == seq + 2 and after == seq + 3  # the gap says someone else wrote
    data = other.read()
    assert data["tasks"]["T001"]["worker"] == 2 and data["message"] == "hi" and data["tasks"]["T000"]["status"] == "pending"


def test_an_old_state_json_is_imported_once(tmp_path: Path) -> None:
    store = S.StateStore(str(tmp_path / "state"), "feat")
    os.makedirs(store.dir)
    Path(store.path).write_text(json.dumps(S.new_state("feat", [("A", 1)])))
    assert store.read()["tasks"]["A"]["status"] == "pending"
    assert os.path.exists(store.db_path) and os.path.exists(store.path + ".v1") and not os.path.exists(store.path)


def test_a_database_that_is_not_ours_is_one_state_error(tmp_path: Path) -> None:
    import sqlite3

    store = S.StateStore(str(tmp_path / "state"), "feat")
    os.makedirs(store.dir)
    sqlite3.connect(store.db_path).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(S.StateError, match="schema version 0") as info:
        store.read()
    assert "\n" not in str(info.value)
    Path(store.db_path).write_bytes(b"not a database at all" * 100)
    with pytest.raises(S.StateError, match="not a run state database"):
        S.StateStore(str(tmp_path / "state"), "feat").read()


def test_a_corrupt_row_is_one_state_error(tmp_path: Path) -> None:
    import sqlite3

    store = _store(tmp_path, tasks=2)
    conn = sqlite3.connect(store.db_path)
    conn.execute("UPDATE tasks SET doc = ? WHERE id = 'T000'", (json.dumps({"level": 1, "status": "bogus"}),))
    conn.commit()
    with pytest.raises(S.StateError, match="task 'T000': field 'status' is \"bogus\""):
        S.StateStore(str(tmp_path / "state"), "feat").read()


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


# ----------------------------------------------------------------------------------------------------------
# The schema: every field checked on read, every violation one StateError naming the field

RUN_STATUSES = ["running", "done", "blocked", "failed", "stopped"]
TASK_STATUSES = ["pending", "claimed", "done", "failed", "blocked"]


def _whole(v: Any) -> bool:
    return type(v) is int and v >= 0


# What each field must hold (independent of the implementation): top-level, then per task.
RUN_OK = {
    "version": lambda v: type(v) is int and v == 1,
    "feature": lambda v: type(v) is str,
    "level": _whole,
    "levels": lambda v: type(v) is list and all(_whole(x) for x in v),
    "status": lambda v: type(v) is str and v in RUN_STATUSES,
    "message": lambda v: type(v) is str,
    "updated": lambda v: type(v) in (int, float) and v == v and abs(v) != float("inf"),
    "seq": _whole,
    "tasks": lambda v: type(v) is dict,  # (its entries are checked by TASK_OK)
    "processes": lambda v: type(v) is dict and all(k.isascii() and k.isdigit() and type(e) is dict for k, e in v.items()),
}
TASK_OK = {
    "level": _whole,
    "status": lambda v: type(v) is str and v in TASK_STATUSES,
    "worker": lambda v: v is None or _whole(v),
    "attempts": _whole,
    "commit": lambda v: type(v) is str and len(v) <= 64 and all(c in "0123456789abcdefABCDEF" for c in v),
    "error": lambda v: type(v) is str,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8)
    | st.sampled_from(RUN_STATUSES + TASK_STATUSES + ["", "abc", "1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def valid_tasks(draw: st.DrawFn) -> dict[str, Any]:
    task: dict[str, Any] = {"level": draw(st.integers(0, 5)), "status": draw(st.sampled_from(TASK_STATUSES))}
    if draw(st.booleans()):
        task["worker"] = draw(st.none() | st.integers(0, 64))
    if draw(st.booleans()):
        task["attempts"] = draw(st.integers(0, 10))
    if draw(st.booleans()):
        task["commit"] = draw(st.sampled_from(["", "abc", "0" * 40, "deadBEEF" * 8]))
    if draw(st.booleans()):
        task["error"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        task["note"] = draw(json_values)  # unknown task keys are kept
    return task


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    tasks = draw(st.dictionaries(st.text(min_size=1, max_size=6), valid_tasks(), max_size=4))
    doc: dict[str, Any] = {
        "level": draw(st.integers(0, 5)),
        "levels": draw(st.lists(st.integers(0, 5), max_size=4)),
        "status": draw(st.sampled_from(RUN_STATUSES)),
        "tasks": tasks,
    }
    optional = {
        "version": st.just(1),
        "feature": st.text(max_size=10),
        "message": st.text(max_size=20),
        "updated": st.floats(0, 4e9) | st.integers(0, 2**33),
        "seq": st.integers(0, 2**40),
        "processes": st.dictionaries(st.integers(0, 99).map(str), st.fixed_dictionaries({"pid": st.integers(1, 99999)}), max_size=3),
        "usage": json_values,  # keys other code may add
        "pids": json_values,
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            doc[key] = draw(strategy)
    return doc


@settings(max_examples=150, deadline=None)
@given(valid_documents())
def test_valid_documents_pass_and_get_task_defaults(doc: dict[str, Any]) -> None:
    checked = S._check("state.json", json.loads(json.dumps(doc)))
    for task in checked["tasks"].values():
        assert {"worker", "attempts", "commit", "error"} <= task.keys()


@settings(max_examples=400, deadline=None)
@given(valid_documents(), st.data())
def test_any_field_with_a_wrong_value_is_a_state_error_naming_it(doc: dict[str, Any], data: st.DataObject) -> None:
    choices = [("run", key) for key in RUN_OK] + [("task", (tid, key)) for tid in doc["tasks"] for key in TASK_OK]
    where, field = data.draw(st.sampled_from(choices))
    if where == "run":
        key = field
        ok = RUN_OK[key]
        target = doc
    else:
        tid, key = field
        ok = TASK_OK[key]
        target = doc["tasks"][tid]
    bad = data.draw(json_values.filter(lambda v: not ok(v)))
    target[key] = bad
    with pytest.raises(S.StateError) as info:
        S._check("/r/state.json", doc)
    message = str(info.value)
    assert message.startswith("/r/state.json: corrupt run state (") and "\n" not in message
    assert f"field {key!r}" in message
    if where == "task":
        assert f"task {tid!r}: field {key!r}" in message


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_a_state_or_a_state_error(value: Any) -> None:
    try:
        S._check("state.json", value)
    except S.StateError:
        pass


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(seq="abc"), "field 'seq' is \"abc\", expected a whole number >= 0"),
        (lambda d: d.update(seq=-1), "field 'seq' is -1"),
        (lambda d: d.update(status="bogus"), "field 'status' is \"bogus\", expected one of blocked, done, failed, running, stopped"),
        (lambda d: d.update(level=True), "field 'level' is true"),
        (lambda d: d.update(levels=[1, "2"]), "field 'levels' holds \"2\""),
        (lambda d: d.update(version=2), "field 'version' is 2, expected 1"),
        (lambda d: d.update(updated="now"), "field 'updated' is \"now\""),
        (lambda d: d.update(processes={"w0": {}}), "field 'processes' has entry 'w0'"),
        (lambda d: d.pop("tasks"), "field 'tasks' is missing"),
        (lambda d: d["tasks"]["T000"].update(attempts=None), "task 'T000': field 'attempts' is null, expected a whole number >= 0"),
        (lambda d: d["tasks"]["T000"].update(worker="0"), "task 'T000': field 'worker' is \"0\""),
        (lambda d: d["tasks"]["T000"].update(worker=False), "task 'T000': field 'worker' is false"),
        (lambda d: d["tasks"]["T000"].update(commit="--upload-pack=evil"), "task 'T000': field 'commit'"),
        (lambda d: d["tasks"]["T000"].update(status="bogus"), "task 'T000': field 'status' is \"bogus\""),
        (lambda d: d["tasks"]["T000"].pop("level"), "task 'T000': field 'level' is missing"),
        (lambda d: d["tasks"].update(T000=[]), "task 'T000': expected an object, found a list"),
    ],
)
def test_corrupt_state_on_disk_is_one_state_error(tmp_path: Path, change: Any, expected: str) -> None:
    # An old state.json (no database yet) is validated before it is imported; a bad one is refused, untouched.
    store = S.StateStore(str(tmp_path / "state"), "feat")
    os.makedirs(store.dir)
    data = S.new_state("feat", [("T000", 1), ("T001", 1)])
    change(data)
    Path(store.path).write_text(json.dumps(data))
    with pytest.raises(S.StateError) as info:
        store.read()
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert store.seq() == -1  # the waiters' probe sees "unreadable", it does not crash


def test_documents_the_code_writes_stay_valid(tmp_path: Path) -> None:
    store = _store(tmp_path, tasks=3, levels=2)
    with store.transaction() as data:
        tid = S.claim_next(data, 0)
        S.finish_task(data, tid, S.DONE, commit="a" * 40)
        S.claim_next(data, 1)
        S.release_worker(data, 1, status=S.FAILED, error="boom")
        data.setdefault("processes", {})["0"] = {"pid": 123, "host": "h", "start": ""}
        data["usage"] = {"anything": [1, 2]}  # a key this module does not know
        S.mark_stopped(data, "stopped by user")
    data = store.read()
    assert data is not None and data["usage"] == {"anything": [1, 2]} and data["seq"] == 2
