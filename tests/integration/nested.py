"""Nested Docker engines for end-to-end tests: an engine that shares no filesystem with the host, and a
two-node Docker Swarm made of two of them.

Privileged containers cannot start on these machines, but a Docker engine inside an unprivileged container
with broad capabilities runs fine (see DESIGN.md, "nested Docker engine"). Each nested engine is a container
of ``mahabharatha-nested-engine:test`` (the offline base ``mahabharatha-base:trixie`` plus Debian's
``docker.io``) running ``dockerd`` on TCP, its API published on ``127.0.0.1:<ephemeral port>`` of the host,
its ``/var/lib/docker`` on a volume of its own, sitting on a user-defined bridge network of its own.

- ``nested_image(host)``: build (once, under a file lock so parallel xdist workers build it once; again
  when this file's Dockerfile changes) and return the image tag.
- ``start_engine(host, name, network)`` -> ``NestedEngine`` once its API answers; ``remove_engine(host,
  engine)`` removes it, its volume and the cgroups it made.
- ``load_image(src, dst, tag)``: copy an image between engines through the API (skipped when ``dst`` already
  has the same image id); ``save_image``/``load_saved`` save once (in memory) to load into several engines.
- ``start_swarm(host, prefix)`` -> ``Swarm``: two engines on one network, a manager and a worker, both Ready;
  ``remove_swarm(host, swarm)``.
- ``shared_engine(host, image)`` / ``shared_swarm(host, image)``: context managers giving an engine / a swarm
  with ``image`` loaded, made once per test run and shared by its xdist workers (``shared``: a reference
  count under a file lock; the last worker to leave removes it). The fixtures in conftest.py use them.
- ``remove_all(host, prefix)``: remove every container, network and volume made here under ``prefix``;
  ``reap_stale(host)``: the same for whatever a dead test run (same host name, pid gone) left behind.
- ``tcp_server(address)``: a tiny TCP server on the host for "can an inner container reach the host" checks.

Facts worth knowing (verified on a cgroup v1 host with Docker 20.10 running Debian trixie's docker.io 26.1):
- ``gateway`` is the host's own address on the engine's network (the bridge's gateway). An inner container's
  traffic leaves through the nested engine's NAT (its own iptables, nf_tables backend, in the engine
  container's network namespace) to that address, which is the host: a server the test binds there is
  reachable from inside. Nothing else on the host needs opening (the host's INPUT policy is ACCEPT here).
- ``--cgroupns host`` + the host's ``/sys/fs/cgroup`` mounted read-write: the nested engine manages cgroups in
  the host's hierarchy, so inner containers are NOT inside the engine container's cgroup (a limit on the
  engine container would not bind them). ``--cgroup-parent /NAME`` puts them under ``/NAME/<id>`` instead of
  the host engine's own ``/docker/<id>``; those directories outlive the engine container unless removed,
  which ``remove_engine`` does (empty ones only, from inside the engine, so no host root is needed).
- The Docker API has no ``--security-opt systempaths=unconfined``: the CLI turns it into empty
  ``MaskedPaths``/``ReadonlyPaths`` (so the engine can write ``/proc/sys``), which is what is sent here.
- ``docker-py``'s ``Image.save()`` saves by id (no tag); ``APIClient.get_image(tag)`` keeps the tag.
- Swarm: the nodes talk on the engines' own network (2377 manager, 7946 gossip, 4789 VXLAN), nothing is
  published to the host. Tasks of a service without networks sit on the node's default bridge and reach the
  host like any inner container. ``ip_vs`` is not loaded on these hosts: VIP endpoints on overlays do not
  route (use ``EndpointSpec(mode="dnsrr")``). Reference images by id so nodes do not try to pull.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

NESTED_IMAGE = "mahabharatha-nested-engine:test"
BASE_IMAGE = "mahabharatha-base:trixie"
LABEL = "io.mahabharatha.test"  # = "nested" on everything made here
LABEL_VALUE = "nested"
LABEL_PREFIX = "io.mahabharatha.test.prefix"  # the prefix remove_all(prefix) looks for
LABEL_OWNER = "io.mahabharatha.test.owner"  # "<host name>:<pid>" of the test run that made it (see _owner)
LABEL_DOCKERFILE = "io.mahabharatha.test.dockerfile"  # sha256 of DOCKERFILE + the base image id
API_PORT = 2375
SWARM_PORT = 2377
START_TIMEOUT = 60.0
POLL = 0.1

DOCKERFILE = f"""\
FROM {BASE_IMAGE}
# An imported base has no PATH of its own (build_offline_base.sh sets one; other bases may not).
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# docker-cli and openssh-server: the engine can also be reached as DOCKER_HOST=ssh://root@NODE (the docker CLI
# on the far side runs `docker system dial-stdio`), as a real remote machine is.
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io docker-cli iptables \\
      openssh-server >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
"""


class NestedUnavailable(RuntimeError):
    """A nested engine cannot be had here (no base image, the build failed, the engine never answered)."""


def _owner() -> str:
    """``<host name>:<pid>`` of the process whose death makes what is made here stale: this process, or
    under pytest-xdist the controller (a worker's parent), since workers of one run share engines."""
    pid = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    return f"{socket.gethostname()}:{pid}"


def _labels(prefix: str) -> dict[str, str]:
    return {LABEL: LABEL_VALUE, LABEL_PREFIX: prefix, LABEL_OWNER: _owner()}


# --- the image ---------------------------------------------------------------------------------------------


def _image_digest(host: docker.DockerClient) -> str:
    try:
        base_id = host.images.get(BASE_IMAGE).id
    except docker.errors.ImageNotFound as exc:
        raise NestedUnavailable(f"the base image {BASE_IMAGE} is missing (scripts/build_offline_base.sh)") from exc
    return hashlib.sha256(f"{DOCKERFILE}\n{base_id}".encode()).hexdigest()


def _current(host: docker.DockerClient, digest: str) -> bool:
    try:
        return host.images.get(NESTED_IMAGE).labels.get(LABEL_DOCKERFILE) == digest
    except docker.errors.ImageNotFound:
        return False


def nested_image(host: docker.DockerClient) -> str:
    """The nested engine's image tag, built on ``host`` unless it exists from this very Dockerfile and base."""
    digest = _image_digest(host)
    if _current(host, digest):
        return NESTED_IMAGE
    lock_path = Path(tempfile.gettempdir()) / "mahabharatha-nested-image.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker builds, the others wait and reuse
        if not _current(host, digest):
            try:
                host.images.build(
                    fileobj=io.BytesIO(DOCKERFILE.encode()),
                    tag=NESTED_IMAGE,
                    labels={LABEL: LABEL_VALUE, LABEL_DOCKERFILE: digest},
                    rm=True,
                    forcerm=True,
                    pull=False,
                )
            except docker.errors.BuildError as exc:
                tail = "".join(str(row.get("stream", row.get("error", ""))) for row in exc.build_log)[-800:]
                raise NestedUnavailable(f"building {NESTED_IMAGE} failed: {exc.msg}\n{tail}") from exc
    return NESTED_IMAGE


# --- one engine --------------------------------------------------------------------------------------------


@dataclass
class NestedEngine:
    """A running nested engine. ``url`` is its API on the host's loopback; ``gateway`` is the host's address on
    ``network``, reachable from containers inside the engine; ``node_ip`` is the engine container's address
    there (what other engines on the network, e.g. swarm nodes, use)."""

    name: str
    container_id: str
    url: str
    network: str
    gateway: str
    node_ip: str
    volume: str
    prefix: str
    _client: docker.DockerClient | None = field(default=None, repr=False, compare=False)

    def client(self) -> docker.DockerClient:
        """A client for the engine (one per NestedEngine, made on first use; ``close`` closes it)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=120, max_pool_size=8)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def ensure_network(host: docker.DockerClient, network: str, prefix: str) -> Any:
    """The user-defined bridge network ``network``, created (labelled) when missing."""
    try:
        return host.networks.get(network)
    except docker.errors.NotFound:
        return host.networks.create(network, driver="bridge", labels=_labels(prefix))


def _create_engine(host: docker.DockerClient, name: str, network: str, prefix: str) -> str:
    """Create and start the engine container (without waiting for its API); return the container id."""
    image = nested_image(host)
    ensure_network(host, network, prefix)
    labels = _labels(prefix)
    volume = f"{name}-var-lib-docker"
    with contextlib.suppress(docker.errors.NotFound):
        host.volumes.get(volume)
        raise NestedUnavailable(f"a volume {volume} exists already: not reusing what another engine wrote")
    # Named and labelled (an anonymous one cannot carry labels), so remove_all finds it even when orphaned.
    host.volumes.create(volume, labels=labels)
    try:
        return _create_container(host, image, name, network, volume, labels)
    except BaseException:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            host.volumes.get(volume).remove(force=True)
        raise


def _create_container(
    host: docker.DockerClient, image: str, name: str, network: str, volume: str, labels: dict[str, str]
) -> str:
    host_config = host.api.create_host_config(
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],  # the host engine itself lacks it: asking for it fails to start
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        cgroupns="host",
        binds={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            volume: {"bind": "/var/lib/docker", "mode": "rw"},  # not tmpfs: tmpfs is noexec
        },
        port_bindings={API_PORT: ("127.0.0.1", None)},  # an ephemeral port on the host's loopback only
        network_mode=network,
    )
    # `--security-opt systempaths=unconfined` is a CLI option: the API takes it as empty path lists.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    created = host.api.create_container(
        image,
        [
            "dockerd",
            "--host", f"tcp://0.0.0.0:{API_PORT}",
            "--host", "unix:///var/run/docker.sock",  # for `docker exec NAME docker ...` when debugging
            "--tls=false",
            "--cgroup-parent", f"/{name}",
        ],
        name=name,
        hostname=name,  # the swarm node's hostname
        labels=labels,
        ports=[API_PORT],
        host_config=host_config,
        networking_config=host.api.create_networking_config({network: host.api.create_endpoint_config()}),
    )
    try:
        host.api.start(created["Id"])
    except BaseException:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            host.api.remove_container(created["Id"], force=True, v=True)
        raise
    return created["Id"]


def _wait_engine(host: docker.DockerClient, container_id: str, timeout: float = START_TIMEOUT) -> NestedEngine:
    """Poll until the engine in ``container_id`` answers ``ping``; its NestedEngine."""
    deadline = time.monotonic() + timeout
    while True:
        attrs = host.api.inspect_container(container_id)
        if not attrs["State"]["Running"]:
            logs = host.api.logs(container_id, tail=30).decode(errors="replace")
            raise NestedUnavailable(f"nested engine {attrs['Name'].lstrip('/')} exited:\n{logs}")
        bound = (attrs["NetworkSettings"]["Ports"] or {}).get(f"{API_PORT}/tcp")
        if bound:
            break
        if time.monotonic() > deadline:
            raise NestedUnavailable(f"nested engine {attrs['Name']} has no published API port")
        time.sleep(POLL)
    labels = attrs["Config"]["Labels"]
    ((network, endpoint),) = attrs["NetworkSettings"]["Networks"].items()
    volume = next(m["Name"] for m in attrs["Mounts"] if m["Destination"] == "/var/lib/docker")
    engine = NestedEngine(
        name=attrs["Name"].lstrip("/"),
        container_id=container_id,
        url=f"tcp://127.0.0.1:{bound[0]['HostPort']}",
        network=network,
        gateway=endpoint["Gateway"],
        node_ip=endpoint["IPAddress"],
        volume=volume,
        prefix=labels.get(LABEL_PREFIX, ""),
    )
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = docker.DockerClient(base_url=engine.url, timeout=5)  # asks the version: fails until up
            try:
                client.ping()
            finally:
                client.close()
            return engine
        except (docker.errors.DockerException, OSError) as exc:
            last = exc
            if not host.api.inspect_container(container_id)["State"]["Running"]:
                break
            time.sleep(POLL)
    logs = host.api.logs(container_id, tail=30).decode(errors="replace")
    raise NestedUnavailable(f"nested engine {engine.name} did not answer within {timeout:.0f} s ({last}):\n{logs}")


def start_engine(
    host: docker.DockerClient, name: str, network: str, *, prefix: str | None = None, timeout: float = START_TIMEOUT
) -> NestedEngine:
    """Start a nested engine ``name`` on the user-defined ``network`` (created when missing) and return it
    once its API answers. Everything made is labelled with ``prefix`` (default: ``name``). On failure what
    was made is removed again."""
    prefix = prefix or name
    container_id = _create_engine(host, name, network, prefix)
    try:
        return _wait_engine(host, container_id, timeout)
    except BaseException:
        _remove_container(host, container_id)
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            host.volumes.get(f"{name}-var-lib-docker").remove(force=True)
        raise


def _cgroup_cleanup_script(name: str) -> str:
    """Remove the engine's empty cgroup directories under every hierarchy (deepest first); print any left."""
    find = f"find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name '{name}'"
    return f'{find} | while read -r d; do find "$d" -depth -type d -exec rmdir {{}} + 2>/dev/null; done; {find}'


def _empty_engine(engine_client: docker.DockerClient) -> None:
    """Remove what runs inside an engine: services first (so swarm does not replace tasks), then containers."""
    with contextlib.suppress(docker.errors.DockerException, OSError):
        if engine_client.info().get("Swarm", {}).get("ControlAvailable"):
            for service in engine_client.services.list():
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
    with contextlib.suppress(docker.errors.DockerException, OSError):
        for row in engine_client.api.containers(all=True):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                engine_client.api.remove_container(row["Id"], force=True, v=True)


def _remove_container(host: docker.DockerClient, name_or_id: str) -> None:
    """Remove one engine container and its cgroup directories in the host's hierarchy: a running engine is
    emptied through its API first (its inner containers' cgroups go with them), then its own empty
    ``/NAME`` directories are removed from inside it; for an engine that no longer runs, a throwaway
    container with the same cgroup mount does that after it is gone (no host root needed either way)."""
    try:
        attrs = host.api.inspect_container(name_or_id)
    except docker.errors.NotFound:
        return
    name = attrs["Name"].lstrip("/")
    cleaned = False
    if attrs["State"]["Running"]:
        bound = (attrs["NetworkSettings"]["Ports"] or {}).get(f"{API_PORT}/tcp")
        if bound:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                inner = docker.DockerClient(base_url=f"tcp://127.0.0.1:{bound[0]['HostPort']}", timeout=30)
                try:
                    _empty_engine(inner)
                finally:
                    inner.close()
        with contextlib.suppress(docker.errors.APIError):
            result = host.containers.get(attrs["Id"]).exec_run(["sh", "-c", _cgroup_cleanup_script(name)])
            cleaned = result.exit_code == 0 and not result.output.strip()  # it prints what is left
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        host.api.remove_container(attrs["Id"], force=True, v=True)
    if not cleaned:
        with contextlib.suppress(docker.errors.DockerException):
            host.containers.run(
                attrs["Config"]["Image"],
                ["sh", "-c", _cgroup_cleanup_script(name)],
                remove=True,
                network_mode="none",
                labels=attrs["Config"]["Labels"],
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            )


def remove_engine(host: docker.DockerClient, engine: NestedEngine) -> None:
    """Remove the engine container, what ran inside it, its cgroups and its volume (not its network)."""
    engine.close()
    _remove_container(host, engine.container_id)
    with contextlib.suppress(docker.errors.NotFound):
        host.volumes.get(engine.volume).remove(force=True)


# --- images ------------------------------------------------------------------------------------------------


def load_image(src: docker.DockerClient, dst: docker.DockerClient, tag: str) -> str:
    """Copy ``tag`` from ``src`` to ``dst`` (streamed, ``docker save | docker load`` through the API) unless
    ``dst`` already has the same image id; return the id."""
    image_id = src.images.get(tag).id
    if _has(dst, tag, image_id):
        return image_id
    dst.images.load(src.api.get_image(tag, chunk_size=1 << 20))  # by name: Image.save() would drop the tag
    return _check_loaded(dst, tag, image_id)


@dataclass(frozen=True)
class SavedImage:
    """An image saved once (``docker save`` in memory) to load into several engines."""

    tag: str
    id: str
    data: bytes = field(repr=False)


def save_image(src: docker.DockerClient, tag: str) -> SavedImage:
    image_id = src.images.get(tag).id
    return SavedImage(tag=tag, id=image_id, data=b"".join(src.api.get_image(tag, chunk_size=1 << 20)))


def load_saved(dst: docker.DockerClient, saved: SavedImage) -> str:
    """Load ``saved`` into ``dst`` unless it already has the same image id; return the id."""
    if not _has(dst, saved.tag, saved.id):
        dst.images.load(saved.data)
        _check_loaded(dst, saved.tag, saved.id)
    return saved.id


def _has(dst: docker.DockerClient, tag: str, image_id: str) -> bool:
    try:
        return dst.images.get(tag).id == image_id
    except docker.errors.ImageNotFound:
        return False


def _check_loaded(dst: docker.DockerClient, tag: str, image_id: str) -> str:
    loaded = dst.images.get(tag).id
    if loaded != image_id:
        raise NestedUnavailable(f"loading {tag} gave image {loaded}, expected {image_id}")
    return loaded


# --- a swarm -----------------------------------------------------------------------------------------------


@dataclass
class Swarm:
    """Two nested engines on one network forming a swarm: ``manager`` (also runs tasks) and ``worker``.
    ``node_ids`` maps each node's hostname (its engine's name) to its swarm node id; ``gateway`` is the host's
    address on the swarm's network."""

    manager: NestedEngine
    worker: NestedEngine
    network: str
    node_ids: dict[str, str]

    @property
    def gateway(self) -> str:
        return self.manager.gateway

    @property
    def engines(self) -> tuple[NestedEngine, NestedEngine]:
        return (self.manager, self.worker)

    @property
    def hostnames(self) -> tuple[str, str]:
        return (self.manager.name, self.worker.name)


def _wait_ready(manager: docker.DockerClient, count: int, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = manager.nodes.list()
        ready = {
            n.attrs["Description"]["Hostname"]: n.id
            for n in nodes
            if n.attrs["Status"]["State"] == "ready" and n.attrs["Spec"].get("Availability") == "active"
        }
        if len(ready) >= count:
            return ready
        if time.monotonic() > deadline:
            states = {n.attrs["Description"]["Hostname"]: n.attrs["Status"] for n in nodes}
            raise NestedUnavailable(f"swarm nodes not Ready within {timeout:.0f} s: {states}")
        time.sleep(POLL * 2)


def start_swarm(host: docker.DockerClient, prefix: str, *, timeout: float = START_TIMEOUT) -> Swarm:
    """Two nested engines ``<prefix>-manager`` and ``<prefix>-worker`` on the network ``<prefix>-net``: the
    manager inits a swarm advertising its address there, the worker joins with the worker token; returns once
    the manager lists both nodes Ready. On failure everything made under ``prefix`` is removed again."""
    network = f"{prefix}-net"
    try:
        ensure_network(host, network, prefix)
        ids = [_create_engine(host, f"{prefix}-{role}", network, prefix) for role in ("manager", "worker")]
        manager, worker = (_wait_engine(host, cid, timeout) for cid in ids)
        mgr = manager.client()
        mgr.swarm.init(
            advertise_addr=manager.node_ip,
            listen_addr=f"0.0.0.0:{SWARM_PORT}",
            # The default pool is 10.0.0.0/8, which a host's own network may use; keep overlays out of the way.
            default_addr_pool=["10.231.0.0/16"],
            subnet_size=24,
        )
        mgr.swarm.reload()
        worker.client().swarm.join(
            remote_addrs=[f"{manager.node_ip}:{SWARM_PORT}"],
            join_token=mgr.swarm.attrs["JoinTokens"]["Worker"],
            listen_addr=f"0.0.0.0:{SWARM_PORT}",
            advertise_addr=worker.node_ip,
        )
        node_ids = _wait_ready(mgr, 2, timeout)
        return Swarm(manager=manager, worker=worker, network=network, node_ids=node_ids)
    except BaseException:
        remove_all(host, prefix)
        raise


def remove_swarm(host: docker.DockerClient, swarm: Swarm) -> None:
    """Remove both engines (services first, on the manager), their volumes and the swarm's network."""
    with contextlib.suppress(docker.errors.DockerException, OSError):
        _empty_engine(swarm.manager.client())
    for engine in (swarm.worker, swarm.manager):
        remove_engine(host, engine)
    with contextlib.suppress(docker.errors.NotFound):
        host.networks.get(swarm.network).remove()


# --- cleanup -----------------------------------------------------------------------------------------------


def _remove_labelled(
    host: docker.DockerClient, filters: dict[str, Any], keep: Callable[[dict[str, str]], bool]
) -> None:
    doomed = [row["Id"] for row in host.api.containers(all=True, filters=filters) if not keep(row.get("Labels") or {})]
    if doomed:
        with ThreadPoolExecutor(min(len(doomed), 4)) as pool:  # engines go in parallel (a swarm's two nodes)
            list(pool.map(lambda container_id: _remove_container(host, container_id), doomed))
    for net in host.networks.list(filters=filters):
        if not keep(net.attrs.get("Labels") or {}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                net.remove()
    for volume in host.volumes.list(filters=filters):
        if not keep(volume.attrs.get("Labels") or {}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                volume.remove(force=True)


def remove_all(host: docker.DockerClient, prefix: str) -> None:
    """Remove every container (with what ran inside), network and volume made here under ``prefix``."""
    _remove_labelled(host, {"label": [f"{LABEL}={LABEL_VALUE}", f"{LABEL_PREFIX}={prefix}"]}, lambda _: False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _alive(owner: str) -> bool:
    hostname, _, pid = owner.rpartition(":")
    if hostname != socket.gethostname() or not pid.isdigit():
        return True  # not ours to judge
    return _pid_alive(int(pid))


def reap_stale(host: docker.DockerClient) -> None:
    """Remove what test processes of this host that no longer run left behind (a crash, a SIGKILL)."""
    _remove_labelled(host, {"label": f"{LABEL}={LABEL_VALUE}"}, lambda labels: _alive(labels.get(LABEL_OWNER, "")))


# --- one engine (one swarm) per test run, shared by its xdist workers ---------------------------------------

T = TypeVar("T")


def new_prefix() -> str:
    return f"mh-nested-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_users(path: Path) -> tuple[str | None, list[int]]:
    try:
        prefix, *users = path.read_text().split()
    except (FileNotFoundError, ValueError):
        return None, []
    return prefix, [int(u) for u in users if u.isdigit()]


@contextlib.contextmanager
def shared(
    kind: str, create: Callable[[str], T], attach: Callable[[str], T], remove: Callable[[str], None]
) -> Iterator[T]:
    """One ``kind`` of resource for all xdist workers of a test run that ask for it at the same time.

    ``create(prefix)`` makes it (labelled with ``prefix``), ``attach(prefix)`` finds what another worker made,
    ``remove(prefix)`` removes it. A state file (``<prefix> <pid>...``, per run and kind, in the temp dir)
    counts the workers using it under a file lock; the last one to leave removes it, and a worker that
    finds only dead users there (a crashed worker) replaces it. Outside xdist it is simply made and removed.
    A process holds each kind once (a session fixture), not nested.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        prefix = new_prefix()
        try:
            yield create(prefix)
        finally:
            remove(prefix)
        return
    tmp = Path(tempfile.gettempdir())
    lock = tmp / f"mahabharatha-nested-shared-{kind}.lock"  # one per kind, never unlinked (no lock races)
    state = tmp / f"mahabharatha-nested-shared-{kind}-{run}.users"
    me = os.getpid()
    with _locked(lock):
        prefix, users = _read_users(state)
        users = [pid for pid in users if pid != me and _pid_alive(pid)]
        value: T | None = None
        if prefix and users:
            try:
                value = attach(prefix)
            except NestedUnavailable:
                users = []  # broken: replace it (its other users will fail on their own)
        if value is None:
            if prefix:
                remove(prefix)
            prefix = new_prefix()
            state.write_text(prefix)  # before creating, so a crash half-way is still found and removed
            try:
                value = create(prefix)
            except BaseException:
                remove(prefix)
                state.unlink(missing_ok=True)
                raise
            users = []
        state.write_text(" ".join([prefix, *map(str, [*users, me])]))
    try:
        yield value
    finally:
        with _locked(lock):
            current, users = _read_users(state)
            users = [pid for pid in users if pid != me and _pid_alive(pid)]
            if current == prefix and users:
                state.write_text(" ".join([prefix, *map(str, users)]))
            else:
                remove(prefix)
                if current == prefix:
                    state.unlink(missing_ok=True)


def attach_engine(host: docker.DockerClient, name: str) -> NestedEngine:
    """The running nested engine container ``name`` (made by another process) as a NestedEngine."""
    try:
        return _wait_engine(host, host.api.inspect_container(name)["Id"])
    except docker.errors.NotFound as exc:
        raise NestedUnavailable(f"nested engine {name} is gone") from exc


def attach_swarm(host: docker.DockerClient, prefix: str) -> Swarm:
    """The running swarm ``start_swarm(host, prefix)`` made (in another process)."""
    manager, worker = (attach_engine(host, f"{prefix}-{role}") for role in ("manager", "worker"))
    node_ids = _wait_ready(manager.client(), 2, START_TIMEOUT)
    return Swarm(manager=manager, worker=worker, network=f"{prefix}-net", node_ids=node_ids)


def _with_image(host: docker.DockerClient, image: str, start: Callable[[], T], engines: Callable[[T], Any]) -> T:
    """``start()``, saving ``image`` meanwhile, then load it into each of ``engines(started)`` in parallel."""
    with ThreadPoolExecutor(2) as pool:
        saved = pool.submit(save_image, host, image)
        started = start()
        archive = saved.result()
        for load in [pool.submit(load_saved, e.client(), archive) for e in engines(started)]:
            load.result()
    return started


@contextlib.contextmanager
def shared_engine(host: docker.DockerClient, image: str) -> Iterator[NestedEngine]:
    """A nested engine with ``image`` loaded, shared by the run's xdist workers (see ``shared``)."""

    def create(prefix: str) -> NestedEngine:
        return _with_image(
            host, image, lambda: start_engine(host, f"{prefix}-engine", f"{prefix}-net", prefix=prefix),
            lambda engine: [engine],
        )

    def attach(prefix: str) -> NestedEngine:
        engine = attach_engine(host, f"{prefix}-engine")
        load_image(host, engine.client(), image)  # normally there already: then a no-op
        return engine

    with shared("engine", create, attach, lambda prefix: remove_all(host, prefix)) as engine:
        try:
            yield engine
        finally:
            engine.close()


@contextlib.contextmanager
def shared_swarm(host: docker.DockerClient, image: str) -> Iterator[Swarm]:
    """A two-node swarm with ``image`` on both nodes, shared by the run's xdist workers (see ``shared``)."""

    def attach(prefix: str) -> Swarm:
        swarm = attach_swarm(host, prefix)
        for engine in swarm.engines:
            load_image(host, engine.client(), image)
        return swarm

    def create(prefix: str) -> Swarm:
        return _with_image(host, image, lambda: start_swarm(host, prefix), lambda swarm: swarm.engines)

    with shared("swarm", create, attach, lambda prefix: remove_all(host, prefix)) as swarm:
        try:
            yield swarm
        finally:
            for engine in swarm.engines:
                engine.close()


# --- a host-side TCP server ---------------------------------------------------------------------------------


@dataclass
class TcpServer:
    """What ``tcp_server`` serves: its address, and each connection's first line (as received)."""

    host: str
    port: int
    lines: list[str] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(POLL)
        return list(self.lines)


@contextlib.contextmanager
def tcp_server(address: str) -> Iterator[TcpServer]:
    """A TCP server on ``address`` (an ephemeral port) that records each client's first line and answers
    ``ok <line>``. Binding needs the test to run on the engine's host (the gateway is one of its addresses)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(16)
    sock.settimeout(POLL)
    server = TcpServer(host=address, port=sock.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    line = conn.makefile("rb").readline().decode(errors="replace").strip()
                    server.lines.append(line)
                    conn.sendall(f"ok {line}\n".encode())

    thread = threading.Thread(target=serve, name=f"tcp-server-{address}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def client_script(host: str, port: int, message: str = "$MSG") -> list[str]:
    """A command for the worker image: connect to ``host:port``, send ``message`` (shell-expanded, e.g. an
    environment variable) and print the answer; exit 0 only if the answer echoes it."""
    code = (
        "import socket, sys; "
        f"s = socket.create_connection(({host!r}, {port}), timeout=10); "
        "s.sendall(sys.argv[1].encode() + b'\\n'); "
        "reply = s.makefile('rb').readline().decode().strip(); "
        "print(reply); "
        "sys.exit(0 if reply == 'ok ' + sys.argv[1] else 1)"
    )
    return ["sh", "-c", f'exec python3 -c "$0" "{message}"', code]
