"""The orchestrator's end of the worker channels: one Unix socket per worker, served on threads.

Each worker gets a directory of its own holding one socket (mounted read-only into that worker's container
only), so the socket a connection arrives on names the worker: no worker can speak for another. Every
frame is bounded (:mod:`mahabharatha.worker.channel`); a peer that breaks the protocol loses its connection,
nothing else. A worker holds at most :data:`MAX_CONNECTIONS` connections at once (its agent can reach the
socket too: a flood of connections must not cost the orchestrator a thread and a descriptor each; further
ones are closed at once). ``handle(worker_id, message, blob)`` runs on the connection's thread and returns
the reply (a ``"_blob"`` entry of the reply, bytes, travels as the frame's blob).

Remote transport (nothing mounted): one TCP listener at the plan's endpoint instead. A connection's first
frame must be ``{"op": "auth", "token": T}`` within :data:`~mahabharatha.worker.protocol.AUTH_TIMEOUT_S`;
the token (made here, one per worker per run, handed to the engine as a secret) names the worker, from then
on the connection is served like that worker's socket. At most :data:`MAX_PENDING` connections may be
unauthenticated at once. ``runtime`` answers with the worker runtime package as a tar (the bootstrap's
download). :attr:`ChannelServer.link` tells the launcher the URL and the tokens.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import io
import os
import secrets
import socket
import ssl
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from ..core.model import ChannelEndpoint, EnvVar, SecretEnvVar, WorkerSpec
from ..core.secret import Secret
from ..errors import LaunchError
from ..worker import protocol as P
from ..worker.channel import ChannelError, _Reader, recv_frame, send_frame, socket_address

__all__ = ["ChannelServer", "ChannelLink", "Handler", "MAX_CONNECTIONS", "MAX_PENDING", "runtime_tar"]

MAX_CONNECTIONS = 4  # per worker at once: the worker needs one (a restarted worker's old one may linger)
MAX_PENDING = 32  # TCP connections not yet authenticated, all workers together
_AUTH_FRAME_BYTES = 4096


class ChannelLink:
    """How remote workers reach this run's channel: the URL they dial and each worker's token (secrets)."""

    def __init__(self, url: str, tokens: dict[int, Secret], pin: str = "") -> None:
        self.url = url
        self.pin = pin  # sha256 of the channel's TLS certificate (made for the run): what workers check
        self._tokens = dict(tokens)

    def token(self, worker_id: int) -> str:
        return self._tokens[worker_id].reveal()

    def bind(self, spec: WorkerSpec) -> WorkerSpec:
        """``spec`` as it is launched: the real channel URL (the plan may say port 0), the channel certificate's
        pin, and the worker's token as one more secret variable (so it is redacted wherever the plan's secrets
        are)."""
        env = tuple(EnvVar(name=e.name, value=self.url) if e.name == P.ENV_CHANNEL else e for e in spec.environment)
        if self.pin:
            env = tuple(sorted((*env, EnvVar(name=P.ENV_CHANNEL_PIN, value=self.pin)), key=lambda e: e.name))
        token = SecretEnvVar(name=P.ENV_CHANNEL_TOKEN, value=self._tokens[spec.worker_id], source="made for this run")
        secret_env = tuple(sorted((*spec.secret_environment, token), key=lambda e: e.name))
        return msgspec.structs.replace(spec, environment=env, secret_environment=secret_env)

    def __repr__(self) -> str:
        return f"ChannelLink({self.url!r}, {len(self._tokens)} tokens)"


def tls_context() -> tuple[ssl.SSLContext, str]:
    """A server TLS context with a key and self-signed certificate made for this run (never written anywhere but
    a private temporary directory, removed at once), and the certificate's sha256 pin workers check. Workers do
    not trust any CA: they compare the pin, then send their token, so neither the token nor the credentials
    that follow cross the network in the clear."""
    import datetime
    import hashlib
    import shutil
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mahabharatha worker channel")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    tmp = tempfile.mkdtemp(prefix="mahabharatha-tls-")
    try:
        certfile, keyfile = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(certfile, "wb") as fh:
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ctx.load_cert_chain(certfile, keyfile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ctx, hashlib.sha256(der).hexdigest()


def runtime_tar(directory: str | os.PathLike[str]) -> bytes:
    """The worker runtime package (``*.py`` of ``directory``) as ``mahabharatha_worker/...`` in a tar,
    byte-identical for the same files (sorted, no times or owners)."""
    out = io.BytesIO()
    root = Path(directory)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{P.RUNTIME_PACKAGE}/{path.relative_to(root).as_posix()}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()

Handler = Callable[[int, dict[str, Any], "bytes | None"], dict[str, Any]]


class ChannelServer:
    """Listen on ``sockets`` (worker id -> socket path) and answer each request with ``handle``."""

    def __init__(
        self, sockets: dict[int, str], handle: Handler, *, tcp: ChannelEndpoint | None = None,
        workers: Iterable[int] = (), runtime_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.sockets = dict(sockets)
        self.handle = handle
        self.tcp = tcp if tcp is not None and tcp.kind == "tcp" else None
        self.workers = sorted(set(workers))
        self.runtime_dir = runtime_dir
        self._runtime: bytes | None = None
        self.listeners: list[socket.socket] = []
        self.connections: dict[socket.socket, int] = {}  # connection -> worker id
        self.pending = 0  # TCP connections not authenticated yet
        self.closed = False
        self._lock = threading.Lock()
        self._tokens: dict[int, Secret] = {}
        self._tls: ssl.SSLContext | None = None
        self.link: ChannelLink | None = None

    def start(self) -> ChannelServer:
        if self.tcp is not None:
            self._start_tcp(self.tcp)
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

    def _start_tcp(self, endpoint: ChannelEndpoint) -> None:
        try:
            family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((endpoint.host, endpoint.port))
            sock.listen(64)
        except OSError as exc:
            with contextlib.suppress(Exception):
                sock.close()
            raise LaunchError(
                f"cannot open the worker channel on {endpoint.host}:{endpoint.port}: {exc.strerror or exc}",
                hint="set workers.channel_address to HOST[:PORT] of this machine that the engine's containers reach",
            ) from None
        port = sock.getsockname()[1]
        self._tokens = {wid: Secret(secrets.token_urlsafe(32)) for wid in self.workers}
        self._tls, pin = tls_context()
        self.link = ChannelLink(msgspec.structs.replace(endpoint, port=port).url, self._tokens, pin)
        self.listeners.append(sock)
        threading.Thread(target=self._accept_tcp, args=(sock,), daemon=True, name="mahabharatha-channel-tcp").start()

    def _accept_tcp(self, listener: socket.socket) -> None:
        for conn in self._accepted(listener):
            with self._lock:
                if self.closed or self.pending >= MAX_PENDING:
                    conn.close()
                    continue
                self.pending += 1
            threading.Thread(target=self._authenticate, args=(conn,), daemon=True, name="mahabharatha-channel-auth").start()

    def _authenticate(self, raw: socket.socket) -> None:
        """A TLS handshake, then the first frame names the worker by its token, all within the time allowed,
        or the connection is closed."""
        wid: int | None = None
        conn: socket.socket = raw
        try:
            raw.settimeout(P.AUTH_TIMEOUT_S)
            conn = self._tls.wrap_socket(raw, server_side=True)
            reader = _Reader(conn)
            message, _ = recv_frame(reader, max_message=_AUTH_FRAME_BYTES, max_blob=0)
            token = message.get("token")
            if message.get("op") == "auth" and isinstance(token, str):
                given = token.encode("utf-8", "replace")
                for candidate, secret in self._tokens.items():
                    if hmac.compare_digest(given, secret.reveal().encode()):
                        wid = candidate
            if wid is None:
                send_frame(conn, {"ok": False, "error": "not a worker of this run (bad token)"})
        except (ChannelError, OSError, ValueError):  # (ssl.SSLError is an OSError)
            wid = None
        finally:
            with self._lock:
                self.pending -= 1
                admitted = wid is not None and self._admit(conn, wid)
        if not admitted:
            with contextlib.suppress(OSError):
                conn.close()
            return
        try:
            conn.settimeout(None)
            send_frame(conn, {"ok": True, "worker": wid})
        except OSError:
            with self._lock:
                self.connections.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()
            return
        self._serve(wid, conn, reader)

    def runtime(self) -> bytes:
        if self._runtime is None:
            if self.runtime_dir is None:
                raise LaunchError("this channel serves no worker runtime")
            self._runtime = runtime_tar(self.runtime_dir)
        return self._runtime

    def _accepted(self, listener: socket.socket) -> Iterator[socket.socket]:
        """Connections as ``listener`` accepts them, until the server closes."""
        while not self.closed:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) and not self.closed:
                    time.sleep(0.1)  # out of descriptors for a moment: the worker's next connect must still work
                    continue
                return
            yield conn

    def _admit(self, conn: socket.socket, wid: int) -> bool:
        """Count ``conn`` as one of worker ``wid``'s connections, unless the server closed or the worker holds
        :data:`MAX_CONNECTIONS` already (the caller closes it then). Under the lock."""
        if self.closed or sum(1 for w in self.connections.values() if w == wid) >= MAX_CONNECTIONS:
            return False
        self.connections[conn] = wid
        return True

    def _accept(self, wid: int, listener: socket.socket) -> None:
        for conn in self._accepted(listener):
            with self._lock:
                admitted = self._admit(conn, wid)
            if not admitted:
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(wid, conn), daemon=True, name=f"mahabharatha-worker-{wid}").start()

    def _serve(self, wid: int, conn: socket.socket, reader: _Reader | None = None) -> None:
        reader = reader if reader is not None else _Reader(conn)
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
                    reply = {"ok": True, "_blob": self.runtime()} if op == "runtime" else self.handle(wid, message, blob)
                except Exception as exc:  # noqa: BLE001 - a bad request must not take the orchestrator down
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                out = reply.pop("_blob", None) if isinstance(reply.get("_blob"), bytes) else None
                send_frame(conn, reply, out)
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
