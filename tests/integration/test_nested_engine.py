"""Smoke tests of the nested-engine test infrastructure (``tests/integration/nested.py``): an engine that shares
no filesystem with the host, reaches the host at ``gateway``, enforces memory limits; and a two-node swarm
that places one task per node, reports exit codes and reaches the host too."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import RestartPolicy, ServiceMode

from .nested import (
    LABEL,
    LABEL_OWNER,
    LABEL_PREFIX,
    LABEL_VALUE,
    NestedEngine,
    Swarm,
    client_script,
    reap_stale,
    shared,
    tcp_server,
)

# Order matters for time, not for results: xdist gives each worker a first chunk of consecutive tests (two each
# for this file alone under -n 2), so two engine tests come first and the swarm's next: one worker sets up the
# engine while the other sets up the swarm (each is made once per run and shared by its workers).

TERMINAL = {"complete", "failed", "rejected", "shutdown", "orphaned", "remove"}


def test_a_host_path_bind_mounted_in_the_nested_engine_is_empty(
    docker_client: Any, nested_engine: NestedEngine, worker_image: str, tmp_path: Path
) -> None:
    (tmp_path / "marker").write_text("on the host\n")
    mount = {str(tmp_path): {"bind": "/mnt/host", "mode": "ro"}}
    listing = ["ls", "-A", "/mnt/host"]
    # The control: through the host engine the bind mount shows the file, so the check below can fail.
    assert docker_client.containers.run(worker_image, listing, volumes=mount, user="0", remove=True) == b"marker\n"
    inner = nested_engine.client()
    assert inner.containers.run(worker_image, listing, volumes=mount, user="0", remove=True) == b""


def test_an_inner_container_reaches_a_host_server_at_the_gateway(
    nested_engine: NestedEngine, worker_image: str
) -> None:
    assert not nested_engine.gateway.startswith("127.")
    message = f"inner-{uuid.uuid4().hex[:8]}"
    with tcp_server(nested_engine.gateway) as server:
        out = nested_engine.client().containers.run(
            worker_image, client_script(server.host, server.port), environment={"MSG": message}, remove=True
        )
        assert out.decode().strip() == f"ok {message}"
        assert server.lines == [message]


def test_the_swarm_has_two_ready_nodes(swarm: Swarm) -> None:
    nodes = swarm.manager.client().nodes.list()
    assert {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"] for n in nodes} == {
        host: "ready" for host in swarm.hostnames
    }
    roles = {n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Role"] for n in nodes}
    assert roles == {swarm.manager.name: "manager", swarm.worker.name: "worker"}
    assert swarm.worker.client().info()["Swarm"]["LocalNodeState"] == "active"


def _wait_tasks(service: Any, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        tasks = service.tasks()
        if len(tasks) >= count and all(t["Status"]["State"] in TERMINAL for t in tasks):
            return tasks
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks not finished within {timeout:.0f} s: {[t['Status'] for t in tasks]}")
        time.sleep(0.2)


def test_a_swarm_service_runs_one_task_per_node_and_reaches_the_host(swarm: Swarm, worker_image: str) -> None:
    manager = swarm.manager.client()
    image_id = manager.images.get(worker_image).id
    assert image_id.startswith("sha256:")  # by id: the nodes have it and must not try to pull a tag
    with tcp_server(swarm.gateway) as server:
        service = manager.services.create(
            image_id,
            client_script(server.host, server.port),
            name=f"mh-svc-{uuid.uuid4().hex[:8]}",
            env=["MSG={{.Node.Hostname}}"],  # a swarm template: each task reports the node it ran on
            mode=ServiceMode("replicated", replicas=2),
            restart_policy=RestartPolicy(condition="none"),
            maxreplicas=1,
        )
        try:
            tasks = _wait_tasks(service, 2)
            assert [t["Status"]["State"] for t in tasks] == ["complete", "complete"], [t["Status"] for t in tasks]
            assert [t["Status"]["ContainerStatus"]["ExitCode"] for t in tasks] == [0, 0]
            assert {t["NodeID"] for t in tasks} == set(swarm.node_ids.values())
            assert sorted(server.wait_for(2)) == sorted(swarm.hostnames)
        finally:
            service.remove()
    try:
        manager.services.get(service.id)
    except docker.errors.NotFound:
        pass
    else:
        raise AssertionError(f"service {service.name} still exists after remove")


def test_the_memory_limit_oom_kills_with_137_in_the_nested_engine(
    nested_engine: NestedEngine, worker_image: str
) -> None:
    inner = nested_engine.client()
    container = inner.containers.run(
        worker_image,
        ["python3", "-c", "b = b'x' * (512 << 20); print('survived')"],
        mem_limit="64m",
        memswap_limit="64m",
        detach=True,
    )
    try:
        assert container.wait(timeout=60)["StatusCode"] == 137
        container.reload()
        assert container.attrs["State"]["OOMKilled"] is True
        assert b"survived" not in container.logs()
    finally:
        container.remove(force=True)


def test_reap_stale_removes_what_a_dead_test_process_left_and_nothing_else(docker_client: Any) -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    dead_pid = child.pid
    tag = uuid.uuid4().hex[:8]
    owners = {
        "dead": f"{socket.gethostname()}:{dead_pid}",
        "live": f"{socket.gethostname()}:{os.getpid()}",
        "foreign": f"another-host.invalid:{dead_pid}",  # not this host's to judge
    }
    made = []
    try:
        for kind, owner in owners.items():
            labels = {LABEL: LABEL_VALUE, LABEL_PREFIX: f"mh-nested-reap-{tag}", LABEL_OWNER: owner}
            made.append(docker_client.networks.create(f"mh-nested-reap-{tag}-{kind}", labels=labels))
            made.append(docker_client.volumes.create(f"mh-nested-reap-{tag}-{kind}", labels=labels))
        reap_stale(docker_client)
        left = {n.name for n in docker_client.networks.list(names=[f"mh-nested-reap-{tag}"])}
        left |= {v.name for v in docker_client.volumes.list(filters={"name": f"mh-nested-reap-{tag}"})}
        assert left == {f"mh-nested-reap-{tag}-{kind}" for kind in ("live", "foreign")}
    finally:
        for thing in made:
            try:
                thing.remove()
            except docker.errors.NotFound:
                pass


def test_shared_is_made_once_per_run_and_removed_by_its_last_live_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    events: list[tuple[str, str]] = []

    def use() -> Any:
        return shared(
            "thing",
            lambda prefix: events.append(("create", prefix)) or prefix,
            lambda prefix: events.append(("attach", prefix)) or prefix,
            lambda prefix: events.append(("remove", prefix)),
        )

    other = subprocess.Popen(["sleep", "60"])  # stands in for another xdist worker of the run
    try:
        with use() as first:
            (state,) = tmp_path.glob("mahabharatha-nested-shared-thing-*.users")
            state.write_text(f"{state.read_text()} {other.pid}")  # the other worker came in too
        assert events == [("create", first)]  # the other one still runs: kept for it
        assert state.read_text().split() == [first, str(other.pid)]
        with use() as again:  # a worker coming in later attaches
            assert again == first
        assert events == [("create", first), ("attach", first)]
    finally:
        other.kill()
        other.wait()
    with use() as replacement:  # only dead users left (a crashed worker): what they used is replaced
        assert replacement != first
    assert events[2:] == [("remove", first), ("create", replacement), ("remove", replacement)]
    assert not state.exists()
