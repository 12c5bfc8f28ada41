"""The CLI's output channel: a reader that leaves early never stops a run, and logs name their worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x", *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "p" / "repo"
    r.mkdir(parents=True)
    _git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hi\n")
    _git(r, "add", "-A")
    _git(r, "commit", "-qm", "init")
    (r / ".gsd" / "specs" / "feat").mkdir(parents=True)
    (r / ".gsd" / ".current-feature").write_text("feat\n")
    tasks = [{"id": f"T{i}", "level": 1 + i // 3, "files": {"create": [f"t{i}.txt"]}, "scripted": {"sleep": 0.05}} for i in range(9)]
    (r / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (r / ".mahabharatha").mkdir()
    (r / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: python3 -m mahabharatha_worker.scripted_agent\n")
    return r


def test_a_closed_stdout_does_not_stop_the_run(repo: Path, tmp_path: Path) -> None:
    """`kurukshetra | head -2`: the run goes on to the end and its exit code says how it went."""
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mahabharatha", "kurukshetra", "--mode", "subprocess", "--workers", "2", "--repo", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader leaves
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    state = json.loads((repo / ".mahabharatha" / "state" / "feat" / "state.json").read_text())
    assert state["status"] == "done" and all(t["status"] == "done" for t in state["tasks"].values())
    # Each feature's worker logs apart from other features'.
    assert sorted(p.name for p in (repo / ".mahabharatha" / "logs" / "workers" / "feat").iterdir()) == [
        "worker-0.stdout.log", "worker-1.stdout.log",
    ]
