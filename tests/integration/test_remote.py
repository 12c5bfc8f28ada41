"""The remote transport end to end: workers that share no filesystem with this machine.

Here the local engine runs them with ``workers.transport: remote`` (nothing mounted, the channel over TCP
at the engine bridge's gateway); the nested-engine and Swarm tests run the same flows where host paths
do not exist at all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.orchestrator import orchestrate

from .test_orchestrator import AGENT, BASE, git, task, write_graph

pytestmark = pytest.mark.docker


def bridge_gateway(client: Any) -> str:
    """This machine's address on the engine's default bridge (what its containers reach it at)."""
    import ipaddress

    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


def remote_config(memory: str = "256m", retry: int = 2) -> str:
    return (
        f"workers:\n  agent_command: {AGENT}\n  retry_attempts: {retry}\n  transport: remote\n"
        f"resources:\n  container_memory_limit: {memory}\n  container_cpu_limit: 1.0\n"
    )


def test_three_levels_over_the_remote_transport_on_the_local_engine(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [
        task("A", 1, create=("src/a.py",), verify="test -f src/a.py"),
        task("B", 1, create=("src/b.py",)),
        task("D", 2, ("A", "B"), create=("src/d.py",), modify=("src/a.py",)),
        task("F", 3, ("D",), modify=("README.md",), verify="grep -q 'task F' README.md"),
    ])
    plan = make_plan(2, config=remote_config(), environ={"MAHABHARATHA_CHANNEL_ADDRESS": bridge_gateway(docker_client)})
    assert plan.transport == "remote" and all(not w.mounts for w in plan.workers)
    mounts: list[Any] = []

    def on_event(event: Any) -> None:
        if type(event).__name__ == "WorkerReady":
            for c in docker_client.containers.list(filters={"label": f"io.mahabharatha.repo={git_repo}"}):
                mounts.extend(m for m in c.attrs.get("Mounts") or () if m.get("Type") == "bind")

    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append, client=docker_client, on_event=on_event)
    assert (result.status, result.exit_code) == ("done", 0), lines
    files = set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert {"src/a.py", "src/b.py", "src/d.py", "README.md"} <= files
    assert "task D" in git(git_repo, "show", f"{BASE}:src/a.py")
    assert mounts == []
    # No workspace or private git directory on this machine: the workers' git lived in their containers.
    assert not (git_repo.parent / ".mahabharatha-worktrees").exists()
    assert not (git_repo / ".mahabharatha" / "runtime").exists()
