"""The remote transport's pure parts and its TCP channel: engine detection, channel addresses, the plan of
a worker nothing is mounted into, tokens that name workers, the bootstrap fetching a runtime it can run."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.engine import engine_target, host_of, parse_channel_address
from mahabharatha.core.model import ChannelEndpoint
from mahabharatha.edge.channel import MAX_PENDING, ChannelServer, runtime_tar
from mahabharatha.errors import ConfigError
from mahabharatha.edge.dockerctx import docker_context
from mahabharatha.planning import plan
from mahabharatha.worker import bootstrap
from mahabharatha.worker import protocol as P
from mahabharatha.worker.channel import Channel, ChannelError

WORKER_DIR = Path(P.__file__).parent


# -- engines and addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("docker_host", "context", "transport", "want"), [
    (None, None, "auto", ("unix:///var/run/docker.sock", "default", "local")),
    ("unix:///run/user/1000/docker.sock", None, "auto", ("unix:///run/user/1000/docker.sock", "DOCKER_HOST", "local")),
    ("tcp://10.0.0.5:2375", None, "auto", ("tcp://10.0.0.5:2375", "DOCKER_HOST", "remote")),
    ("ssh://me@bigbox", ("ctx", "unix:///x"), "auto", ("ssh://me@bigbox", "DOCKER_HOST", "remote")),
    (None, ("bigbox", "ssh://me@bigbox:2222"), "auto", ("ssh://me@bigbox:2222", "context bigbox", "remote")),
    ("tcp://127.0.0.1:2375", None, "local", ("tcp://127.0.0.1:2375", "DOCKER_HOST", "local")),
    (None, None, "remote", ("unix:///var/run/docker.sock", "default", "remote")),
])
def test_the_engine_and_its_transport(docker_host: Any, context: Any, transport: Any, want: tuple[str, str, str]) -> None:
    t = engine_target(docker_host, context, transport)
    assert (t.host, t.source, t.transport) == want


@pytest.mark.parametrize(("url", "host"), [
    ("tcp://10.0.0.5:2375", "10.0.0.5"), ("ssh://me@bigbox:22", "bigbox"), ("ssh://bigbox", "bigbox"),
    ("tcp://[fd00::5]:2375", "fd00::5"),
])
def test_host_of_an_engine_address(url: str, host: str) -> None:
    assert host_of(url) == host


@given(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
def test_channel_addresses_round_trip(host: str, port: int) -> None:
    assert parse_channel_address(f"{host}:{port}", "x") == (host, port)
    assert parse_channel_address(host, "x") == (host, 0)


@pytest.mark.parametrize("bad", ["", ":80", "host:99999", "host:port", "a b:1", "user@host:1", "[::1"])
def test_bad_channel_addresses_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_channel_address(bad, "workers.channel_address")
    assert "HOST or HOST:PORT" in str(info.value) and "\n" not in str(info.value)


def test_thedocker_context_is_read_from_the_cli_config(tmp_path: Path) -> None:
    docker_dir = tmp_path / ".docker"
    meta = docker_dir / "contexts" / "meta" / hashlib.sha256(b"bigbox").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "bigbox", "Endpoints": {"docker": {"Host": "ssh://me@bigbox"}}}))
    (docker_dir / "config.json").write_text(json.dumps({"currentContext": "bigbox"}))
    assert docker_context({}, tmp_path) == ("bigbox", "ssh://me@bigbox")
    assert docker_context({"DOCKER_CONTEXT": "default"}, tmp_path) is None
    assert docker_context({"DOCKER_CONTEXT": "missing"}, tmp_path) is None
    (docker_dir / "config.json").write_text("{not json")
    assert docker_context({}, tmp_path) is None


# -- the plan of a remote worker ----------------------------------------------------------------------------


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


@settings(max_examples=25, deadline=None)
@given(workers=st.integers(1, 6), swarm=st.booleans(), read_only=st.booleans(), port=st.integers(0, 65535))
def test_a_remote_plan_mounts_nothing_and_names_no_host_path(tmp_path_factory: Any, workers: int, swarm: bool,
                                                            read_only: bool, port: int) -> None:
    repo = _repo(tmp_path_factory.mktemp("r"))
    env = {"DOCKER_HOST": "tcp://10.9.8.7:2375", "MAHABHARATHA_CHANNEL_ADDRESS": f"10.9.8.1:{port}",
           "ANTHROPIC_API_KEY": "sk-ant-plan-secret"}
    p = plan(repo, feature="f", workers=workers, mode="swarm" if swarm else "container", environ=env,
             home=repo / "nohome", overrides={"workers.max_concurrent": 6, "security.container_readonly": read_only})
    again = plan(repo, feature="f", workers=workers, mode="swarm" if swarm else "container", environ=env,
                 home=repo / "nohome", overrides={"workers.max_concurrent": 6, "security.container_readonly": read_only})
    assert p == again and p.plan_id == again.plan_id
    assert p.transport == "remote" and p.channel == ChannelEndpoint(kind="tcp", host="10.9.8.1", port=port)
    assert len(p.workers) == workers
    for w in p.workers:
        assert w.mounts == () and w.files == () and w.volumes == (P.WORKSPACE,)
        assert w.command == bootstrap.COMMAND
        env_text = "\n".join(f"{e.name}={e.value}" for e in w.environment)
        assert str(repo) not in env_text and "/repo/.git" not in env_text
        assert w.env_dict()[P.ENV_CHANNEL] == f"tcp://10.9.8.1:{port}"
        assert (P.ENV_SECRETS_DIR in w.env_dict()) == swarm
        assert [s.name for s in w.secret_environment] == ["ANTHROPIC_API_KEY"]
    assert "sk-ant-plan-secret" not in msgspec.json.encode(msgspec.to_builtins(p, enc_hook=repr)).decode()
    if swarm:
        assert any("no_new_privileges" in n for n in p.notices)


def test_a_loopback_channel_address_is_refused_for_a_remote_engine(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(ConfigError) as info:
        plan(repo, feature="f", mode="container", environ={"DOCKER_HOST": "tcp://127.0.0.1:2375"}, home=tmp_path)
    assert "loopback" in str(info.value) and "workers.channel_address" in str(info.value)


def test_swarm_with_the_local_transport_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(ConfigError) as info:
        plan(repo, feature="f", mode="swarm", environ={"MAHABHARATHA_TRANSPORT": "local"}, home=tmp_path)
    assert "swarm" in str(info.value)


# -- the TCP channel ----------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Any:
    seen: list[tuple[int, dict[str, Any]]] = []

    def handle(wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        seen.append((wid, message))
        return {"ok": True, "worker": wid, "_blob": b"pack-bytes"} if message["op"] == "claim" else {"ok": True, "worker": wid}

    srv = ChannelServer({}, handle, tcp=ChannelEndpoint(kind="tcp", host="127.0.0.1", port=0), workers=[0, 1],
                        runtime_dir=WORKER_DIR).start()
    srv.seen = seen  # type: ignore[attr-defined]
    yield srv
    srv.close()


def test_a_token_names_its_worker_and_replies_carry_blobs(server: Any) -> None:
    link = server.link
    for wid in (0, 1):
        ch = Channel(link.url, token=link.token(wid), pin=link.pin)
        assert ch.request("progress", line="x")["worker"] == wid
        reply = ch.request("claim")
        assert reply["_blob"] == b"pack-bytes"
        ch.close()
    assert [w for w, _ in server.seen] == [0, 0, 1, 1]


def test_a_bad_token_is_refused_and_reaches_nothing(server: Any) -> None:
    with pytest.raises(ChannelError) as info:
        Channel(server.link.url, token="not-a-token", pin=server.link.pin)
    assert "bad token" in str(info.value)
    assert server.seen == []


def test_the_channel_is_tls_and_a_worker_talks_only_to_its_runs_certificate(server: Any) -> None:
    host, port = server.link.url[len("tcp://"):].rsplit(":", 1)
    with pytest.raises(ChannelError) as info:  # another certificate than the run's: the token is never sent
        Channel(server.link.url, token=server.link.token(0), pin="0" * 64)
    assert "not this run's" in str(info.value)
    plain = socket.create_connection((host, int(port)))  # a client without TLS gets nothing and is dropped
    plain.settimeout(15)
    plain.sendall(json.dumps({"op": "auth", "token": server.link.token(0)}).encode() + b"\n")
    got = b""
    while True:  # until the server drops it (a TLS alert at most, never a reply)
        try:
            chunk = plain.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    plain.close()
    assert b"ok" not in got and len(got) < 64, got
    assert server.seen == []


def test_silent_connections_are_bounded_and_time_out(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host, port = server.link.url[len("tcp://"):].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port))) for _ in range(MAX_PENDING + 8)]
    try:
        deadline = time.monotonic() + 5
        while server.pending < MAX_PENDING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.pending <= MAX_PENDING
        extra = idle[-1]
        extra.settimeout(5)
        assert extra.recv(10) == b""  # over the bound: closed at once
    finally:
        for s in idle:
            s.close()
    # and a real worker still gets in
    ch = Channel(server.link.url, token=server.link.token(0), pin=server.link.pin)
    assert ch.request("progress", line="x")["ok"]
    ch.close()


def test_the_link_puts_the_url_and_token_into_a_spec_as_a_secret(server: Any, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    p = plan(repo, feature="f", mode="container", home=tmp_path,
             environ={"DOCKER_HOST": "tcp://10.9.8.7:2375", "MAHABHARATHA_CHANNEL_ADDRESS": "10.9.8.1"})
    bound = server.link.bind(p.workers[0])
    assert bound.env_dict()[P.ENV_CHANNEL] == server.link.url
    assert bound.env_dict()[P.ENV_CHANNEL_PIN] == server.link.pin and len(server.link.pin) == 64
    token = next(s for s in bound.secret_environment if s.name == P.ENV_CHANNEL_TOKEN)
    assert token.value.reveal() == server.link.token(0) and server.link.token(0) not in repr(bound)


def test_the_runtime_tar_is_deterministic_and_holds_the_worker_package() -> None:
    import io
    import tarfile

    data = runtime_tar(WORKER_DIR)
    assert data == runtime_tar(WORKER_DIR)
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert f"{P.RUNTIME_PACKAGE}/__main__.py" in names and not [n for n in names if "__pycache__" in n]


def test_the_bootstrap_fetches_the_runtime_and_runs_it(server: Any, tmp_path: Path) -> None:
    """The real bootstrap source, as the plan passes it, in a fresh interpreter: it authenticates, fetches
    the runtime into its directory and runs the worker (which, without its settings, says so and exits 1)."""
    lib = tmp_path / "lib"
    env = {"PATH": os.environ.get("PATH", ""), P.ENV_CHANNEL: server.link.url,
           P.ENV_CHANNEL_TOKEN: server.link.token(1), P.ENV_CHANNEL_PIN: server.link.pin,
           "MAHABHARATHA_RUNTIME_DIR": str(lib)}
    proc = subprocess.run([sys.executable, "-c", bootstrap.SOURCE], env=env, capture_output=True, text=True, timeout=60)
    assert (lib / P.RUNTIME_PACKAGE / "__main__.py").is_file()
    assert proc.returncode == 1 and "environment variable" in (proc.stdout + proc.stderr), proc
    only = subprocess.run([sys.executable, "-c", bootstrap.SOURCE], env={**env, "MAHABHARATHA_BOOTSTRAP_ONLY": "1"},
                          capture_output=True, text=True, timeout=60)
    assert only.returncode == 0, only
    bad = subprocess.run([sys.executable, "-c", bootstrap.SOURCE], env={**env, P.ENV_CHANNEL_TOKEN: "nope"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "refused" in bad.stderr
    wrong = subprocess.run([sys.executable, "-c", bootstrap.SOURCE], env={**env, P.ENV_CHANNEL_PIN: "f" * 64},
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "not this run's" in wrong.stderr


def test_swarm_service_specs_are_a_pure_view_without_credentials(tmp_path: Path) -> None:
    from mahabharatha.core.render_swarm import render_swarm, render_swarm_json, service_spec

    repo = _repo(tmp_path)
    p = plan(repo, feature="f", mode="swarm", workers=2, home=tmp_path, overrides={"workers.max_concurrent": 2}, environ={
        "DOCKER_HOST": "tcp://10.9.8.7:2375", "MAHABHARATHA_CHANNEL_ADDRESS": "10.9.8.1", "ANTHROPIC_API_KEY": "sk-ant-svc"})
    assert render_swarm_json(p) == render_swarm_json(p) and "sk-ant-svc" not in render_swarm_json(p)
    specs = render_swarm(p)
    assert [s["Name"] for s in specs] == [w.name for w in p.workers]
    task = specs[0]["TaskTemplate"]
    assert task["RestartPolicy"] == {"Condition": "none"} and task["Resources"]["Limits"]["Pids"] == 1024
    container = task["ContainerSpec"]
    assert container["Image"].startswith("<id of ") and container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"] and container["Command"] == list(bootstrap.COMMAND)
    assert [m["Type"] for m in container["Mounts"]] == ["tmpfs", "tmpfs", "volume"]
    assert container["Secrets"][0]["File"]["Name"] == P.ENV_CHANNEL_TOKEN
    # what the launcher sends: the same body, with the image id and the token's secret filled in
    filled = service_spec(p.workers[0], image="sha256:" + "a" * 64, token_secret=("sid", "sname"))
    assert filled["TaskTemplate"]["ContainerSpec"]["Image"] == "sha256:" + "a" * 64
    assert {k: v for k, v in filled.items() if k != "TaskTemplate"} == {k: v for k, v in specs[0].items() if k != "TaskTemplate"}
