#!/usr/bin/env python3
"""A scripted fake of the Anthropic Messages API, enough for the real Claude Code CLI (standard library only).

    python3 fake_anthropic.py --port P --script FILE --log FILE [--host 127.0.0.1]

Point Claude Code at it with ``ANTHROPIC_BASE_URL=http://127.0.0.1:P``, any ``ANTHROPIC_API_KEY`` and
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``. ``--port 0`` picks a free port; the first line on stdout is
always ``fake-anthropic listening on HOST:PORT``. Standard library only, so tests can copy this one file into a
worker container and run it there with ``python3``.

The script (JSON) is a list of turns, or ``{"turns": [...], "model": "..."}``. Each request the agent loop
makes (a ``POST /v1/messages`` that carries ``tools``) answers with the next turn; when the turns run out,
every further request answers ``{"text": "Done."}``. A turn is one of

    {"text": "I will write it."}                                  a text answer (stop_reason end_turn)
    {"tool_use": {"name": "Write", "input": {"file_path": "/w/a.py", "content": "x = 1\\n"}},
     "text": "optional words before the call"}                     a tool call (stop_reason tool_use)
    {"error": 401} | {"error": 529} | {"error": 400}               an API error (see ERRORS), or in full:
    {"error": {"status": 400, "type": "invalid_request_error", "message": "prompt is too long: ..."}}

Any turn may add ``"usage": {"input_tokens": .., "output_tokens": .., "cache_read_input_tokens": ..,
"cache_creation_input_tokens": ..}`` (drive context use up with big input numbers) and ``"times": N`` (answer N
requests with it; ``-1``: every request from then on, e.g. an error the CLI retries).

Requests without ``tools`` (a side request such as a title or a quota probe) get a short text answer and use
no turn. ``POST /v1/messages/count_tokens`` answers a token count; anything else answers 404 in the API's error
shape. Every request is appended to the ``--log`` file as one JSON object per line (method, path, model,
stream, tools, auth scheme and a digest of the credential (never the credential itself), the turn index it
used, the first user text: its start, its length and its end) so a test can assert what was called.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_USAGE = {
    "input_tokens": 1200,
    "output_tokens": 40,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}
# Error bodies exactly as the real API shapes them: {"type": "error", "error": {"type": ..., "message": ...}}.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class Script:
    """The turns, handed out one per agent request (thread-safe)."""

    def __init__(self, turns: list[dict[str, Any]], model: str | None = None) -> None:
        self.turns = [dict(turn) for turn in turns]
        self.model = model
        self.index = 0
        self.used = 0  # requests answered by turns[index] so far
        self.lock = threading.Lock()

    @classmethod
    def load(cls, path: str | None) -> Script:
        if not path:
            return cls([])
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            return cls(data)
        return cls(list(data.get("turns", [])), data.get("model"))

    def next_turn(self) -> tuple[int | None, dict[str, Any]]:
        with self.lock:
            if self.index >= len(self.turns):
                return None, {"text": "Done."}
            index, turn = self.index, self.turns[self.index]
            times = int(turn.get("times", 1))
            self.used += 1
            if times >= 0 and self.used >= times:
                self.index += 1
                self.used = 0
            return index, turn


def _usage(turn: dict[str, Any]) -> dict[str, int]:
    usage = dict(DEFAULT_USAGE)
    usage.update({k: int(v) for k, v in (turn.get("usage") or {}).items()})
    return usage


def _blocks(turn: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.get("text"):
        blocks.append({"type": "text", "text": str(turn["text"])})
    call = turn.get("tool_use")
    if call:
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": call["name"],
                "input": call.get("input", {}),
            }
        )
    if not blocks:
        blocks.append({"type": "text", "text": "Done."})
    return blocks


def _message(model: str, blocks: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def sse_events(message: dict[str, Any]) -> bytes:
    """The message as the streaming API sends it: message_start, one start/delta/stop per content block,
    message_delta (stop reason and usage), message_stop."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                )
            )
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}},
                )
            )
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            events.append(
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
            )
            text = json.dumps(block["input"])
            for piece in (text[: len(text) // 2], text[len(text) // 2 :]):  # two partial deltas, like the API
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": usage,
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def _first_user_text(body: dict[str, Any]) -> str | None:
    """The whole text of the first user message (None when there is none)."""
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        texts = [c.get("text", "") for c in content or [] if isinstance(c, dict) and c.get("type") == "text"]
        # Claude Code puts reminders (<system-reminder>...) in text blocks before the prompt: keep the last one.
        if texts:
            return str(texts[-1])
    return None


def _prompt_fields(body: dict[str, Any]) -> dict[str, Any]:
    """What the log keeps of the prompt: its first 500 characters, its length and its last 200."""
    text = _first_user_text(body)
    if text is None:
        return {"prompt": None}
    return {"prompt": text[:500], "prompt_chars": len(text), "prompt_tail": text[-200:]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, every answer has a Content-Length
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests go to --log as JSON, not to stderr

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _auth(self) -> str | None:
        if self.headers.get("x-api-key"):
            return "x-api-key"
        if (self.headers.get("Authorization") or "").lower().startswith("bearer "):
            return "bearer"
        return None

    def _auth_digest(self) -> str | None:
        """sha256 (12 hex digits) of the credential sent, so a test can tell which one without logging it."""
        value = self.headers.get("x-api-key") or ""
        bearer = self.headers.get("Authorization") or ""
        if not value and bearer.lower().startswith("bearer "):
            value = bearer[len("bearer "):].strip()
        return hashlib.sha256(value.encode()).hexdigest()[:12] if value else None

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:24])
        if content_type == "text/event-stream":
            self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _send_error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def _record(self, **fields: Any) -> None:
        entry = {"method": self.command, "path": self.path, "auth": self._auth(), "auth_digest": self._auth_digest(), **fields}
        self.server.record(entry)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self._read_body()
        route = self.path.split("?", 1)[0]
        if route == "/v1/messages/count_tokens":
            self._record(model=body.get("model"))
            self._send_json(200, {"input_tokens": 1000})
            return
        if route != "/v1/messages":
            self._record()
            self._send_error(404, "not_found_error", f"Not found: {self.command} {route}")
            return
        model = self.server.script.model or str(body.get("model") or DEFAULT_MODEL)
        stream = bool(body.get("stream"))
        tools = len(body.get("tools") or [])
        index: int | None
        if tools:
            index, turn = self.server.script.next_turn()
        else:
            index, turn = None, {"text": "OK", "usage": {"input_tokens": 50, "output_tokens": 2}}
        self._record(model=model, stream=stream, tools=tools, turn=index, **_prompt_fields(body))
        error = turn.get("error")
        if error is not None:
            spec = error if isinstance(error, dict) else {"status": int(error)}
            status = int(spec.get("status", 400))
            kind, message = ERRORS.get(status, ("api_error", "error"))
            self._send_error(status, str(spec.get("type", kind)), str(spec.get("message", message)))
            return
        message = _message(model, _blocks(turn), _usage(turn))
        if stream:
            self._send(200, sse_events(message), "text/event-stream")
        else:
            self._send_json(200, message)

    def _other(self) -> None:
        self._record()
        if self.command != "HEAD":
            self._send_error(404, "not_found_error", f"Not found: {self.command} {self.path.split('?', 1)[0]}")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _other  # noqa: N815


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], script: Script, log_path: str | None) -> None:
        super().__init__(address, Handler)
        self.script = script
        self.log_path = log_path
        self.log_lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        if not self.log_path:
            return
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", help="JSON file of turns (default: every request answers 'Done.')")
    parser.add_argument("--log", help="append every request here, one JSON object per line")
    args = parser.parse_args(argv)
    server = FakeServer((args.host, args.port), Script.load(args.script), args.log)
    host, port = server.server_address[:2]
    print(f"fake-anthropic listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
