"""The worker's channel to the orchestrator: JSON messages (and git bundles) over a Unix stream socket.

One frame is a JSON object on one line; when it carries ``"blob": N``, exactly N raw bytes follow (a git
bundle). Both sides read with hard limits (:data:`protocol.MAX_MESSAGE_BYTES`, :data:`protocol.MAX_BUNDLE_BYTES`),
so a peer cannot make the other read without bound. Every request gets exactly one reply; ``claim`` replies
when there is something to do (a task, or the run's end), so a waiting worker does not poll.

The socket lives in a directory of its own per worker, mounted read-only into that worker's container only:
which socket a message arrives on is which worker sent it. Long host paths (over the 107-byte limit of a
socket address) are reached through ``/proc/self/fd/N/`` of the opened directory.

Where nothing is mounted (remote transport) the channel is ``tcp://HOST:PORT`` instead: one listener for
all workers, and a connection's first frame is ``{"op": "auth", "token": ...}`` with the worker's token
(``MAHABHARATHA_CHANNEL_TOKEN``). Replies there may carry a blob: git packs of the commits a task starts
from (the worker has no alternates to read them from).

Standard library only (this module runs inside worker containers).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from . import protocol as P

__all__ = ["ChannelError", "Channel", "send_frame", "recv_frame", "socket_address"]

_SUN_PATH_MAX = 107


class ChannelError(Exception):
    """The peer broke the protocol, went away, or sent more than the limits allow."""


@contextlib.contextmanager
def socket_address(path: str) -> Iterator[str]:
    """An address for ``path`` that fits a Unix socket address: the path itself when short enough, else
    ``/proc/self/fd/N/<name>`` of its directory, opened for the duration of the block."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def send_frame(sock: socket.socket, message: dict[str, Any], blob: bytes | None = None) -> None:
    body = dict(message)
    if blob is not None:
        body["blob"] = len(blob)
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    sock.sendall(data if blob is None else data + blob)


class _Reader:
    """Buffered, bounded reads from a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ChannelError("the peer closed the channel")
        self.buf += chunk

    def line(self, limit: int) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end > limit or (end < 0 and len(self.buf) > limit):  # (a whole line in one read counts too)
                raise ChannelError(f"a message longer than {limit} bytes")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                return line
            self._more()

    def exactly(self, n: int) -> bytes:
        parts = []
        have = min(n, len(self.buf))
        parts.append(self.buf[:have])
        self.buf = self.buf[have:]
        need = n - have
        while need:
            chunk = self.sock.recv(min(need, 1 << 20))
            if not chunk:
                raise ChannelError("the peer closed the channel in the middle of a bundle")
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)


def recv_frame(reader: _Reader, *, max_message: int = P.MAX_MESSAGE_BYTES, max_blob: int = P.MAX_BUNDLE_BYTES) -> tuple[dict[str, Any], bytes | None]:
    """One frame: (message, blob or None). Raises :class:`ChannelError` for anything malformed or too big."""
    line = reader.line(max_message)
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ChannelError("a message that is not JSON") from None
    if not isinstance(message, dict):
        raise ChannelError("a message that is not a JSON object")
    size = message.pop("blob", None)
    if size is None:
        return message, None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ChannelError("a bundle length that is not a whole number")
    if size > max_blob:
        raise ChannelError(f"a bundle of {size} bytes, over the limit of {max_blob}")
    return message, reader.exactly(size)


def _pinned_tls(raw: socket.socket, pin: str, path: str) -> socket.socket:
    """TLS over ``raw``, accepted only when the server's certificate has the sha256 ``pin`` the run gave this
    worker (a certificate made for the run: no CA is involved)."""
    import hashlib
    import hmac
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the pin below is the check
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        tls = ctx.wrap_socket(raw)
    except (OSError, ValueError):
        raw.close()
        raise
    der = tls.getpeercert(binary_form=True) or b""
    if not pin or not hmac.compare_digest(hashlib.sha256(der).hexdigest(), pin):
        tls.close()
        raise ChannelError(f"the orchestrator at {path} is not this run's (its certificate does not match {P.ENV_CHANNEL_PIN})")
    return tls


class Channel:
    """The worker's end: ``request(op, ...)`` sends one message and returns the orchestrator's reply."""

    def __init__(self, path: str, timeout: float | None = None, token: str | None = None, pin: str | None = None) -> None:
        self.path = path
        self.tcp = path.startswith("tcp://")
        try:
            if self.tcp:
                host, _, port = path[len("tcp://"):].rpartition(":")
                raw = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout or 60)
                self.sock = _pinned_tls(raw, pin if pin is not None else os.environ.get(P.ENV_CHANNEL_PIN, ""), path)
            else:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                with socket_address(path) as address:
                    self.sock.connect(address)
        except ChannelError:
            raise
        except (OSError, ValueError) as exc:
            with contextlib.suppress(Exception):
                self.sock.close()
            raise ChannelError(f"cannot reach the orchestrator at {path}: {getattr(exc, 'strerror', None) or exc}") from None
        self.sock.settimeout(None)
        self.reader = _Reader(self.sock)
        if self.tcp:
            reply = self.request("auth", token=token or os.environ.get(P.ENV_CHANNEL_TOKEN, ""))
            if not reply.get("ok"):
                self.close()
                raise ChannelError(f"the orchestrator at {path} refused this worker: {reply.get('error', 'no reason')}")

    def request(self, op: str, blob: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request; the reply, with the blob it carried (remote transport only) as ``"_blob"``."""
        try:
            send_frame(self.sock, {"op": op, **fields}, blob)
            reply, data = recv_frame(self.reader, max_blob=P.MAX_SYNC_BYTES if self.tcp else 0)
        except OSError as exc:
            raise ChannelError(f"the channel to the orchestrator broke: {exc.strerror or exc}") from None
        if data is not None:
            reply["_blob"] = data
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
