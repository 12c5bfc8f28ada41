"""The worker channel's framing (:mod:`mahabharatha.worker.channel`) and the orchestrator's server
(:mod:`mahabharatha.edge.channel`): bounded frames, a peer that breaks the protocol loses its own connection
only, the socket a request arrives on names the worker, long socket paths work."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.channel import ChannelServer
from mahabharatha.worker import protocol as P
from mahabharatha.worker.channel import Channel, ChannelError, _Reader, recv_frame, send_frame, socket_address


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(10)
    b.settimeout(10)
    return a, b


# ------------------------------------------------------------------------------------------------------------
# frames


def test_frames_round_trip_with_and_without_a_blob() -> None:
    a, b = _pair()
    with a, b:
        send_frame(a, {"op": "finish", "task": "A"}, b"\x00bundle\nbytes\xff")
        send_frame(a, {"op": "progress", "line": "é\nnot a frame break"})
        send_frame(a, {"op": "park"}, b"")
        reader = _Reader(b)
        assert recv_frame(reader) == ({"op": "finish", "task": "A"}, b"\x00bundle\nbytes\xff")
        assert recv_frame(reader) == ({"op": "progress", "line": "é\nnot a frame break"}, None)
        assert recv_frame(reader) == ({"op": "park"}, b"")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"x" * 70 + b"\n", "longer than 64 bytes"),
        (b"not json\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'"text"\n', "not a JSON object"),
        (b'{"op": "finish", "blob": -1}\n', "not a whole number"),
        (b'{"op": "finish", "blob": true}\n', "not a whole number"),
        (b'{"op": "finish", "blob": 1.5}\n', "not a whole number"),
        (b'{"op": "finish", "blob": "3"}\n', "not a whole number"),
        (b'{"op": "finish", "blob": 33}\n', "over the limit of 32"),
        (b'{"op": "finish", "blob": 8}\nabc', "closed the channel in the middle of a bundle"),
        (b"", "closed the channel"),
        (b'{"op": "hello"}', "closed the channel"),  # no end of line: not a frame
        (b"[" * 20 + b"]" * 20 + b"\n", "not a JSON object"),
        (b"[" + b" " * 80 + b"]\n", "longer than 64 bytes"),  # whole in one read: still over the limit
    ],
)
def test_a_malformed_frame_is_a_channel_error(raw: bytes, why: str) -> None:
    a, b = _pair()
    with b:
        a.sendall(raw)
        a.close()
        with pytest.raises(ChannelError, match=why) as exc:
            recv_frame(_Reader(b), max_message=64, max_blob=32)
        assert "\n" not in str(exc.value)


def test_deeply_nested_json_is_refused_not_a_crash() -> None:
    a, b = _pair()
    with a, b:
        a.sendall(b"[" * 100_000 + b"\n")
        with pytest.raises(ChannelError, match="not JSON|not a JSON object"):
            recv_frame(_Reader(b), max_message=200_000)


def test_the_workers_end_takes_no_blob_in_a_reply(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            recv_frame(_Reader(conn))
            send_frame(conn, {"ok": True}, b"unasked-for bytes")
            time.sleep(0.5)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    channel = Channel(path, timeout=10)
    try:
        with pytest.raises(ChannelError, match="over the limit of 0"):
            channel.request("hello")
    finally:
        channel.close()
        listener.close()
        t.join(5)


def test_an_unreachable_orchestrator_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match=r"cannot reach the orchestrator at .*s\.sock: ") as exc:
        Channel(str(tmp_path / "s.sock"))
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------------------------
# the server


class Server:
    """A ChannelServer for workers 0 and 1 whose handler records (worker id, message, blob)."""

    def __init__(self, root: Path) -> None:
        self.seen: list[tuple[int, dict[str, Any], bytes | None]] = []
        self.paths = {wid: str(root / "channel" / f"worker-{wid}" / P.CHANNEL_SOCKET) for wid in (0, 1)}
        self.server = ChannelServer(self.paths, self.handle).start()

    def handle(self, wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        self.seen.append((wid, message, blob))
        if message.get("line") == "raise":
            raise RuntimeError("handler bug\nsecond line")
        return {"ok": True, "worker": wid, "size": None if blob is None else len(blob)}

    def raw(self, wid: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        with socket_address(self.paths[wid]) as address:
            sock.connect(address)
        return sock


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = Server(tmp_path)
    yield s
    s.server.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_requests_name_the_worker_of_the_socket_they_arrive_on(server: Server) -> None:
    ch0, ch1 = Channel(server.paths[0]), Channel(server.paths[1])
    try:
        assert ch1.request("progress", line="from 1", worker=0) == {"ok": True, "worker": 1, "size": None}
        assert ch0.request("finish", b"bundle", task="A") == {"ok": True, "worker": 0, "size": 6}
    finally:
        ch0.close()
        ch1.close()
    assert [(wid, m.get("op")) for wid, m, _ in server.seen] == [(1, "progress"), (0, "finish")]
    assert server.seen[1][2] == b"bundle"
    for path in server.paths.values():  # only the owner may connect
        assert os.stat(path).st_mode & 0o777 == 0o600


BAD_FRAMES = {
    "an oversized message": b"x" * (P.MAX_MESSAGE_BYTES + 2),
    "an oversized message with its end of line": b'{"op": "progress", "line": "' + b"x" * P.MAX_MESSAGE_BYTES + b'"}\n',
    "an oversized blob": json.dumps({"op": "finish", "blob": P.MAX_BUNDLE_BYTES + 1}).encode() + b"\n",
    "non-JSON": b"{op: finish}\n",
    "a non-object": b'["op", "finish"]\n',
    "a negative blob length": b'{"op": "finish", "blob": -5}\n',
}


@pytest.mark.parametrize("bad", list(BAD_FRAMES))
def test_a_bad_frame_closes_that_connection_only(server: Server, bad: str) -> None:
    other = Channel(server.paths[1])
    assert other.request("progress", line="before")["ok"]
    sock = server.raw(0)
    try:
        try:
            sock.sendall(BAD_FRAMES[bad])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before it took everything
        assert _closed_by_peer(sock), "the server kept a connection that broke the protocol"
    finally:
        sock.close()
    assert other.request("progress", line="after") == {"ok": True, "worker": 1, "size": None}
    other.close()
    again = Channel(server.paths[0])  # the worker itself may connect again
    assert again.request("hello")["worker"] == 0
    again.close()
    assert all(m.get("op") in ("progress", "hello") for _, m, _ in server.seen)  # the bad frame reached no handler


def test_unknown_requests_and_handler_errors_are_refused_on_a_live_connection(server: Server) -> None:
    ch = Channel(server.paths[0])
    try:
        reply = ch.request("delete-everything")
        assert reply["ok"] is False and "unknown request 'delete-everything'" in reply["error"]
        assert ch.request("x" * 1000)["ok"] is False
        sock_reply = ch.request("progress", line="raise")
        assert sock_reply["ok"] is False and "RuntimeError: handler bug" in sock_reply["error"]
        assert ch.request("hello") == {"ok": True, "worker": 0, "size": None}  # the connection is still served
    finally:
        ch.close()
    # A message without any op is refused too.
    sock = server.raw(0)
    with sock:
        sock.sendall(b'{"task": "A"}\n')
        reply, _ = recv_frame(_Reader(sock))
        assert reply["ok"] is False and "unknown request" in reply["error"]
    assert [m["op"] for _, m, _ in server.seen] == ["progress", "hello"]


def test_a_socket_path_longer_than_an_address_holds_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = str(deep / "channel" / "worker-0" / P.CHANNEL_SOCKET)
    assert len(os.fsencode(path)) > 107
    with pytest.raises(OSError):  # what the plain address would do
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(path)
    server = ChannelServer({0: path}, lambda wid, m, b: {"ok": True, "op": m["op"]}).start()
    try:
        assert os.path.exists(path)
        ch = Channel(path)
        assert ch.request("hello") == {"ok": True, "op": "hello"}
        ch.close()
    finally:
        server.close()
    assert not os.path.exists(path)  # removed on close


def test_a_stale_socket_is_replaced_and_a_directory_in_its_place_refused(tmp_path: Path) -> None:
    from mahabharatha.errors import LaunchError

    path = str(tmp_path / "ch" / P.CHANNEL_SOCKET)
    first = ChannelServer({0: path}, lambda wid, m, b: {"ok": True, "n": 1}).start()
    first.listeners[0].close()  # as if its orchestrator was killed: the socket file stays
    assert os.path.exists(path)
    second = ChannelServer({0: path}, lambda wid, m, b: {"ok": True, "n": 2}).start()
    try:
        ch = Channel(path)
        assert ch.request("hello")["n"] == 2
        ch.close()
    finally:
        second.close()
    os.makedirs(path)
    with pytest.raises(LaunchError, match="is a directory"):
        ChannelServer({0: path}, lambda wid, m, b: {"ok": True}).start()


def test_closing_the_server_ends_a_waiting_request(server: Server, tmp_path: Path) -> None:
    release = threading.Event()

    def slow(wid: int, message: dict[str, Any], blob: bytes | None) -> dict[str, Any]:
        release.wait(10)
        return {"ok": True}

    path = str(tmp_path / "slow" / P.CHANNEL_SOCKET)
    slow_server = ChannelServer({0: path}, slow).start()
    ch = Channel(path)
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: errors.append(_expect_error(ch)), daemon=True)
    t.start()
    time.sleep(0.2)
    slow_server.close()
    t.join(5)
    release.set()
    ch.close()
    assert not t.is_alive() and isinstance(errors[0], ChannelError)


def _expect_error(ch: Channel) -> BaseException | None:
    try:
        ch.request("claim")
    except ChannelError as exc:
        return exc
    return None
