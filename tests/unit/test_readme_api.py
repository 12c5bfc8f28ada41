"""The README's Python API example runs as written, on a fresh repository with a task graph (subprocess mode
with the scripted agent: no Docker, no key), and prints what its comments say."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_api_example_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    spec = repo / ".gsd" / "specs" / "ledger-lite"
    spec.mkdir(parents=True)
    graph = {"feature": "ledger-lite", "tasks": [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}},
        {"id": "B", "level": 1, "files": {"create": ["b.txt"]}},
        {"id": "C", "level": 2, "dependencies": ["A", "B"], "files": {"create": ["c.txt"]}},
    ]}
    (spec / "task-graph.json").write_text(json.dumps(graph))
    (repo / ".gsd" / ".current-feature").write_text("ledger-lite\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  launcher_type: subprocess\n  agent_command: python3 -m mahabharatha_worker.scripted_agent\n"
    )
    (repo / ".gitignore").write_text(".mahabharatha/\n.gsd/specs/*/progress.md\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path), "PYTHONPATH": str(README.parent)}
    out = subprocess.run([sys.executable, "-c", _example()], cwd=repo, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 tasks in 2 levels"
    assert "done {1: {'done': 2}, 2: {'done': 1}}" in lines
    assert any(line.startswith("task A done by worker") for line in lines)
    assert any(line.startswith("level 2 finished (1 done)") for line in lines)
    assert lines[-1] == "done"
