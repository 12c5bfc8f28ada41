"""The stream-json reader (mahabharatha/worker/agent_stream.py): recorded streams of the real claude 2.1.332
(tests/fakes/streams/), hand-written ones for what the recordings lack, and property tests."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.worker import agent_stream
from mahabharatha.worker.agent_stream import DEFAULT_CONTEXT_WINDOW, StreamParser, Usage, tool_summary

STREAMS = Path(__file__).resolve().parents[1] / "fakes" / "streams"


def replay(name: str, **kwargs: Any) -> tuple[StreamParser, list[str]]:
    parser = StreamParser(**kwargs)
    out: list[str] = []
    for line in (STREAMS / name).read_text(encoding="utf-8").splitlines(keepends=True):
        out.extend(parser.feed(line))
    return parser, out


def event(**fields: Any) -> str:
    return json.dumps(fields) + "\n"


def assistant(msg_id: str, content: list[dict[str, Any]], model: str = "claude-sonnet-4-5", **usage: int) -> str:
    return event(type="assistant", message={"id": msg_id, "model": model, "content": content, "usage": usage})


# ---------------------------------------------------------------- recorded streams


def test_recorded_write_stream() -> None:
    parser, out = replay("write_nonroot.jsonl")
    assert out == [
        "agent claude-code 2.1.332 model=claude-opus-5-5 permissions=bypassPermissions",
        "text I'll create the file.",
        "tool Write file_path=hello.py",  # /workspace/hello.py, shown relative to the session's cwd
        "text Created hello.py.",
        "result ok turns=2 cost=$0.0338 tokens in=6200 out=80 cache_read=24500 cache_write=500 0.2s",
    ]
    assert parser.usage.to_dict() == {
        "input_tokens": 6200,
        "output_tokens": 80,
        "cache_read_tokens": 24500,
        "cache_creation_tokens": 500,
        "cost_usd": 0.0338,
        "turns": 2,
        "duration_ms": 213,
        "model": "claude-opus-5-5",
    }
    # The last assistant message: 3200 input + 12500 cache read + 0 cache creation; the window from modelUsage.
    assert (parser.context_tokens, parser.context_window) == (15700, 1_000_000)
    assert parser.max_context_tokens == 15700
    assert not parser.is_error and not parser.prompt_too_long
    assert parser.failure_reason(0, []) is None


def test_recorded_root_sandbox_stream_reads_the_same() -> None:
    assert replay("write_root_sandbox.jsonl")[1][:4] == replay("write_nonroot.jsonl")[1][:4]


def test_recorded_bash_stream_shows_the_command_and_the_first_line() -> None:
    parser, out = replay("bash.jsonl")
    assert "tool Bash command=python3 -c 'print(6*7)'" in out
    assert "text The answer is 42. …" in out  # a second line followed
    assert parser.context_tokens == 5100 + 150000 + 100
    assert parser.usage.cost_usd == pytest.approx(0.094)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("not_logged_in.jsonl", "Not logged in · Please run /login"),
        ("invalid_api_key.jsonl", "Invalid API key · Fix external API key"),
        ("overloaded.jsonl", "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try"),
        ("prompt_too_long.jsonl", "Prompt is too long · the request is ~215000 tokens (limit 200000)"),
    ],
)
def test_recorded_failures_give_the_words_users_need(name: str, reason: str) -> None:
    parser, out = replay(name)
    assert parser.is_error  # though the result's subtype says "success"
    got = parser.failure_reason(1, ["some earlier stderr line"])
    assert got is not None and got.startswith(reason) and "\n" not in got and len(got) <= agent_stream.WIDTH
    assert out[-1].startswith("result error ") and reason[:30] in out[-1]
    assert any(line.startswith("error " + reason[:30]) for line in out)  # the API error as it happened
    assert parser.prompt_too_long == (name == "prompt_too_long.jsonl")
    assert parser.usage.cost_usd == 0 and parser.context_tokens == 0  # synthetic messages use no context


def test_recorded_retries_are_one_line_each() -> None:
    assert "retry 1/1 in 568 ms: API error 401 authentication_failed" in replay("invalid_api_key.jsonl")[1]


def test_root_refusal_comes_from_stderr() -> None:
    parser = StreamParser()
    stderr = (STREAMS / "root_refusal.stderr").read_text().splitlines()
    assert parser.failure_reason(1, stderr) == (
        "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
    )
    assert parser.usage == Usage()


# ---------------------------------------------------------------- hand-written streams


def test_without_a_result_usage_is_summed_once_per_message() -> None:
    parser = StreamParser(context_window=100_000)
    usage = {"input_tokens": 1000, "output_tokens": 1, "cache_read_input_tokens": 40000, "cache_creation_input_tokens": 500}
    # One API message arrives as one line per content block, with the same id and usage.
    parser.feed(assistant("msg_1", [{"type": "text", "text": "Reading."}], **usage))
    parser.feed(assistant("msg_1", [{"type": "tool_use", "name": "Read", "input": {"file_path": "/w/a.py"}}], **usage))
    assert (parser.context_tokens, parser.context_percent) == (41500, 41.5)
    parser.feed(assistant("msg_2", [{"type": "text", "text": "Done."}], input_tokens=2000, output_tokens=30,
                          cache_read_input_tokens=80000, cache_creation_input_tokens=0))
    assert parser.context_tokens == 82000 and parser.over(80) and not parser.over(90)
    assert parser.usage == Usage(input_tokens=3000, output_tokens=31, cache_read_tokens=120000,
                                 cache_creation_tokens=500, model="claude-sonnet-4-5")
    assert parser.failure_reason(137, []) == "the agent exited 137 without a result"
    assert parser.failure_reason(-9, []) == "the agent was killed by signal 9"
    assert parser.failure_reason(None, []) == "the agent ended without a result"


def test_the_default_window_holds_until_the_stream_names_one() -> None:
    parser = StreamParser(context_window=150_000)
    parser.feed(assistant("m", [], input_tokens=120_000))
    assert parser.context_window == 150_000 and parser.over(80)
    parser.feed(event(type="result", subtype="success", is_error=False, result="ok", usage={},
                      modelUsage={"claude-haiku": {"contextWindow": 200_000},
                                  "claude-sonnet-4-5": {"contextWindow": 1_000_000}}))
    assert parser.context_window == 1_000_000  # the main model's, not the side model's
    assert StreamParser(context_window=0).context_window == DEFAULT_CONTEXT_WINDOW


def test_error_subtypes_and_tool_failures() -> None:
    parser = StreamParser()
    out = parser.feed(event(type="user", message={"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "is_error": True, "content": "Exit code 2\npytest: no tests ran"},
        {"type": "tool_result", "tool_use_id": "u", "content": "fine"},
    ]}))
    assert out == ["tool failed: Exit code 2 …"]
    out = parser.feed(event(type="result", subtype="error_max_turns", is_error=True, num_turns=30, usage={}))
    assert parser.failure_reason(1, []) == "error_max_turns: stopped after 30 turns"
    assert out[0].startswith("result error turns=30")
    parser.feed(event(type="result", subtype="error_during_execution", is_error=True,
                      errors=["Tool permission request failed", ""]))
    assert parser.failure_reason(1, ["ignored"]) == "Tool permission request failed"


def test_prompt_too_long_from_stderr_or_a_later_result() -> None:
    parser = StreamParser()
    assert parser.failure_reason(1, ["", "Prompt is too long", "  "]) == "Prompt is too long"
    assert parser.prompt_too_long
    parser = StreamParser()
    parser.feed(event(type="result", subtype="success", is_error=True, result="Prompt is too long", usage={}))
    assert parser.prompt_too_long and parser.failure_reason(1) == "Prompt is too long"


def test_plain_stdout_and_other_json_pass_through_unchanged() -> None:
    parser = StreamParser()
    for line in ["hello from a scripted agent", "", "   indented", "{not json", "[1, 2]", '{"no": "type"}',
                 '{"type": "custom_thing", "x": 1}', "42"]:
        assert parser.feed(line + "\n") == [line]
    assert parser.feed(event(type="stream_event", event={"type": "ping"})) == []
    # No stream-json at all: the last plain line is the reason.
    parser = StreamParser()
    parser.feed("Error: Input must be provided either through stdin or as a prompt argument when using --print\n")
    assert parser.failure_reason(1, []) == (
        "Error: Input must be provided either through stdin or as a prompt argument when using --print"
    )
    assert parser.failure_reason(1, ['{"type": "result"}', "real stderr"]) == "real stderr"


def test_a_surprising_shape_is_printed_not_raised() -> None:
    parser = StreamParser()
    weird = event(type="assistant", message={"content": [{"type": "tool_use", "name": "Write", "input": None}],
                                             "usage": {"input_tokens": "many"}})
    assert parser.feed(weird) == ["tool Write"]
    assert parser.feed(event(type="result", usage={"input_tokens": -5}, num_turns=True)) == [
        "result ok tokens in=0 out=0 cache_read=0 cache_write=0"
    ]


@pytest.mark.parametrize(
    ("name", "tool_input", "line"),
    [
        ("Write", {"file_path": "/workspace/src/a.py", "content": "x = 1\n" * 1000}, "tool Write file_path=src/a.py"),
        ("Edit", {"file_path": "/elsewhere/b.py", "old_string": "a", "new_string": "b"}, "tool Edit file_path=/elsewhere/b.py"),
        ("Bash", {"command": "cd src &&\n  pytest -q", "description": "run"}, "tool Bash command=cd src && pytest -q"),
        ("Grep", {"pattern": "TODO", "path": "/workspace/src"}, "tool Grep pattern=TODO path=src"),
        ("TodoWrite", {"todos": [{}, {}, {}]}, "tool TodoWrite todos=3"),
        ("mcp__x__search", {"limit": 3, "q": "docs"}, "tool mcp__x__search q=docs"),
        ("Read", "not a dict", "tool Read"),
    ],
)
def test_tool_lines(name: str, tool_input: Any, line: str) -> None:
    assert tool_summary(name, tool_input, cwd="/workspace") == line


def test_long_lines_are_cut() -> None:
    parser = StreamParser(width=60)
    (text,) = parser.feed(assistant("m", [{"type": "text", "text": "word " * 100}]))
    (tool,) = parser.feed(assistant("n", [{"type": "tool_use", "name": "Bash", "input": {"command": "x" * 500}}]))
    assert len(text) == len(tool) == 60 and text.endswith("…") and tool.startswith("tool Bash command=xxx")


def test_stdlib_only_like_the_rest_of_the_worker() -> None:
    tree = ast.parse(Path(agent_stream.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 or node.module in (None, "protocol"), node.module
            if node.level == 0:
                imported.add((node.module or "").split(".")[0])
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


# ---------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=10,
)
keys = st.sampled_from(["type", "subtype", "message", "content", "usage", "model", "id", "text", "name", "input",
                        "result", "is_error", "modelUsage", "contextWindow", "input_tokens", "num_turns", "cwd",
                        "errors", "tool_use", "tool_result", "attempt"])
shaped = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["system", "assistant", "user", "result", "init", "api_retry", "text", "tool_use",
                       "tool_result", "<synthetic>", "error_max_turns"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=15,
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["system", "assistant", "user", "result", "stream_event", "other"])},
    optional={"subtype": shaped, "message": shaped, "result": shaped, "usage": shaped, "modelUsage": shaped,
              "is_error": st.booleans(), "num_turns": st.integers()},
)


def _check(parser: StreamParser, out: list[str]) -> None:
    assert isinstance(out, list) and all(isinstance(x, str) for x in out)
    parser.usage.to_dict()
    assert parser.context_percent >= 0 and parser.context_window > 0
    reason = parser.failure_reason(1, ["tail"])
    assert isinstance(reason, str) and "\n" not in reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=10))
def test_arbitrary_text_never_raises(lines: list[str]) -> None:
    parser = StreamParser()
    for line in lines:
        _check(parser, parser.feed(line))


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values | events, max_size=4))
def test_arbitrary_json_never_raises_and_summaries_are_one_line(values: list[Any]) -> None:
    parser = StreamParser()
    for value in values:
        line = json.dumps(value)
        out = parser.feed(line + "\n")
        _check(parser, out)
        if out != [line]:  # not passed through: the parser's own lines
            assert all("\n" not in x and len(x) <= agent_stream.WIDTH for x in out)
