"""``workers.review``: a real subprocess run pauses before each level's merge, shows the level's diff stat, merges
on ``mahabharatha approve``; ``reject TASK`` fails the task, keeps its work under its failed ref and blocks its
dependants."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
import pytest

from mahabharatha import events as E
from mahabharatha.cli import main

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e.invalid", *args],
                          check=check, capture_output=True, text=True).stdout.strip()


def test_review_pauses_each_level_and_reject_keeps_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mahabharatha.edge.orchestrator import Run
    from mahabharatha.planning import plan

    repo = (tmp_path / "repo").resolve()
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hi\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    tasks = [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}},
        {"id": "B", "level": 1, "files": {"create": ["b.txt"]}},
        {"id": "C", "level": 2, "dependencies": ["A"], "files": {"create": ["c.txt"]}},
        {"id": "D", "level": 2, "dependencies": ["B"], "files": {"create": ["d.txt"]}},
    ]
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: 2\n  review: true\n  agent_command: {AGENT}\n"
    )
    (tmp_path / "home").mkdir()
    p = plan(str(repo), feature="feat", workers=2, environ={}, home=tmp_path / "home")
    assert p.review
    seen: list[E.Event] = []
    lines: list[str] = []
    with Run(p, out=lines.append) as run:
        for event in run:
            seen.append(event)
            if isinstance(event, E.ReviewRequested) and event.level == 1:
                asked = sum(isinstance(e, E.ReviewRequested) and e.level == 1 for e in seen)
                assert git(repo, "rev-parse", "mahabharatha/feat/base") == git(repo, "rev-parse", "main")  # not merged
                if asked == 1:
                    assert "a.txt" in event.stat and "b.txt" in event.stat and event.tasks == ("A", "B")
                    assert main(["reject", "B", "--repo", str(repo)]) == 0
                else:  # asked again after the rejection: B's work is off its branch
                    assert "a.txt" in event.stat and "b.txt" not in event.stat and event.tasks == ("A",)
                    assert main(["approve", "--repo", str(repo)]) == 0
            elif isinstance(event, E.TaskFailed):
                assert event.task == "B" and event.reason.startswith("rejected in review (work kept at")
            elif isinstance(event, E.ReviewRequested) and event.level == 2:
                assert "c.txt" in event.stat and event.tasks == ("C",)
                assert main(["approve", "--repo", str(repo)]) == 0
    result = run.result
    assert result is not None and result.status == "blocked", lines
    base = "mahabharatha/feat/base"
    assert set(git(repo, "ls-tree", "-r", "--name-only", base).split()) == {"README.md", "a.txt", "c.txt"}
    kept = git(repo, "ls-tree", "-r", "--name-only", "refs/mahabharatha/failed/feat/B").split()
    assert "b.txt" in kept  # the rejected work is kept, never merged
    assert "waits for review" in "\n".join(lines)
    assert main(["approve", "--repo", str(repo)]) == 1  # nothing waits any more
    assert "no level of feature feat is waiting for review" in capsys.readouterr().err
