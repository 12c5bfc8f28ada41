"""How engine connection failures become one-line errors (no daemon: the exceptions docker-py raises, rebuilt).

Permission denied on a unix socket names the socket and the group to join; every other failure (no socket,
refused, a TCP engine) stays "cannot reach the Docker engine". The real sockets and the real unprivileged
user are in tests/integration/test_engine_access.py.
"""

from __future__ import annotations

import errno
import grp
import os
from pathlib import Path

import pytest

from mahabharatha.edge.executor import _engine_error

# What docker-py 7 raises from DockerClient() when connect() on the socket gets EACCES: only the text survives.
DOCKER_PY_TEXT = (
    "Error while fetching server API version: ('Connection aborted.', PermissionError(13, 'Permission denied'))"
)


def _line(socket_path: str, group: str = "docker", action: str = "Failed to start container") -> str:
    return (
        f"{action}: permission denied on the Docker socket {socket_path}: add your user to the {group} group "
        f"(sudo usermod -aG {group} $USER, then log in again), or point DOCKER_HOST at an engine you may use"
    )


def _docker_py_chain(cause: OSError) -> BaseException:
    """The exception docker-py raises, with the chain it builds: OSError -> urllib3 -> requests -> docker."""
    import docker.errors
    import requests
    import urllib3.exceptions

    try:
        try:
            try:
                raise cause
            except OSError as exc:
                raise urllib3.exceptions.ProtocolError("Connection aborted.", exc) from exc
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
    except requests.exceptions.ConnectionError as exc:
        try:
            raise docker.errors.DockerException(f"Error while fetching server API version: {exc}") from exc
        except docker.errors.DockerException as outer:
            return outer


@pytest.fixture
def no_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)


def _default_group() -> str:
    try:
        gid = os.stat("/var/run/docker.sock").st_gid
        return grp.getgrgid(gid).gr_name if gid else "docker"
    except (OSError, KeyError):
        return "docker"


def test_docker_py_text_alone_is_permission_denied(no_docker_host: None) -> None:
    import docker.errors

    message = str(_engine_error(docker.errors.DockerException(DOCKER_PY_TEXT), "Cannot list workers"))
    assert message == _line("/var/run/docker.sock", _default_group(), "Cannot list workers")


@pytest.mark.parametrize("cause", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EPERM, "nope")])
def test_permission_error_anywhere_in_the_chain(no_docker_host: None, cause: OSError) -> None:
    assert str(_engine_error(_docker_py_chain(cause))) == _line("/var/run/docker.sock", _default_group())


@pytest.mark.parametrize(
    "cause",
    [
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
    ],
)
def test_missing_or_refused_socket_cannot_reach(no_docker_host: None, cause: OSError) -> None:
    message = str(_engine_error(_docker_py_chain(cause), "Cannot stop worker containers"))
    assert message == (
        "Cannot stop worker containers: cannot reach the Docker engine at unix:///var/run/docker.sock; "
        "start Docker or point DOCKER_HOST at a running engine (DockerException)"
    )


def test_tcp_engine_is_never_a_socket_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    message = str(_engine_error(_docker_py_chain(PermissionError(errno.EACCES, "Permission denied"))))
    assert message.startswith("Failed to start container: cannot reach the Docker engine at tcp://127.0.0.1:2375;")


def test_socket_from_docker_host_and_its_own_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "engine.sock"
    sock.touch()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    gid = sock.stat().st_gid
    group = grp.getgrgid(gid).gr_name if gid else "docker"  # root's group is never the advice
    message = str(_engine_error(_docker_py_chain(PermissionError(errno.EACCES, "Permission denied"))))
    assert message == _line(str(sock), group)


def test_unknown_socket_group_falls_back_to_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/gone.sock")
    assert str(_engine_error(PermissionError(errno.EACCES, "Permission denied"))) == _line(f"{tmp_path}/gone.sock")
