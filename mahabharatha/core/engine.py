"""Which Docker engine a plan targets, and whether it shares this machine's filesystem. Pure.

The engine is ``DOCKER_HOST`` when set, else the current Docker context's endpoint (``DOCKER_CONTEXT``, or
``currentContext`` in ``~/.docker/config.json``), else the local socket. A ``tcp://`` or ``ssh://`` engine
is *remote*: it cannot see the host's files, so its workers get nothing bind-mounted; the workspace, the
worker runtime and every result travel over the worker channel (see :mod:`mahabharatha.edge.channel`).
``workers.transport`` (``local``/``remote``) overrides the guess, e.g. for a TCP engine on this very machine.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from ..errors import ConfigError

__all__ = ["EngineTarget", "engine_target", "is_remote_host", "host_of", "parse_channel_address", "loopback"]

LOCAL_SOCKET = "unix:///var/run/docker.sock"


class EngineTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The engine, as found: its address and where the address came from; ``remote`` when it does not share
    this machine's filesystem (the transport the plan uses for its workers)."""

    host: str  # unix:///var/run/docker.sock, tcp://10.0.0.5:2375, ssh://me@bigbox
    source: str  # "DOCKER_HOST", "context NAME", or "default"
    transport: Literal["local", "remote"]


def is_remote_host(host: str) -> bool:
    return host.startswith(("tcp://", "ssh://", "http://", "https://"))


def host_of(url: str) -> str:
    """The host name or address of a ``tcp://``/``ssh://`` engine address (``ssh://me@bigbox:22`` -> bigbox)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def engine_target(
    docker_host: str | None,
    context: tuple[str, str] | None,
    transport: Literal["auto", "local", "remote"],
) -> EngineTarget:
    """The target for ``DOCKER_HOST`` (``docker_host``), else the context ``(name, host)``, else the local
    socket; ``transport`` other than ``auto`` decides the transport."""
    if docker_host:
        host, source = docker_host, "DOCKER_HOST"
    elif context is not None:
        host, source = context[1], f"context {context[0]}"
    else:
        host, source = LOCAL_SOCKET, "default"
    chosen: Literal["local", "remote"]
    if transport == "auto":
        chosen = "remote" if is_remote_host(host) else "local"
    else:
        chosen = transport
    return EngineTarget(host=host, source=source, transport=chosen)


def loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_channel_address(text: str, source: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (``[v6]:PORT``) of ``workers.channel_address``; port 0 means "a free one, chosen
    when the run starts"."""
    text = text.strip()
    host, port = text, "0"
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            host = ""
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{source}: workers.channel_address: expected HOST or HOST:PORT, found {text!r}")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or any(c in host for c in " /@\t") or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{source}: workers.channel_address: expected HOST or HOST:PORT (port 0-65535), found {text!r}"
        )
    return host, int(port)
