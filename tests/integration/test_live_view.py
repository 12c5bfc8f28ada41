"""The live view in a real terminal (tmux), against the real engine: ``kurukshetra`` shows the level bars, the
workers' containers with their memory against the limit and the agent's latest line, and the events; then
``status --watch`` replays the finished run from its journal. Piped (not a terminal), the plain lines stay."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]


def _graph() -> dict[str, Any]:
    slow = {"sleep": 4}
    return {
        "feature": "feat",
        "tasks": [
            {"id": "A", "level": 1, "files": {"create": ["a.txt"]}, "scripted": slow},
            {"id": "B", "level": 1, "files": {"create": ["b.txt"]}, "scripted": slow},
            {"id": "C", "level": 2, "dependencies": ["A"], "files": {"create": ["c.txt"]}},
        ],
    }


def _tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing under CI (.ci/run installs it)")
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    return tmux


def _capture(tmux: str, sock: str, target: str) -> str:
    return subprocess.run([tmux, "-S", sock, "capture-pane", "-p", "-t", target], capture_output=True, text=True).stdout


def _wait_screen(tmux: str, sock: str, target: str, want: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _capture(tmux, sock, target)
        if all(w in screen for w in want):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"never saw {want} on the screen:\n{screen}")


def test_kurukshetra_draws_the_live_view_in_a_terminal_and_status_watch_replays_it(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any, tmp_path: Path,
) -> None:
    tmux = _tmux()
    spec = git_repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text(json.dumps(_graph()))
    (git_repo / ".gsd" / ".current-feature").write_text("feat\n")
    (git_repo / ".mahabharatha").mkdir(exist_ok=True)
    (git_repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  max_concurrent: 2\n  launcher_type: container\n"
        f"  container_prefix: {container_prefix}\n  agent_command: python3 -m mahabharatha_worker.scripted_agent\n"
        f"resources:\n  container_image: {worker_image}\n  container_memory_limit: 256m\n  container_cpu_limit: 0.5\n"
    )
    sock = str(tmp_path / "tmux.sock")
    env = {"PYTHONPATH": str(ROOT), "HOME": str(temp_home), "TERM": "xterm-256color"}
    for key in ("DOCKER_HOST", "PATH", "TMPDIR"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    done = tmp_path / "rc"
    cmd = (f"cd {shlex.quote(str(git_repo))} && env -i {exports} {shlex.quote(sys.executable)} -m mahabharatha "
           f"kurukshetra --workers 2; echo $? > {shlex.quote(str(done))}; sleep 600")
    subprocess.run([tmux, "-S", sock, "new-session", "-d", "-s", "live", "-x", "170", "-y", "45", cmd], check=True)
    try:
        running = _wait_screen(tmux, sock, "live", ["level 1", "level 2", "2 running", "/256 ", "(attempt 1)", "events"], 90)
        row = next(line for line in running.splitlines() if "/256 " in line)
        # a worker's container: running its task, CPU and memory against the 256m limit
        assert "running" in row and (" A " in row or " B " in row) and "%" in row, running
        assert "0 done, 0 failed, 2 running, 0 pending" in running, running
        # "(attempt 1)" above: the latest line of a worker's log ("[worker N] task A (attempt 1): ...")
        final = _wait_screen(tmux, sock, "live", ["Run done in"], 90)
        assert "2 done, 0 failed, 0 running, 0 pending" in final and "1 done, 0 failed, 0 running, 0 pending" in final
        assert "[worker 0] run done; exiting" in final  # each worker's latest log line
        assert "level 2 finished (1 done)" in final, final
        deadline = time.monotonic() + 30
        while not done.exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert done.read_text().strip() == "0"

        watch = (f"cd {shlex.quote(str(git_repo))} && env -i {exports} {shlex.quote(sys.executable)} -m mahabharatha "
                 f"status --watch; echo WATCH-ENDED; sleep 600")
        subprocess.run([tmux, "-S", sock, "new-window", "-t", "live", "-n", "watch", watch], check=True)
        replay = _wait_screen(tmux, sock, "live:watch", ["WATCH-ENDED"], 30)
        assert "mahabharatha feat  done" in replay and "1 done, 0 failed, 0 running, 0 pending" in replay, replay
    finally:
        subprocess.run([tmux, "-S", sock, "kill-server"], capture_output=True)

    # Piped: the plain lines, no escape codes.
    piped = subprocess.run(
        [sys.executable, "-m", "mahabharatha", "status", "--watch"], cwd=git_repo, env=env, capture_output=True, text=True, timeout=60,
    )
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout
    assert "level 1 finished (2 done)" in piped.stdout and piped.stdout.splitlines()[0].startswith("[")
