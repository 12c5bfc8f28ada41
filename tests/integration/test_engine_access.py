"""Engine access errors from the real ``make_client``, against real sockets and a real unprivileged user.

Being outside the group that owns the Docker socket is "permission denied on the Docker socket: add your user
to the docker group", not "cannot reach the Docker engine"; a missing socket or a refused connection still is
"cannot reach". The user test needs root (to create a user outside the socket's group); as root under
``MAHABHARATHA_REQUIRE_DOCKER=1`` it fails rather than skips when it cannot run.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mahabharatha.edge.executor import make_client
from mahabharatha.errors import LaunchError

ROOT = Path(__file__).resolve().parents[2]
OUTSIDER = "mh-nodocker"  # a system user that is in no group but its own
ACTION = "Cannot list workers"


def require_docker(reason: str) -> None:
    """As conftest's: skip, or fail under ``MAHABHARATHA_REQUIRE_DOCKER=1``."""
    if os.environ.get("MAHABHARATHA_REQUIRE_DOCKER") == "1":
        pytest.fail(f"MAHABHARATHA_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _permission_line(socket_path: str, group: str) -> str:
    return (
        f"{ACTION}: permission denied on the Docker socket {socket_path}: add your user to the {group} group "
        f"(sudo usermod -aG {group} $USER, then log in again), or point DOCKER_HOST at an engine you may use"
    )


def _engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        pytest.skip(f"DOCKER_HOST={host} is not a unix socket; the socket permission test needs one")
    path = host[len("unix://"):]
    if not os.path.exists(path):
        require_docker(f"no Docker socket at {path}")
    return path


def _ensure_outsider() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OUTSIDER)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", OUTSIDER],
        capture_output=True, text=True,
    )
    if proc.returncode not in (0, 9):  # 9: created meanwhile by a parallel session
        require_docker(f"cannot create the user {OUTSIDER}: {proc.stderr.strip()}")
    return pwd.getpwnam(OUTSIDER)


def _as_user(user: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` as ``user`` with exactly ``env`` and the user's own groups (none inherited from root)."""
    if shutil.which("runuser"):
        switch = ["runuser", "-u", user.pw_name, "--"]
    elif shutil.which("setpriv"):
        switch = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    else:
        require_docker("neither runuser nor setpriv is installed, so no command can run as another user")
    return subprocess.run(
        [*switch, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
        capture_output=True, text=True, timeout=120, cwd="/",
    )


@pytest.fixture
def readable_package() -> Iterator[Path]:
    """A world-readable copy of the package under test (pytest's tmp dirs are private to their owner)."""
    top = Path(tempfile.mkdtemp(prefix="mh-engine-access-", dir="/tmp"))  # not $TMPDIR: it may be private
    try:
        top.chmod(0o755)
        shutil.copytree(ROOT / "mahabharatha", top / "mahabharatha", ignore=shutil.ignore_patterns("__pycache__"))
        for path in (top, *top.rglob("*")):
            path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IROTH | (0o055 if path.is_dir() else 0))
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.docker
def test_user_outside_the_socket_group_is_told_to_join_it(readable_package: Path) -> None:
    socket_path = _engine_socket()
    if os.geteuid() != 0:
        pytest.skip(f"needs root to create a user outside the group of {socket_path} (running as uid {os.geteuid()})")
    info = os.stat(socket_path)
    if info.st_mode & stat.S_IWOTH:
        require_docker(f"{socket_path} is writable by every user, so no user is refused")
    user = _ensure_outsider()
    assert info.st_gid not in os.getgrouplist(user.pw_name, user.pw_gid), f"{OUTSIDER} is in the socket's group"
    group = grp.getgrgid(info.st_gid).gr_name if info.st_gid != 0 else "docker"

    env = {"PATH": "/usr/bin:/bin", "HOME": str(readable_package), "PYTHONPATH": str(readable_package),
           "DOCKER_HOST": f"unix://{socket_path}", "LANG": "C.UTF-8"}
    probe = _as_user(user, [sys.executable, "-c", "import docker, mahabharatha.edge.executor"], env)
    if probe.returncode != 0:
        require_docker(
            f"{OUTSIDER} cannot run {sys.executable} with docker-py and the package under test "
            f"(is the interpreter readable by other users?): {(probe.stderr.strip().splitlines() or [''])[-1]}"
        )
    code = (
        "from mahabharatha.edge.executor import make_client\n"
        "from mahabharatha.errors import LaunchError\n"
        "try:\n"
        f"    make_client(action={ACTION!r})\n"
        "except LaunchError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('connected')\n"
    )
    proc = _as_user(user, [sys.executable, "-c", code], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == _permission_line(socket_path, group), proc.stdout + proc.stderr


def _listening_socket(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    return server


def test_socket_this_user_may_not_open_is_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a non-root user, a listening socket without write permission refuses connect() with EACCES."""
    if os.geteuid() == 0:
        pytest.skip("root may open any socket; the user test above covers root runs")
    path = tmp_path / "engine.sock"
    server = _listening_socket(path)
    try:
        path.chmod(0)
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        with pytest.raises(LaunchError) as caught:
            make_client(action=ACTION, timeout=5)
    finally:
        server.close()
    assert str(caught.value) == _permission_line(str(path), grp.getgrgid(path.stat().st_gid).gr_name)


@pytest.mark.parametrize("kind", ["missing", "refused"])
def test_missing_or_refusing_socket_still_cannot_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "engine.sock"
    if kind == "refused":  # bound but never listening: connect() gets ECONNREFUSED
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    try:
        with pytest.raises(LaunchError) as caught:
            make_client(action=ACTION, timeout=5)
    finally:
        if kind == "refused":
            sock.close()
    message = str(caught.value)
    assert message.startswith(f"{ACTION}: cannot reach the Docker engine at unix://{path}; start Docker"), message
    assert "permission denied" not in message
