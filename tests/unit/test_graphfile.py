"""Reading the task graph from disk: whatever sits at its path, the answer is a valid graph or one GraphError
line naming the file, in bounded time and memory."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.graph import graph_path
from mahabharatha.edge.graphfile import GRAPH_LIMIT, read_task_graph
from mahabharatha.edge.safefs import read_regular
from mahabharatha.errors import FileAccessError, GraphError

FEATURE = "feat"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".gsd" / "specs" / FEATURE).mkdir(parents=True)
    return tmp_path


def _path(repo: Path) -> Path:
    return Path(graph_path(str(repo), FEATURE))


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """What ``fn`` returned or raised, failing (rather than hanging) after ``seconds``."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still reading after {seconds} s"
    return box[0]


def _graph_error(repo: Path, *expected: str) -> str:
    outcome = _within(3, lambda: read_task_graph(str(repo), FEATURE))
    assert isinstance(outcome, GraphError), f"expected GraphError, got {outcome!r}"
    message = str(outcome)
    assert "\n" not in message
    assert message.startswith(str(_path(repo)) + ": "), message
    for part in expected:
        assert part in message, message
    return message


def test_a_valid_graph_is_read(repo: Path) -> None:
    _path(repo).write_text(json.dumps({"feature": FEATURE, "tasks": [{"id": "A", "level": 1}]}))
    assert read_task_graph(str(repo), FEATURE).tasks[0].id == "A"


def test_missing_graph_says_run_the_design_phase(repo: Path) -> None:
    _graph_error(repo, "no task graph for feature 'feat'", "design phase")


def test_fifo_as_the_graph(repo: Path) -> None:
    os.mkfifo(_path(repo))
    try:
        _graph_error(repo, "the task graph is a FIFO (named pipe)")
    finally:  # release a broken implementation stuck in open()
        fd = os.open(_path(repo), os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)


def test_dev_zero_symlink_as_the_graph(repo: Path) -> None:
    _path(repo).symlink_to("/dev/zero")
    _graph_error(repo, "character device")


def test_directory_as_the_graph(repo: Path) -> None:
    _path(repo).mkdir()
    _graph_error(repo, "is a directory")


def test_200k_deep_json(repo: Path) -> None:
    depth = 200_000
    _path(repo).write_text('{"feature": "feat", "extra": ' + "[" * depth + "]" * depth + ', "tasks": []}')
    _graph_error(repo, "nested too deeply")
    _path(repo).write_text("[" * depth + "]" * depth)
    _graph_error(repo)  # an array where the object should be: refused before it nests at all
    _path(repo).write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1, "x": ' + '{"a": ' * depth + "1" + "}" * depth + "}]}")
    _graph_error(repo, "nested too deeply")


def test_20_mb_graph(repo: Path) -> None:
    padding = " " * (20 * 1000 * 1000)
    _path(repo).write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}' + padding)
    _graph_error(repo, "is 19.1 MiB, more than the 16 MiB allowed")


def test_sparse_huge_graph(repo: Path) -> None:
    with open(_path(repo), "wb") as fh:
        fh.truncate(10 << 30)
    _graph_error(repo, "10 GiB")


def test_a_graph_just_within_the_limit_is_read(repo: Path) -> None:
    head = json.dumps({"feature": FEATURE, "tasks": [{"id": "A", "level": 1}]})
    _path(repo).write_text(head + " " * (GRAPH_LIMIT - len(head)))
    assert read_task_graph(str(repo), FEATURE).feature == FEATURE


def test_not_utf8(repo: Path) -> None:
    data = b'{"feature": "feat", "tasks": [{"id": "A", "level": 1, "title": "caf\xe9"}]}'
    _path(repo).write_bytes(data)
    _graph_error(repo, "not UTF-8", f"0xe9 at offset {data.index(0xE9)}")


def test_graph_of_another_feature(repo: Path) -> None:
    _path(repo).write_text(json.dumps({"feature": "other", "tasks": [{"id": "A", "level": 1}]}))
    _graph_error(repo, "field `feature` is 'other'")


def test_bad_files_path_surfaces_through_the_read(repo: Path) -> None:
    _path(repo).write_text(json.dumps({"feature": FEATURE, "tasks": [{"id": "A", "level": 1, "files": {"modify": [".git/config"]}}]}))
    _graph_error(repo, "task 'A': `files.modify` path '.git/config'", ".git")


def test_current_feature_file_is_readable_with_a_4k_limit(tmp_path: Path) -> None:
    """What planning needs for ``.gsd/.current-feature``: a small file read, a link to /dev/zero refused."""
    current = tmp_path / ".current-feature"
    current.write_text("feat\n")
    assert read_regular(current, limit=4096, what="the current feature") == b"feat\n"
    current.unlink()
    current.symlink_to("/dev/zero")
    outcome = _within(3, lambda: read_regular(current, limit=4096, what="the current feature"))
    assert isinstance(outcome, FileAccessError) and "character device" in str(outcome)
    current.unlink()
    current.write_text("x" * 4097)
    outcome = _within(3, lambda: read_regular(current, limit=4096, what="the current feature"))
    assert isinstance(outcome, FileAccessError) and "more than the 4 KiB allowed" in str(outcome)
    assert read_regular(tmp_path / "missing", limit=4096, what="the current feature", missing_ok=True) is None
