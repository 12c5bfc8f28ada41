"""The scripted fake Messages API (tests/fakes/fake_anthropic.py), in-process on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_anthropic.py"
_spec = importlib.util.spec_from_file_location("fake_anthropic", FAKE)
assert _spec and _spec.loader
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

TOOLS = [{"name": "Write", "input_schema": {"type": "object"}}]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[Any] = []

    def start(turns: list[dict[str, Any]]) -> tuple[str, Path]:
        log = tmp_path / f"requests-{len(servers)}.jsonl"
        server = fake.FakeServer(("127.0.0.1", 0), fake.Script(turns), str(log))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def post(url: str, body: dict[str, Any], path: str = "/v1/messages?beta=true") -> tuple[int, str, bytes]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"x-api-key": "sk-ant-test", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in raw.decode().strip().split("\n\n"):
        name, data = chunk.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name[7:], json.loads(data[6:])))
    return out


def test_streams_a_tool_call_the_way_the_api_does(serve: Any) -> None:
    write = {"file_path": "/workspace/a.py", "content": "x = 1\n"}
    url, log = serve([{"text": "Writing.", "tool_use": {"name": "Write", "input": write},
                       "usage": {"input_tokens": 150000, "cache_read_input_tokens": 20000}}])
    status, ctype, raw = post(url, {"model": "claude-x", "stream": True, "tools": TOOLS,
                                    "messages": [{"role": "user", "content": [{"type": "text", "text": "go"}]}]})
    assert status == 200 and ctype == "text/event-stream"
    evs = events(raw)
    names = [n for n, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    assert evs[0][1]["message"]["model"] == "claude-x"
    assert evs[0][1]["message"]["usage"]["input_tokens"] == 150000
    partial = "".join(d["delta"]["partial_json"] for n, d in evs
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == write
    delta = dict(evs)["message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["cache_read_input_tokens"] == 20000
    # Turns are used up: the next agent request just finishes.
    _, _, raw = post(url, {"model": "claude-x", "stream": True, "tools": TOOLS, "messages": []})
    assert dict(events(raw))["message_delta"]["delta"]["stop_reason"] == "end_turn"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["path"], e["turn"], e["auth"], e["prompt"]) for e in entries] == [
        ("/v1/messages?beta=true", 0, "x-api-key", "go"), ("/v1/messages?beta=true", None, "x-api-key", None)]


@pytest.mark.parametrize(("status", "kind", "words"), [
    (401, "authentication_error", "invalid x-api-key"),
    (529, "overloaded_error", "Overloaded"),
    (400, "invalid_request_error", "prompt is too long"),
])
def test_errors_have_the_api_shape_and_can_repeat(serve: Any, status: int, kind: str, words: str) -> None:
    url, _ = serve([{"error": status, "times": 2}, {"text": "ok"}])
    for _ in range(2):
        code, ctype, raw = post(url, {"stream": True, "tools": TOOLS, "messages": []})
        body = json.loads(raw)
        assert (code, ctype, body["type"], body["error"]["type"]) == (status, "application/json", "error", kind)
        assert words in body["error"]["message"]
    assert post(url, {"stream": True, "tools": TOOLS, "messages": []})[0] == 200


def test_side_requests_use_no_turn_and_unknown_paths_are_logged(serve: Any) -> None:
    url, log = serve([{"error": 401, "times": -1}])
    status, _, raw = post(url, {"stream": False, "messages": []})  # no tools: a side request
    assert status == 200 and json.loads(raw)["content"][0]["text"] == "OK"
    assert post(url, {"messages": []}, path="/v1/messages/count_tokens")[0] == 200
    assert post(url, {}, path="/api/hello")[0] == 404
    assert post(url, {"stream": True, "tools": TOOLS})[0] == 401
    assert post(url, {"stream": True, "tools": TOOLS})[0] == 401  # times -1: forever
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == [
        "/v1/messages?beta=true", "/v1/messages/count_tokens", "/api/hello",
        "/v1/messages?beta=true", "/v1/messages?beta=true"]
