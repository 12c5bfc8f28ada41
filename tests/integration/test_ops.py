"""``mahabharatha status`` while worker containers run: the engine's view (state, CPU, memory) beside the tasks."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.cli import main
from mahabharatha.core.graph import load_graph
from mahabharatha.edge.executor import stop_workers
from mahabharatha.edge.orchestrator import orchestrate
from mahabharatha.worker import state as S

pytestmark = pytest.mark.docker

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def test_status_shows_running_containers_with_cpu_and_memory(
    git_repo: Path, make_plan: Any, docker_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_dir = git_repo / ".gsd" / "specs" / "feat"
    spec_dir.mkdir(parents=True)
    graph_file = spec_dir / "task-graph.json"
    busy = {"id": "busy", "title": "a slow task", "level": 1, "dependencies": [],
            "files": {"create": ["b.txt"], "modify": [], "read": []}, "scripted": {"sleep": {"1": 120}}}
    graph_file.write_text(json.dumps({"feature": "feat", "tasks": [busy]}))
    graph = load_graph(str(graph_file), graph_file.read_text())
    plan = make_plan(1, config=f"workers:\n  agent_command: {AGENT}\nresources:\n  container_memory_limit: 256m\n")
    lines: list[str] = []
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(plan, graph, out=lines.append, client=docker_client)))
    runner.start()
    try:
        store = S.StateStore(plan.state_dir, "feat")
        deadline = time.monotonic() + 120
        while ((store.read() or {}).get("tasks", {}).get("busy") or {}).get("status") != S.CLAIMED:
            assert time.monotonic() < deadline and runner.is_alive(), lines
            time.sleep(0.1)
        name = plan.workers[0].name

        assert main(["status", "--repo", str(git_repo), "--feature", "feat", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["state"]["tasks"]["busy"]["status"] == "claimed"
        [row] = report["containers"]
        assert (row["name"], row["worker"], row["state"]) == (name, 0, "running")
        assert row["memory_limit_bytes"] == 256 * 2**20  # the plan's limit, as the engine enforces it
        assert 0 < row["memory_bytes"] < row["memory_limit_bytes"]
        assert isinstance(row["cpu_percent"], float) and row["cpu_percent"] >= 0

        assert main(["status", "--repo", str(git_repo), "--feature", "feat"]) == 0
        out = capsys.readouterr().out
        assert "busy: claimed (worker 0)" in out
        container_line = next(line for line in out.splitlines() if name in line)
        assert container_line.startswith(f"  {name} (worker 0): Up "), out
        assert "% , mem " not in container_line and ", cpu " in container_line and "/256 MiB" in container_line, out
    finally:
        stop_workers(docker_client, plan.repo, plan.feature, timeout=10)
        runner.join(timeout=60)
    assert box["result"].status == "stopped", lines
