"""``mahabharatha kurukshetra --dry-run`` end to end in a subprocess: no Docker, exit 0, secrets never shown."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

KEY = "sk-ant-api03-" + "DryRunSecretValue" * 3
TOKEN = "oauth-" + "TokenSecretValue" * 3


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gsd").mkdir()
    (root / ".gsd" / ".current-feature").write_text("user-auth\n")
    (root / ".env").write_text(f'CLAUDE_CODE_OAUTH_TOKEN="{TOKEN}"  # long-lived\n')
    return root


def run(repo: Path, home: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAHABHARATHA_", "ZERG_", "ANTHROPIC_", "CLAUDE_"))}
    env.update({"HOME": str(home), "ANTHROPIC_API_KEY": KEY, "DOCKER_HOST": "unix:///nonexistent.sock"})
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "mahabharatha", "kurukshetra", *args], cwd=repo, env=env, capture_output=True,
        text=True, timeout=60,
    )


def test_dry_run_text(repo, tmp_path):
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    result = run(repo, home, "--workers=3", "--mode", "container", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Container mode: using image mahabharatha-worker" in out
    for n in range(3):
        assert f"Launching Worker {n}: mahabharatha-worker-{n} (memory=4g, cpus=2.0)" in out
    assert "Launching Worker 3" not in out
    assert "ANTHROPIC_API_KEY=sk-ant-…(redacted)" in out and "CLAUDE_CODE_OAUTH_TOKEN=…(redacted)" in out
    assert "/home/worker/.claude" not in out  # the user's ~/.claude is never mounted
    assert "/repo/.git" in out and "Subprocess mode" not in out
    docker_lines = [line for line in out.splitlines() if line.startswith("docker run ")]
    assert len(docker_lines) == 3
    args = shlex.split(docker_lines[2])
    assert args[3] == "mahabharatha-worker-2" and "-e" in args and "ANTHROPIC_API_KEY" in args
    assert "export it in your shell first" in out
    assert KEY not in out + result.stderr and TOKEN not in out + result.stderr


def test_dry_run_json(repo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = run(repo, home, "--workers=2", "--mode", "container", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "container" and [w["name"] for w in data["workers"]] == [
        "mahabharatha-worker-0", "mahabharatha-worker-1"]
    assert KEY not in result.stdout and TOKEN not in result.stdout
    again = run(repo, home, "--workers=2", "--mode", "container", "--dry-run", "--json")
    assert again.stdout == result.stdout  # byte-identical for the same inputs


def test_env_overrides_and_capping(repo, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = run(repo, home, "--workers=8", "--mode", "container", "--dry-run",
                 env_extra={"ZERG_CONTAINER_MEMORY": "1g", "MAHABHARATHA_CONTAINER_MEMORY": "2gb"})
    assert result.returncode == 0, result.stderr
    assert "Launching Worker 4: mahabharatha-worker-4 (memory=2g, cpus=2.0)" in result.stdout
    assert "Capped 8 workers to workers.max_concurrent=5" in result.stdout


@pytest.mark.parametrize(
    ("config", "args", "fragment"),
    [
        ("resources:\n  container_memory_limit: 4x\n", (), "resources.container_memory_limit"),
        ("workers:\n  max_concurent: 2\n", (), "did you mean workers.max_concurrent"),
        (None, ("--feature", "../evil"), "--feature"),
    ],
)
def test_mistakes_are_one_line_exit_2(repo, tmp_path, config, args, fragment):
    if config is not None:
        (repo / ".mahabharatha").mkdir()
        (repo / ".mahabharatha" / "config.yaml").write_text(config)
    home = tmp_path / "home"
    home.mkdir()
    result = run(repo, home, "--workers=3", "--mode", "container", "--dry-run", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mahabharatha: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr and KEY not in result.stderr and TOKEN not in result.stderr


def test_dry_run_validates_the_task_graph(repo, tmp_path):
    # The plan carries the graph, so the dry-run refuses what the run would refuse (task ids like T/1).
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "T/1", "level": 1}]}')
    result = run(repo, tmp_path / "home", "--dry-run", "--feature", "feat")
    assert result.returncode == 2 and "T/1" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    (spec / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "T1", "level": 1}]}')
    result = run(repo, tmp_path / "home", "--dry-run", "--feature", "feat")
    assert result.returncode == 0 and "Task graph: 1 tasks in 1 levels (validated)" in result.stdout, result.stderr
