"""``mahabharatha diff``: a task's, a worker's and a level's changes against the level's base, from the journal
of a real subprocess run and real git."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mahabharatha import events as E
from mahabharatha.cli import main
from mahabharatha.cli.review import run_commits
from mahabharatha.edge.journal import read_entries

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e.invalid", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mahabharatha.edge.orchestrator import execute
    from mahabharatha.planning import plan

    repo = (tmp_path_factory.mktemp("review") / "repo").resolve()
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    tasks = [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}},
        {"id": "B", "level": 1, "files": {"create": ["b.txt"]}},
        {"id": "C", "level": 1, "files": {"create": ["c.txt"]}},
        {"id": "D", "level": 2, "dependencies": ["A"], "files": {"create": ["d.txt"], "modify": ["a.txt"]}},
    ]
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: 2\n  agent_command: {AGENT}\n"
    )
    (repo.parent / "home").mkdir()
    result = execute(plan(str(repo), feature="feat", workers=2, environ={}, home=repo.parent / "home"))
    assert result.status == "done"
    return repo


def _diff(repo: Path, capsys: pytest.CaptureFixture[str], *args: str) -> set[str]:
    assert main(["diff", "--repo", str(repo), "--name-only", *args]) == 0
    return set(capsys.readouterr().out.split())


def test_a_task_a_worker_and_a_level(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _diff(ran, capsys, "A") == {"a.txt"}
    assert _diff(ran, capsys, "D") == {"a.txt", "d.txt"}  # against where D started: level 1 merged
    rc = run_commits([e.event for e in read_entries(str(ran), "feat")])
    owners = {tid: rc.claims[tid][0] for tid in "ABC"}
    for worker in (0, 1):
        mine = {f"{t.lower()}.txt" for t, w in owners.items() if w == worker}
        if mine:
            assert _diff(ran, capsys, "--worker", str(worker), "--level", "1") == mine
    assert _diff(ran, capsys, "--level", "1") == {"a.txt", "b.txt", "c.txt"}
    assert _diff(ran, capsys, "--level", "2") == {"a.txt", "d.txt"}
    assert _diff(ran, capsys) == {"a.txt", "d.txt"}  # the last merged level
    assert rc.bases[1] == git(ran, "rev-parse", "main") and rc.merged[2] == git(ran, "rev-parse", "mahabharatha/feat/base")
    assert rc.bases[2] == rc.merged[1]
    assert main(["diff", "--repo", str(ran), "--stat", "--level", "1"]) == 0
    assert "3 files changed" in capsys.readouterr().out


def test_unknown_task_is_one_line(ran: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "--repo", str(ran), "nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no task 'nope'" in err


def test_commits_that_are_not_ids_never_reach_git() -> None:
    rc = run_commits([
        E.RunStarted("f", 1, (1,), base="--output=/tmp/x"),
        E.TaskClaimed("A", 0, 1, 1, start="-p"),
        E.TaskDone("A", 0, "HEAD"),
    ])
    assert rc.bases == {} and rc.claims["A"][2] == "" and rc.done["A"] == ""
