"""Claude Code's ``--output-format stream-json --verbose`` output, read line by line (standard library only).

The worker runs the agent with its stdout piped through a :class:`StreamParser`::

    parser = StreamParser(context_window=200_000)
    for line in agent.stdout:
        for text in parser.feed(line):
            print(text)                      # the readable log
        if parser.context_percent >= 80:     # stop the agent before its context overflows
            ...
    usage = parser.usage.to_dict()           # per-task tokens, cost, turns, duration, model
    reason = parser.failure_reason(agent.returncode, stderr_tail)

What the stream looks like (Claude Code 2.1.x, one JSON object per line):

- ``{"type": "system", "subtype": "init", "model": ..., "cwd": ..., "claude_code_version": ...}`` first;
  ``{"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10, "error_status": 529, ...}``
  before each retry.
- ``{"type": "assistant", "message": {"id", "model", "content": [...], "usage": {...}}}`` once per content
  block: one API message with a text and a tool call arrives as two lines with the same ``message.id`` and the
  same usage (``output_tokens`` as of the message's start). An API error becomes a synthetic message
  (``"model": "<synthetic>"``, ``"is_api_error_message": true``) whose text is the error users see.
- ``{"type": "user", "message": {"content": [{"type": "tool_result", "is_error": ..., ...}]}}`` tool results.
- ``{"type": "result", "subtype": "success", "is_error": bool, "result": "text", "total_cost_usd",
  "num_turns", "duration_ms", "usage", "modelUsage": {"<model>": {"contextWindow": ...}}}`` last. A failed run
  still says ``"subtype": "success"``: ``is_error`` is what tells (``error_max_turns`` and
  ``error_during_execution`` are the other subtypes).
- ``{"type": "rate_limit_event", "rate_limit_info": {"status": "allowed", ...}}`` with a subscription (OAuth)
  login, after a message: logged only when the status is not ``allowed`` (a warning, or rejected).

Lines that are not such JSON objects pass through unchanged (a line that starts like one but does not parse,
one cut short when the agent was stopped mid-write, is logged as a short note instead). Nothing here raises
on odd input: a line the parser cannot make sense of is printed as it came.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "StreamParser",
    "Usage",
    "tool_summary",
]

DEFAULT_CONTEXT_WINDOW = 200_000
WIDTH = 200  # log lines and failure reasons are cut to this many characters

# Which input names a tool call by, in the one log line it gets.
_TOOL_KEYS = {
    "Bash": ("command",),
    "Write": ("file_path",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "Read": ("file_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern", "path"),
    "Grep": ("pattern", "path"),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description",),
    "Agent": ("description",),
}
_PATH_KEYS = frozenset({"file_path", "notebook_path", "path"})
_SPACE = re.compile(r"\s+")
_SYNTHETIC = "<synthetic>"
_TOO_LONG = "prompt is too long"


@dataclass
class Usage:
    """Tokens and cost of one agent run. From the final ``result`` when the stream has one, else summed over
    the assistant messages (then ``output_tokens`` is a lower bound and cost/turns/duration stay None)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float | None = None
    turns: int | None = None
    duration_ms: int | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _count_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _one_line(text: Any, width: int = WIDTH) -> str:
    """``text`` squeezed onto one line and cut to ``width`` (an ellipsis marks a cut)."""
    flat = _SPACE.sub(" ", str(text)).strip()
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _first_line(text: str, width: int = WIDTH) -> str:
    """The first non-empty line of ``text``, cut to ``width``; an ellipsis says more lines followed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    first = _one_line(lines[0], width)
    if len(lines) > 1 and not first.endswith("…"):
        first = _one_line(first + " …", width)
    return first


def _relative(path: str, cwd: str | None) -> str:
    if cwd and path.startswith(cwd.rstrip("/") + "/"):
        return path[len(cwd.rstrip("/")) + 1 :]
    return path


def tool_summary(name: str, tool_input: Any, *, cwd: str | None = None, width: int = WIDTH) -> str:
    """One log line for a tool call: ``tool Write file_path=src/a.py``, ``tool Bash command=pytest -q``.

    Paths under ``cwd`` are shown relative to it. Tools without a known key show their first text input."""
    shown: list[str] = []
    if isinstance(tool_input, dict):
        keys = _TOOL_KEYS.get(name) or tuple(k for k, v in tool_input.items() if isinstance(v, str))[:1]
        for key in keys:
            value = tool_input.get(key)
            if isinstance(value, str) and value:
                shown.append(f"{key}={_relative(value, cwd) if key in _PATH_KEYS else value}")
        if name == "TodoWrite" and isinstance(tool_input.get("todos"), list):
            shown.append(f"todos={len(tool_input['todos'])}")
    return _one_line(" ".join(["tool", _one_line(name, 60), *shown]), width)


class StreamParser:
    """Turns Claude Code's stream-json lines into log lines, a :class:`Usage`, the context in use and, for a
    failed run, a one-line reason.

    ``context_window`` is the window assumed until the stream names one (``modelUsage[*].contextWindow`` of
    the final result). ``width`` caps log lines and reasons."""

    def __init__(self, context_window: int = DEFAULT_CONTEXT_WINDOW, *, width: int = WIDTH) -> None:
        self.context_window = context_window if _int(context_window) > 0 else DEFAULT_CONTEXT_WINDOW
        self.width = width
        self.context_tokens = 0  # input + cache read + cache creation of the latest assistant message
        self.max_context_tokens = 0
        self.model: str | None = None
        self.cwd: str | None = None
        self.result: dict[str, Any] | None = None  # the last ``result`` object
        self.prompt_too_long = False
        self.api_error: str | None = None  # the text of the last synthetic API-error message
        self._messages: dict[str, dict[str, int]] = {}  # message id -> its usage (max per field)
        self._anonymous = 0
        self._last_text: str | None = None  # last non-JSON stdout line (a plain error an agent printed)

    # ------------------------------------------------------------------ reading

    def feed(self, line: str) -> list[str]:
        """Read one stdout line; return the log lines to print for it (none, one, or a few)."""
        raw = line.rstrip("\r\n")
        stripped = raw.strip()
        event: Any = None
        if stripped.startswith("{"):
            try:
                event = json.loads(stripped)
            except ValueError:
                event = None
        if event is None and stripped.startswith('{"type":'):
            # A stream line cut short (the agent was stopped mid-write): say so, not a fragment of JSON.
            return [f"(a stream line cut short: {len(stripped)} characters)"]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            if stripped:
                self._last_text = stripped
            return [raw]
        handler = {
            "system": self._on_system,
            "assistant": self._on_assistant,
            "user": self._on_user,
            "result": self._on_result,
            "rate_limit_event": self._on_rate_limit,
        }.get(event["type"])
        if handler is None:
            return [] if event["type"] in _QUIET_TYPES else [raw]
        try:
            return [text for text in handler(event) if text]
        except Exception:  # noqa: BLE001 - a surprising shape must never stop the log
            return [raw]

    def _on_system(self, event: dict[str, Any]) -> list[str]:
        subtype = event.get("subtype")
        if subtype == "init":
            if isinstance(event.get("model"), str):
                self.model = event["model"]
            if isinstance(event.get("cwd"), str):
                self.cwd = event["cwd"]
            version = event.get("claude_code_version")
            words = ["agent", f"claude-code {version}" if isinstance(version, str) else "claude-code"]
            if self.model:
                words.append(f"model={self.model}")
            if isinstance(event.get("permissionMode"), str):
                words.append(f"permissions={event['permissionMode']}")
            return [_one_line(" ".join(words), self.width)]
        if subtype == "api_retry":
            attempt, most = event.get("attempt"), event.get("max_retries")
            status, error = event.get("error_status"), event.get("error")
            delay = event.get("retry_delay_ms")
            text = f"retry {attempt}/{most}"
            if isinstance(delay, (int, float)):
                text += f" in {int(delay)} ms"
            cause = " ".join(str(x) for x in (status, error) if x is not None)
            return [_one_line(f"{text}: API error {cause}" if cause else text, self.width)]
        if subtype == "compact_boundary":
            return ["context compacted"]
        return []

    def _on_rate_limit(self, event: dict[str, Any]) -> list[str]:
        info = event.get("rate_limit_info")
        info = info if isinstance(info, dict) else {}
        status = info.get("status")
        if status == "allowed" or not isinstance(status, str):
            return []
        words = [f"rate limit {status}"]
        if isinstance(info.get("rateLimitType"), str):
            words.append(f"({info['rateLimitType']})")
        resets = info.get("resetsAt")
        if isinstance(resets, (int, float)) and not isinstance(resets, bool) and 0 < resets < 1e11:
            words.append("resets " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(resets)))
        return [_one_line(" ".join(words), self.width)]

    def _on_assistant(self, event: dict[str, Any]) -> list[str]:
        message = event.get("message")
        if not isinstance(message, dict):
            return []
        model = message.get("model")
        synthetic = model == _SYNTHETIC or event.get("is_api_error_message") is True
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        out: list[str] = []
        if synthetic:
            texts = [b.get("text") for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]
            text = " ".join(t for t in texts if t.strip())
            if text:
                self.api_error = _first_line(text, self.width)
                if _TOO_LONG in text.lower():
                    self.prompt_too_long = True
                out.append(_one_line("error " + self.api_error, self.width))
            return out
        if isinstance(model, str) and model:
            self.model = model
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._count(message.get("id"), usage)
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                first = _first_line(block["text"], self.width - 5)
                if first:
                    out.append("text " + first)
            elif block.get("type") == "tool_use":
                out.append(tool_summary(str(block.get("name", "?")), block.get("input"), cwd=self.cwd, width=self.width))
        return out

    def _count(self, message_id: Any, usage: dict[str, Any]) -> None:
        fields = {
            "input_tokens": _int(usage.get("input_tokens")),
            "output_tokens": _int(usage.get("output_tokens")),
            "cache_read_tokens": _int(usage.get("cache_read_input_tokens")),
            "cache_creation_tokens": _int(usage.get("cache_creation_input_tokens")),
        }
        if not isinstance(message_id, str) or not message_id:
            self._anonymous += 1
            message_id = f"#{self._anonymous}"
        seen = self._messages.setdefault(message_id, dict.fromkeys(fields, 0))
        for key, value in fields.items():
            seen[key] = max(seen[key], value)
        self.context_tokens = seen["input_tokens"] + seen["cache_read_tokens"] + seen["cache_creation_tokens"]
        self.max_context_tokens = max(self.max_context_tokens, self.context_tokens)

    def _on_user(self, event: dict[str, Any]) -> list[str]:
        message = event.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        out: list[str] = []
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result" and block.get("is_error") is True:
                body = block.get("content")
                if isinstance(body, list):
                    body = " ".join(str(b.get("text", "")) for b in body if isinstance(b, dict))
                out.append(_one_line("tool failed: " + _first_line(str(body or ""), self.width), self.width))
        return out

    def _on_result(self, event: dict[str, Any]) -> list[str]:
        self.result = event
        windows = []
        model_usage = event.get("modelUsage")
        if isinstance(model_usage, dict):
            main = model_usage.get(self.model) if self.model else None
            for entry in [main] if isinstance(main, dict) else list(model_usage.values()):
                if isinstance(entry, dict) and _int(entry.get("contextWindow")) > 0:
                    windows.append(_int(entry["contextWindow"]))
        if windows:
            self.context_window = max(windows)
        text = event.get("result") if isinstance(event.get("result"), str) else ""
        if event.get("terminal_reason") == "prompt_too_long" or (
            self.is_error and _TOO_LONG in text.lower()
        ):
            self.prompt_too_long = True
        usage = self.usage
        words = ["result", "error" if self.is_error else "ok"]
        if usage.turns is not None:
            words.append(f"turns={usage.turns}")
        if usage.cost_usd is not None:
            words.append(f"cost=${usage.cost_usd:.4f}")
        words.append(
            f"tokens in={usage.input_tokens} out={usage.output_tokens} "
            f"cache_read={usage.cache_read_tokens} cache_write={usage.cache_creation_tokens}"
        )
        if usage.duration_ms is not None:
            words.append(f"{usage.duration_ms / 1000:.1f}s")
        line = " ".join(words)
        if self.is_error:
            reason = self._result_reason()
            if reason:
                line += ": " + reason
        return [_one_line(line, self.width)]

    # ------------------------------------------------------------------ what callers read

    @property
    def is_error(self) -> bool:
        """True when the final result says the run failed (``is_error`` or an ``error_*`` subtype)."""
        if self.result is None:
            return False
        subtype = self.result.get("subtype")
        return self.result.get("is_error") is True or (isinstance(subtype, str) and subtype.startswith("error"))

    @property
    def usage(self) -> Usage:
        """Tokens, cost, turns, duration and model of the run so far."""
        result = self.result
        if result is not None and isinstance(result.get("usage"), dict):
            u = result["usage"]
            return Usage(
                input_tokens=_int(u.get("input_tokens")),
                output_tokens=_int(u.get("output_tokens")),
                cache_read_tokens=_int(u.get("cache_read_input_tokens")),
                cache_creation_tokens=_int(u.get("cache_creation_input_tokens")),
                cost_usd=_number(result.get("total_cost_usd")),
                turns=_count_or_none(result.get("num_turns")),
                duration_ms=_count_or_none(result.get("duration_ms")),
                model=self.model,
            )
        total = Usage(model=self.model)
        for seen in self._messages.values():
            total.input_tokens += seen["input_tokens"]
            total.output_tokens += seen["output_tokens"]
            total.cache_read_tokens += seen["cache_read_tokens"]
            total.cache_creation_tokens += seen["cache_creation_tokens"]
        if result is not None:
            total.cost_usd = _number(result.get("total_cost_usd"))
        return total

    @property
    def context_percent(self) -> float:
        """The context in use as a percentage of the window (0 before the first assistant message)."""
        return 100.0 * self.context_tokens / self.context_window

    def over(self, threshold_percent: float) -> bool:
        """True once the context in use reaches ``threshold_percent`` of the window."""
        return self.context_tokens > 0 and self.context_percent >= threshold_percent

    def _result_reason(self) -> str:
        result = self.result or {}
        text = result.get("result")
        if isinstance(text, str) and text.strip():
            return _first_line(text, self.width)
        errors = result.get("errors")
        if isinstance(errors, list):
            words = [str(e) for e in errors if str(e).strip()]
            if words:
                return _one_line("; ".join(words), self.width)
        subtype = result.get("subtype")
        if isinstance(subtype, str) and subtype.startswith("error"):
            if subtype == "error_max_turns" and _count_or_none(result.get("num_turns")) is not None:
                return f"error_max_turns: stopped after {result['num_turns']} turns"
            return subtype
        if self.api_error:
            return self.api_error
        return ""

    def failure_reason(self, exit_code: int | None, tail_lines: Iterable[str] = ()) -> str | None:
        """One line saying why the agent failed, or None when it did not (exit 0 and no error result).

        From the result when it reports an error ("Not logged in · Please run /login", "Invalid API key · Fix
        external API key", "API Error: 529 Overloaded ...", "Prompt is too long ..."), else from the last
        non-empty, non-JSON line of ``tail_lines`` (the agent's stderr, e.g. "--dangerously-skip-permissions
        cannot be used with root/sudo privileges for security reasons"), else the last plain stdout line,
        else the exit code."""
        if exit_code == 0 and not self.is_error:
            return None
        if self.is_error:
            reason = self._result_reason()
            if reason:
                return reason
        last = None
        for line in tail_lines:
            text = str(line).strip()
            if text and not (text.startswith("{") and text.endswith("}")):
                last = text
        if last is None and self.api_error:
            last = self.api_error
        if last is None:
            last = self._last_text
        if last is not None:
            if _TOO_LONG in last.lower():
                self.prompt_too_long = True
            return _first_line(last, self.width)
        if exit_code is None:
            return "the agent ended without a result"
        if exit_code < 0:
            return f"the agent was killed by signal {-exit_code}"
        if self.result is not None:
            return f"the agent exited {exit_code} after its result"
        return f"the agent exited {exit_code} without a result"


# Event types the parser knows and deliberately prints nothing for (partial-message deltas, hook chatter).
_QUIET_TYPES = frozenset({"stream_event", "control_request", "control_response", "keep_alive"})
