"""Fixtures for end-to-end tests against the real Docker engine and real git (shared by every integration test).

Engine and image
- ``docker_client`` (session): a ``docker.DockerClient`` from the environment. Without a reachable engine the
  test is skipped with the reason, or FAILS when ``MAHABHARATHA_REQUIRE_DOCKER=1`` (CI sets it, so in CI
  every end-to-end test runs).
- ``worker_image`` (session): the tag ``mahabharatha-worker:test``, built once and reused: the offline base
  ``mahabharatha-base:trixie`` comes from ``scripts/build_offline_base.sh`` (debootstrap + docker import), the
  image from ``.devcontainer/Dockerfile`` with ``BASE_IMAGE=mahabharatha-base:trixie INSTALL_CLAUDE=0``
  through docker-py. A file lock makes parallel xdist workers build it once.
- ``claude_image`` (session): the tag ``mahabharatha-worker:claude-test``, the package's Dockerfile with
  ``INSTALL_CLAUDE=1`` (the real claude CLI) on the offline base, built once per session under a file lock
  and reused while the Dockerfile is unchanged (a stamp file holds its digest and the image id). Building
  downloads Claude Code's platform package from the npm registry; behind a TLS-intercepting proxy the host's
  extra CA certificates (those of its bundle the base image lacks) go in as ``EXTRA_CA_CERT``. When it cannot
  be built the test is skipped with the reason, or FAILS under ``MAHABHARATHA_REQUIRE_DOCKER=1`` or
  ``CI=true`` (``require_claude_image``).
- ``require_docker(reason)``: skip, or fail under ``MAHABHARATHA_REQUIRE_DOCKER=1``.
- ``nested_engine`` (session): a ``tests.integration.nested.NestedEngine``, a Docker engine in a container that
  shares no filesystem with the host, with ``worker_image`` loaded into it.
- ``swarm`` (session): a ``tests.integration.nested.Swarm``, a two-node Docker Swarm of two nested engines,
  ``worker_image`` loaded into both nodes. Swarm mode is engine-wide, so it is only ever switched on in
  nested engines. Each is made once per test run: the xdist workers of a run share it (a reference count
  under a file lock) and the last one to finish removes it (containers, what ran inside, volumes, networks
  and cgroups); what a killed test run left behind is removed by the next one that uses either fixture
  (``reap_stale``). Without a nested engine here they skip (fail under ``MAHABHARATHA_REQUIRE_DOCKER=1``).
- Every test here that uses ``docker_client`` (directly or through another fixture) is marked ``docker``.

Per test
- ``git_repo``: a fresh repository (branch ``main``, one commit: ``README.md``), absolute and resolved, inside
  its own temp dir so worktrees (``<repo>/../.mahabharatha-worktrees``) stay in the test's tmp tree.
- ``temp_home``: an empty HOME directory (also exported as ``$HOME`` for the test).
- ``container_prefix``: a unique container name prefix (``mh-test-<8 hex>``); containers are global on an
  engine, so tests never use the default ``mahabharatha-worker`` names.
- ``make_plan(workers=1, **changes)``: a container-mode LaunchPlan for ``git_repo`` (feature ``feat``) with the
  test image and prefix, built by the real planner (``mahabharatha.core.plan.build_plan``); ``changes`` go to
  ``msgspec.structs.replace`` on every WorkerSpec (e.g. ``command=...``). The ``ready_command`` fixture, called as ``ready_command(seconds)``, gives a
  command that prints the ready line and sleeps, for tests that don't need the real worker runtime.
- Teardown (label based): every container labelled ``io.mahabharatha.repo=<git_repo>``, and every container
  whose name starts with ``container_prefix``, is removed after the test, pass or fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mahabharatha.core.model import LABEL_REPO, LaunchPlan

ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = "mahabharatha-worker:test"
BASE_IMAGE = "mahabharatha-base:trixie"
CLAUDE_IMAGE = "mahabharatha-worker:claude-test"
FEATURE = "feat"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``docker`` every test here that uses the engine (``docker_client``, directly or through
    ``worker_image``/``make_plan``), so ``-m docker`` selects exactly the end-to-end tests."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


def require_docker(reason: str) -> None:
    """Skip with ``reason``; under ``MAHABHARATHA_REQUIRE_DOCKER=1`` fail instead (CI runs every e2e test)."""
    if os.environ.get("MAHABHARATHA_REQUIRE_DOCKER") == "1":
        pytest.fail(f"MAHABHARATHA_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        import docker

        client = docker.from_env(max_pool_size=32)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        require_docker(f"no Docker engine reachable ({type(exc).__name__}: {exc})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker_image(docker_client: Any) -> str:
    from mahabharatha.edge.images import ensure_image, image_exists

    if image_exists(docker_client, TEST_IMAGE):
        return TEST_IMAGE
    lock_path = Path(tempfile.gettempdir()) / "mahabharatha-test-image.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker builds, the others wait and reuse
        if not image_exists(docker_client, TEST_IMAGE):
            if not image_exists(docker_client, BASE_IMAGE):
                proc = subprocess.run(
                    ["bash", str(ROOT / "scripts" / "build_offline_base.sh"), BASE_IMAGE],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode != 0:
                    require_docker(f"cannot build the offline base image {BASE_IMAGE}: {proc.stderr.strip()[-500:]}")
            ensure_image(
                docker_client,
                TEST_IMAGE,
                dockerfile=ROOT / ".devcontainer" / "Dockerfile",
                buildargs={"BASE_IMAGE": BASE_IMAGE, "INSTALL_CLAUDE": "0"},
            )
    return TEST_IMAGE


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def require_claude_image(reason: str) -> None:
    """Skip; fail instead where every end-to-end test must run (CI, or MAHABHARATHA_REQUIRE_DOCKER=1)."""
    if os.environ.get("MAHABHARATHA_REQUIRE_DOCKER") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"the claude image is required here but {reason}", pytrace=False)
    pytest.skip(reason)


def _extra_ca(client: Any) -> str:
    """The host's CA certificates that the base image does not trust (a TLS-intercepting proxy's)."""
    if not HOST_BUNDLE.is_file():
        return ""
    base = client.containers.run(BASE_IMAGE, ["cat", str(HOST_BUNDLE)], remove=True).decode()
    known = set(_PEM.findall(base))
    return "\n".join(cert for cert in _PEM.findall(HOST_BUNDLE.read_text()) if cert not in known)


@pytest.fixture(scope="session")
def claude_image(docker_client: Any, worker_image: str) -> str:
    """Build (or reuse) the claude image; ``worker_image`` first makes sure the offline base exists."""
    from mahabharatha.edge.images import default_dockerfile, ensure_image, image_exists
    from mahabharatha.errors import LaunchError

    digest = hashlib.sha256(default_dockerfile().read_bytes()).hexdigest()
    lock_path = Path(tempfile.gettempdir()) / "mahabharatha-claude-image.lock"
    stamp = lock_path.with_suffix(".stamp")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker builds, the others wait and reuse
        if image_exists(docker_client, CLAUDE_IMAGE) and stamp.is_file():
            if stamp.read_text() == f"{digest} {docker_client.images.get(CLAUDE_IMAGE).id}":
                return CLAUDE_IMAGE  # built from this very Dockerfile earlier in this session (or a past one)
        buildargs = {"BASE_IMAGE": BASE_IMAGE, "INSTALL_CLAUDE": "1"}
        extra = _extra_ca(docker_client)
        if extra:
            buildargs["EXTRA_CA_CERT"] = extra
        try:
            image_id = ensure_image(docker_client, CLAUDE_IMAGE, buildargs=buildargs, force=True)
        except LaunchError as exc:
            require_claude_image(f"building {CLAUDE_IMAGE} failed: {exc}")
        stamp.write_text(f"{digest} {image_id}")
    return CLAUDE_IMAGE


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _remove_where(client: Any, **filters: Any) -> None:
    import docker.errors

    for row in client.api.containers(all=True, filters=filters):
        try:
            client.api.remove_container(row["Id"], force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture
def container_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    prefix = f"mh-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    if "docker_client" in request.fixturenames:
        _remove_where(request.getfixturevalue("docker_client"), name=f"^/{prefix}")


@pytest.fixture
def git_repo(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    repo = (tmp_path / "project" / "repo").resolve()
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    _git(repo, "add", "README.md")
    _git(repo, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "initial")
    yield repo
    if "docker_client" in request.fixturenames:
        _remove_where(request.getfixturevalue("docker_client"), label=f"{LABEL_REPO}={repo}")


@pytest.fixture
def temp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _ready_command(seconds: float = 300) -> tuple[str, ...]:
    """A worker command that announces itself like the real runtime, then idles."""
    script = (
        "import os, sys, time; "
        "print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); "
        f"time.sleep({seconds})"
    )
    return ("python3", "-c", script)


@pytest.fixture
def ready_command() -> Callable[..., tuple[str, ...]]:
    """``ready_command(seconds=300)``: a stand-in worker command (ready line, then sleep)."""
    return _ready_command


def plan_for(
    repo: Path,
    *,
    home: Path,
    feature: str = FEATURE,
    workers: int = 1,
    image: str = TEST_IMAGE,
    prefix: str,
    environ: dict[str, str] | None = None,
    config: str | None = None,
    mode: str = "container",
) -> LaunchPlan:
    """A container-mode (or ``mode``) plan from the real planner, with explicit inputs (no real HOME or environment).

    ``config`` (YAML text) is written to the repo's ``.mahabharatha/config.yaml`` first, so the planner reads it
    exactly as it would a user's.
    """
    from mahabharatha.planning import plan

    if config is not None:
        (repo / ".mahabharatha").mkdir(exist_ok=True)
        (repo / ".mahabharatha" / "config.yaml").write_text(config)
    return plan(
        repo,
        feature=feature,
        workers=workers,
        mode=mode,
        environ=dict(environ or {}),
        home=home,
        overrides={
            "workers.max_concurrent": max(workers, 1),
            "workers.container_prefix": prefix,
            "resources.container_image": image,
        },
    )


@pytest.fixture
def make_plan(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str
) -> Callable[..., LaunchPlan]:
    def make(
        workers: int = 1, *, environ: dict[str, str] | None = None, config: str | None = None,
        mode: str = "container", **changes: Any,
    ) -> LaunchPlan:
        plan = plan_for(
            git_repo,
            mode=mode,
            home=temp_home,
            workers=workers,
            image=worker_image,
            prefix=container_prefix,
            environ=environ,
            config=config,
        )
        if changes:
            plan = msgspec.structs.replace(
                plan, workers=tuple(msgspec.structs.replace(w, **changes) for w in plan.workers)
            )
        return plan

    return make


@pytest.fixture(scope="session")
def nested_engine(docker_client: Any, worker_image: str) -> Iterator[Any]:
    """A nested Docker engine with the worker image loaded (see ``tests/integration/nested.py``), one per
    test run: its xdist workers share it (reference counted), the last one removes it."""
    from .nested import NestedUnavailable, reap_stale, shared_engine

    reap_stale(docker_client)
    with contextlib.ExitStack() as stack:
        try:
            engine = stack.enter_context(shared_engine(docker_client, worker_image))
        except NestedUnavailable as exc:
            require_docker(f"no nested Docker engine here: {exc}")
        yield engine


@pytest.fixture(scope="session")
def swarm(docker_client: Any, worker_image: str) -> Iterator[Any]:
    """A two-node Docker Swarm of nested engines with the worker image on both nodes, one per test run
    (shared by its xdist workers like ``nested_engine``)."""
    from .nested import NestedUnavailable, reap_stale, shared_swarm

    reap_stale(docker_client)
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(shared_swarm(docker_client, worker_image))
        except NestedUnavailable as exc:
            require_docker(f"no nested Docker swarm here: {exc}")
        yield cluster
