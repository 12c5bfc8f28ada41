"""Hostile input to every command, without Docker: one line on stderr naming the file/field/fix, a non-zero exit,
never a traceback. Real git repositories in tmp dirs; the engine is pointed nowhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mahabharatha.cli import main
from mahabharatha.worker import state as S


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hi\n")
    _git(r, "add", "README.md")
    _git(r, "commit", "-q", "-m", "init")
    (r / ".gsd" / "specs" / "feat").mkdir(parents=True)
    (r / ".gsd" / ".current-feature").write_text("feat\n")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return r


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mahabharatha: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def _state_file(repo: Path) -> Path:
    store = S.StateStore(str(repo / ".mahabharatha" / "state"), "feat")
    store.create(S.new_state("feat", [("A", 1)]))
    return Path(store.path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"version": 1, "feature": "feat", "le', "not valid JSON"),  # truncated
        ("", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 1}', "'status'"),
        ('{"status": "running", "level": 1, "levels": [1], "tasks": {"A": {"level": 1}}}', "task 'A'"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["retry"], ["kurukshetra", "--mode", "subprocess"]])
def test_corrupt_state_file_is_one_line_naming_it(
    repo: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str, command: list[str]
) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    path = _state_file(repo)
    path.write_text(content)
    assert main([*command, "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(path), "corrupt run state", problem, "move it away")
    assert path.read_text() == content  # never rewritten behind the user's back


def test_state_file_that_is_a_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _state_file(repo)
    path.unlink()
    path.mkdir()
    assert main(["status", "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(path), "is a directory")


def _graph(repo: Path) -> Path:
    return repo / ".gsd" / "specs" / "feat" / "task-graph.json"


@pytest.mark.parametrize(
    "content, needles",
    [
        (None, ("no task graph for feature 'feat'", "design phase")),
        ("", ("not valid JSON",)),
        ("nope", ("not valid JSON",)),
        ("[]", ("invalid task graph", "object")),
        ('{"feature": "feat", "tasks": "x"}', ("$.tasks",)),
        ('{"feature": "feat", "tasks": []}', ("no tasks",)),
        ('{"feature": "other", "tasks": [{"id": "A", "level": 1}]}', ("field `feature` is 'other'", "--feature other")),
    ],
)
@pytest.mark.parametrize("mode", ["subprocess", "container"])
def test_bad_task_graph_fails_before_anything_starts(
    repo: Path, capsys: pytest.CaptureFixture[str], content: str | None, needles: tuple[str, ...], mode: str
) -> None:
    if content is not None:
        _graph(repo).write_text(content)
    assert main(["kurukshetra", "--mode", mode, "--repo", str(repo)]) == 2
    _one_line_error(capsys, str(_graph(repo)), *needles)
    assert not (repo / ".mahabharatha" / "state").exists()  # nothing started, nothing recorded
    assert "mahabharatha/feat/base" not in subprocess.run(
        ["git", "-C", str(repo), "branch"], capture_output=True, text=True, check=True
    ).stdout


def test_task_graph_that_is_a_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _graph(repo).mkdir()
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(repo)]) == 2
    _one_line_error(capsys, str(_graph(repo)), "is a directory")
