"""Workers where the engine shares no filesystem with this machine: a nested Docker engine (``DOCKER_HOST``
tcp://127.0.0.1:PORT) and a two-node Docker Swarm of nested engines.

Such an engine shows an empty directory for any host path, so these runs pass only when nothing depends on
host paths: every task's work must come back over the channel and be merged into the base branch of the
repository here. After each run the remote engine holds no container of the run and no secret on its disk.
All tests here share one xdist group: one nested engine and one Swarm per session.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from mahabharatha.edge.orchestrator import orchestrate
from mahabharatha.worker import state as S

from .test_orchestrator import AGENT, BASE, git, task, three_levels, write_graph

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("nested")]

API_KEY = "sk-ant-remote-test-5f2c9e0d7a"


def remote_plan(make_plan: Any, url: str, gateway: str, workers: int, *, mode: str = "container",
                memory: str = "256m", retry: int = 2) -> Any:
    config = (
        f"workers:\n  agent_command: {AGENT}\n  retry_attempts: {retry}\n  launcher_type: {mode}\n"
        f"resources:\n  container_memory_limit: {memory}\n  container_cpu_limit: 1.0\n"
    )
    plan = make_plan(workers, config=config, mode=mode, environ={
        "DOCKER_HOST": url, "MAHABHARATHA_CHANNEL_ADDRESS": gateway, "ANTHROPIC_API_KEY": API_KEY,
    })
    assert plan.transport == "remote" and plan.engine == url and all(not w.mounts for w in plan.workers)
    return plan


def assert_clean(host: Any, engine_container: str, engine_client: Any, repo: Path) -> None:
    """No container or service of the run is left on the remote engine, and its disk holds no secret. (A Swarm
    node's agent removes a removed service's containers a moment later: allowed a few seconds.)"""
    deadline = time.monotonic() + 20
    while engine_client.api.containers(all=True, filters={"label": f"io.mahabharatha.repo={repo}"}):
        assert time.monotonic() < deadline, engine_client.api.containers(all=True, filters={"label": f"io.mahabharatha.repo={repo}"})
        time.sleep(0.2)
    info = engine_client.info().get("Swarm") or {}
    if info.get("ControlAvailable"):
        assert engine_client.api.services(filters={"label": f"io.mahabharatha.repo={repo}"}) == []
        assert engine_client.api.secrets(filters={"label": f"io.mahabharatha.repo={repo}"}) == []
    # (-s: files that other tests' containers remove meanwhile are not an error to report; a match is a path)
    found = host.containers.get(engine_container).exec_run(["grep", "-rlFs", API_KEY, "/var/lib/docker"])
    assert found.exit_code in (1, 2) and found.output.strip() == b"", found.output.decode()[-2000:]


def mounts_watcher(client: Any, repo: Path, into: list[Any]) -> Any:
    def on_event(event: Any) -> None:
        if type(event).__name__ == "WorkerReady":
            for c in client.containers.list(filters={"label": f"io.mahabharatha.repo={repo}"}):
                into.append((c.name, [m for m in c.attrs.get("Mounts") or () if m.get("Type") == "bind"]))
    return on_event


# -- a remote Docker engine ---------------------------------------------------------------------------------


def test_three_levels_on_a_remote_engine(git_repo: Path, make_plan: Any, nested_engine: Any, docker_client: Any) -> None:
    client = nested_engine.client()
    plan = remote_plan(make_plan, nested_engine.url, nested_engine.gateway, 3)
    seen: list[Any] = []
    lines: list[str] = []
    result = orchestrate(plan, three_levels(git_repo), out=lines.append, client=client,
                         on_event=mounts_watcher(client, git_repo, seen))
    assert (result.status, result.exit_code) == ("done", 0), lines
    files = set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert files >= {"README.md", "src/a.py", "src/b.py", "docs/c.md", "src/d.py", "docs/e.md"}
    assert "task D" in git(git_repo, "show", f"{BASE}:src/a.py")
    assert seen and all(binds == [] for _, binds in seen), seen
    assert not (git_repo.parent / ".mahabharatha-worktrees").exists()
    assert API_KEY not in "\n".join(lines)
    for log in (git_repo / ".mahabharatha" / "logs" / "workers" / "feat").glob("*.log"):
        assert API_KEY not in log.read_text()
    assert_clean(docker_client, nested_engine.container_id, client, git_repo)


def test_the_demo_feature_on_a_remote_engine(tmp_path: Path, nested_engine: Any, docker_client: Any, worker_image: str,
                                             container_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mahabharatha.cli import main
    from mahabharatha.demo import create_demo_repo

    repo = create_demo_repo(tmp_path / "demo", image=worker_image, workers=2, container_prefix=container_prefix)
    monkeypatch.setenv("DOCKER_HOST", nested_engine.url)
    monkeypatch.setenv("MAHABHARATHA_CHANNEL_ADDRESS", nested_engine.gateway)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["kurukshetra", "--repo", str(repo), "--workers", "2", "--mode", "container"]) == 0
    demo_tasks = S.StateStore(str(repo / ".mahabharatha" / "state"), "demo").read()["tasks"]
    assert demo_tasks and all(t["status"] == "done" for t in demo_tasks.values()), demo_tasks
    merged = git(repo, "ls-tree", "-r", "--name-only", "mahabharatha/demo/base").splitlines()
    assert len(merged) > 4, merged
    assert_clean(docker_client, nested_engine.container_id, nested_engine.client(), repo)


def test_out_of_memory_on_a_remote_engine_is_retried(git_repo: Path, make_plan: Any, nested_engine: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [task("big", 1, create=("big.txt",), allocate_mb={"1": 400}, draft="draft.txt"),
                                   task("next", 2, ("big",), create=("n.txt",))])
    plan = remote_plan(make_plan, nested_engine.url, nested_engine.gateway, 1, memory="128m")
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append, client=nested_engine.client())
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert any("exited 137" in line for line in lines), lines
    assert S.StateStore(plan.state_dir, "feat").read()["tasks"]["big"]["attempts"] == 2
    assert {"big.txt", "n.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    # What the killed agent wrote was kept before its container (and workspace) went.
    kept = git(git_repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/feat/").splitlines()
    assert len(kept) == 1 and "draft.txt" in git(git_repo, "ls-tree", "-r", "--name-only", kept[0]), kept


def stop_and_resume(git_repo: Path, plan: Any, client: Any, url: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from mahabharatha.cli import main

    graph = write_graph(git_repo, [
        task("quick", 1, create=("q.txt",)),
        task("slow", 1, create=("s.txt",), sleep={"1": 120}, draft="draft.txt"),
        task("after", 2, ("quick", "slow"), create=("a.txt",)),
    ])
    box: dict[str, Any] = {}
    lines: list[str] = []
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(plan, graph, out=lines.append, client=client)))
    runner.start()
    store = S.StateStore(plan.state_dir, "feat")
    deadline = time.monotonic() + 180
    while True:
        data = store.read() or {"tasks": {}}
        if data["tasks"].get("quick", {}).get("status") == "done" and data["tasks"].get("slow", {}).get("status") == "claimed":
            break
        assert time.monotonic() < deadline and runner.is_alive(), lines
        time.sleep(0.2)
    monkeypatch.setenv("DOCKER_HOST", url)
    assert main(["stop", "--repo", str(git_repo), "--feature", "feat", "--timeout", "20"]) == 0
    runner.join(timeout=120)
    assert (box["result"].status, box["result"].exit_code) == ("stopped", 130), lines
    st = store.read()["tasks"]
    quick_commit = st["quick"]["commit"]
    assert st["slow"]["status"] == "pending"
    # The stopped task's uncommitted draft was in a workspace that went with its container: kept on a ref first.
    kept = git(git_repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/feat/").splitlines()
    assert len(kept) == 1 and "draft.txt" in git(git_repo, "ls-tree", "-r", "--name-only", kept[0]), (kept, lines)
    lines2: list[str] = []
    again = orchestrate(plan, graph, out=lines2.append, client=client)
    assert (again.status, again.exit_code) == ("done", 0), lines2
    st = store.read()["tasks"]
    assert st["quick"]["attempts"] == 1 and st["quick"]["commit"] == quick_commit
    assert st["slow"]["attempts"] == 2
    assert {"q.txt", "s.txt", "a.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    return lines + lines2


def test_stop_and_resume_on_a_remote_engine(git_repo: Path, make_plan: Any, nested_engine: Any, docker_client: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plan = remote_plan(make_plan, nested_engine.url, nested_engine.gateway, 2)
    stop_and_resume(git_repo, plan, nested_engine.client(), nested_engine.url, monkeypatch)
    assert_clean(docker_client, nested_engine.container_id, nested_engine.client(), git_repo)


# -- a two-node Swarm ---------------------------------------------------------------------------------------


def test_three_levels_on_a_two_node_swarm(git_repo: Path, make_plan: Any, swarm: Any, docker_client: Any) -> None:
    client = swarm.manager.client()
    plan = remote_plan(make_plan, swarm.manager.url, swarm.gateway, 2, mode="swarm")
    nodes: set[str] = set()
    seen: list[Any] = []

    def on_event(event: Any) -> None:
        if type(event).__name__ == "WorkerReady":
            for svc in client.api.services(filters={"label": f"io.mahabharatha.repo={git_repo}"}):
                nodes.update(t.get("NodeID", "") for t in client.api.tasks(filters={"service": svc["ID"]}))
            for engine in swarm.engines:  # the task containers, on each node's own engine
                mounts_watcher(engine.client(), git_repo, seen)(event)

    lines: list[str] = []
    result = orchestrate(plan, three_levels(git_repo), out=lines.append, client=client, on_event=on_event)
    assert (result.status, result.exit_code) == ("done", 0), lines
    files = set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert files >= {"README.md", "src/a.py", "src/b.py", "docs/c.md", "src/d.py", "docs/e.md"}
    assert nodes == set(swarm.node_ids.values()), (nodes, swarm.node_ids)  # workers ran on both nodes
    assert len(seen) >= 2 and all(binds == [] for _, binds in seen), seen  # no bind mount on either node
    for engine in swarm.engines:
        assert_clean(docker_client, engine.container_id, engine.client(), git_repo)


def test_out_of_memory_on_a_swarm_is_retried(git_repo: Path, make_plan: Any, swarm: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [task("big", 1, create=("big.txt",), allocate_mb={"1": 400}), task("next", 2, ("big",), create=("n.txt",))])
    plan = remote_plan(make_plan, swarm.manager.url, swarm.gateway, 1, memory="128m", mode="swarm")
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append, client=swarm.manager.client())
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert any("exited 137" in line for line in lines), lines
    assert S.StateStore(plan.state_dir, "feat").read()["tasks"]["big"]["attempts"] == 2


def test_stop_and_resume_on_a_swarm(git_repo: Path, make_plan: Any, swarm: Any, docker_client: Any,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    plan = remote_plan(make_plan, swarm.manager.url, swarm.gateway, 2, mode="swarm")
    stop_and_resume(git_repo, plan, swarm.manager.client(), swarm.manager.url, monkeypatch)
    for engine in swarm.engines:
        assert_clean(docker_client, engine.container_id, engine.client(), git_repo)


def test_a_docker_context_selects_the_remote_engine(git_repo: Path, make_plan: Any, nested_engine: Any, temp_home: Path,
                                                    docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DOCKER_HOST: the current Docker context names the engine, for the plan and for every client made
    from it (docker-py itself reads no contexts)."""
    import hashlib
    import json

    meta = temp_home / ".docker" / "contexts" / "meta" / hashlib.sha256(b"nested").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "nested", "Endpoints": {"docker": {"Host": nested_engine.url}}}))
    (temp_home / ".docker" / "config.json").write_text(json.dumps({"currentContext": "nested"}))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("HOME", str(temp_home))
    config = f"workers:\n  agent_command: {AGENT}\nresources:\n  container_memory_limit: 256m\n"
    plan = make_plan(1, config=config, environ={"MAHABHARATHA_CHANNEL_ADDRESS": nested_engine.gateway})
    assert (plan.engine, plan.engine_source, plan.transport) == (nested_engine.url, "context nested", "remote")
    graph = write_graph(git_repo, [task("A", 1, create=("a.txt",)), task("B", 2, ("A",), create=("b.txt",))])
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append)  # no client: made from the context
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert {"a.txt", "b.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())


def test_the_demo_feature_on_a_swarm(tmp_path: Path, swarm: Any, docker_client: Any, worker_image: str,
                                     container_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mahabharatha.cli import main
    from mahabharatha.demo import create_demo_repo

    repo = create_demo_repo(tmp_path / "demo", image=worker_image, workers=2, container_prefix=container_prefix)
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.url)
    monkeypatch.setenv("MAHABHARATHA_CHANNEL_ADDRESS", swarm.gateway)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["kurukshetra", "--repo", str(repo), "--workers", "2", "--mode", "swarm"]) == 0
    demo_tasks = S.StateStore(str(repo / ".mahabharatha" / "state"), "demo").read()["tasks"]
    assert demo_tasks and all(t["status"] == "done" for t in demo_tasks.values()), demo_tasks
    for engine in swarm.engines:
        assert_clean(docker_client, engine.container_id, engine.client(), repo)


def test_an_ssh_engine_and_the_channel_address_found_towards_it(git_repo: Path, make_plan: Any, nested_engine: Any,
                                                                docker_client: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``DOCKER_HOST=ssh://root@NODE``, as for a machine elsewhere: the clients go through the ssh binary (with a
    config of this test's: a wrapper on PATH adds ``-F``, since OpenSSH reads ``~/.ssh`` from the passwd entry,
    not ``$HOME``), and with no ``workers.channel_address`` the channel is this machine's address on the route
    to that host."""
    import os
    import subprocess

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = key.with_name("id_ed25519.pub").read_text().strip()
    engine = docker_client.containers.get(nested_engine.container_id)
    started = engine.exec_run(["sh", "-c",
        "mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh && echo \"$KEY\" >> /root/.ssh/authorized_keys && "
        "ssh-keygen -A >/dev/null && (pgrep -x sshd >/dev/null || /usr/sbin/sshd)"], environment={"KEY": pub})
    assert started.exit_code == 0, started.output
    config = tmp_path / "ssh_config"
    config.write_text(f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
                      "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F "{config}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ['PATH']}")
    url = f"ssh://root@{nested_engine.node_ip}"
    monkeypatch.setenv("DOCKER_HOST", url)
    config_yaml = f"workers:\n  agent_command: {AGENT}\nresources:\n  container_memory_limit: 256m\n"
    plan = make_plan(2, config=config_yaml, environ={"DOCKER_HOST": url, "ANTHROPIC_API_KEY": API_KEY})
    assert plan.transport == "remote" and plan.channel.host == nested_engine.gateway, plan.channel
    graph = write_graph(git_repo, [task("A", 1, create=("a.txt",)), task("B", 1, create=("b.txt",)),
                                   task("C", 2, ("A", "B"), create=("c.txt",))])
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append)  # every client made from DOCKER_HOST, over ssh
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert {"a.txt", "b.txt", "c.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert_clean(docker_client, nested_engine.container_id, nested_engine.client(), git_repo)


def test_build_image_builds_on_the_engine_it_targets_and_a_missing_image_names_it(
    git_repo: Path, nested_engine: Any, docker_client: Any, temp_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    import uuid

    from mahabharatha.cli import main

    from .nested import BASE_IMAGE, load_image

    tag = f"mh-remote-built:{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("DOCKER_HOST", nested_engine.url)
    monkeypatch.setenv("MAHABHARATHA_CHANNEL_ADDRESS", nested_engine.gateway)
    monkeypatch.setenv("HOME", str(temp_home))
    (git_repo / ".mahabharatha").mkdir(exist_ok=True)
    (git_repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  agent_command: {AGENT}\nresources:\n  container_image: {tag}\n  container_memory_limit: 256m\n")
    write_graph(git_repo, [task("A", 1, create=("a.txt",))])
    assert main(["kurukshetra", "--repo", str(git_repo), "--feature", "feat", "--mode", "container", "--workers", "1"]) != 0
    err = capsys.readouterr().err
    assert f"image {tag} not found on the Docker engine at {nested_engine.url}" in err and "\n" not in err.strip(), err
    load_image(docker_client, nested_engine.client(), BASE_IMAGE)
    assert main(["build-image", "--tag", tag, "--no-claude", "--base-image", BASE_IMAGE]) == 0
    nested_engine.client().images.get(tag)  # built there ...
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)  # ... not here
    assert main(["kurukshetra", "--repo", str(git_repo), "--feature", "feat", "--mode", "container", "--workers", "1"]) == 0
    nested_engine.client().images.remove(tag, force=True)
