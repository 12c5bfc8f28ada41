"""The orchestrator's end of the worker channels: one Unix socket per worker, served on threads.

Each worker gets a directory of its own holding one socket (mounted read-only into that worker's container
only), so the socket a connection arrives on names the worker: no worker can speak for another. Every
frame is bounded (:mod:`mahabharatha.worker.channel`); a peer that breaks the protocol loses its connection,
nothing else. A worker holds at most :data:`MAX_CONNECTIONS` connections at once (its agent can reach the
socket too: a flood of connections must not cost the orchestrator a thread and a descriptor each; further
ones are closed at once). ``handle(worker_id, message, blob)`` runs on the connection's thread and returns
the reply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import LaunchError
from ..worker import protocol as P
from ..worker.channel import ChannelError, _Reader, recv_frame, send_frame, socket_address

__all__ = ["ChannelServer", "Handler", "MAX_CONNECTIONS"]

MAX_CONNECTIONS = 4  # per worker at once: the worker needs one (a restarted worker's old one may linger)

Handler = Callable[[int, dict[str, Any], "bytes | None"], dict[str, Any]]


class ChannelServer:
    """Listen on ``sockets`` (worker id -> socket path) and answer each request with ``handle``."""

    def __init__(self, sockets: dict[int, str], handle: Handler) -> None:
        self.sockets = dict(sockets)
        self.handle = handle
        self.listeners: list[socket.socket] = []
        self.connections: dict[socket.socket, int] = {}  # connection -> worker id
        self.closed = False
        self._lock = threading.Lock()

    def start(self) -> ChannelServer:
        for wid, path in sorted(self.sockets.items()):
            directory = os.path.dirname(path)
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    raise LaunchError(f"{path} is a directory where the worker channel's socket goes", hint="remove it")
                os.unlink(path)  # a socket left by an orchestrator that was killed
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with socket_address(path) as address:
                    sock.bind(address)
                os.chmod(path, 0o600)
                sock.listen(8)
            except OSError as exc:
                sock.close()
                self.close()
                raise LaunchError(f"cannot open the worker channel {path}: {exc.strerror or exc}") from None
            self.listeners.append(sock)
            threading.Thread(target=self._accept, args=(wid, sock), daemon=True, name=f"mahabharatha-channel-{wid}").start()
        return self

    def _accept(self, wid: int, listener: socket.socket) -> None:
        while not self.closed:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and not self.closed:
                    time.sleep(0.1)  # out of descriptors for a moment: the worker's next connect must still work
                    continue
                return
            with self._lock:
                if self.closed:
                    conn.close()
                    return
                if sum(1 for w in self.connections.values() if w == wid) >= MAX_CONNECTIONS:
                    conn.close()
                    continue
                self.connections[conn] = wid
            threading.Thread(target=self._serve, args=(wid, conn), daemon=True, name=f"mahabharatha-worker-{wid}").start()

    def _serve(self, wid: int, conn: socket.socket) -> None:
        reader = _Reader(conn)
        try:
            while not self.closed:
                try:
                    message, blob = recv_frame(reader)
                except ChannelError:
                    return
                op = message.get("op")
                if op not in P.CHANNEL_OPS:
                    send_frame(conn, {"ok": False, "error": f"unknown request {str(op)[:40]!r}"})
                    continue
                try:
                    reply = self.handle(wid, message, blob)
                except Exception as exc:  # noqa: BLE001 - a bad request must not take the orchestrator down
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                send_frame(conn, reply)
        except OSError:
            return
        finally:
            with self._lock:
                self.connections.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self.closed = True
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()
        for path in self.sockets.values():
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
