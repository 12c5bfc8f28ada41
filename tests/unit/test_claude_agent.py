"""When the worker treats the agent command as Claude Code, and what it appends; the stream's rate-limit events."""

from __future__ import annotations

import pytest

from mahabharatha.worker.__main__ import claude_command, is_claude
from mahabharatha.worker.agent_stream import StreamParser

STREAM = "--output-format stream-json --verbose"


@pytest.mark.parametrize(
    "command",
    [
        "claude -p --dangerously-skip-permissions",
        'claude -p "$MAHABHARATHA_TASK_PROMPT" --dangerously-skip-permissions',
        "/usr/local/bin/claude -p",
        "ANTHROPIC_MODEL=claude-haiku-4-5 claude -p",
        "cd app && claude -p",
        "env -u FOO BAR=1 exec claude -p",
        ". fake/start.sh; claude -p --dangerously-skip-permissions",
        "python3 fake.py >/tmp/out 2>&1 & sleep 0.3; claude -p",
        "# a comment line\nclaude -p\n",
        "claude -p 2>&1",
    ],
)
def test_claude_run_last_gets_the_stream_options(command: str) -> None:
    assert is_claude(command)
    assert claude_command(command, None) == f"{command.rstrip()} {STREAM}"


@pytest.mark.parametrize(
    "command",
    [
        "aider --yes",
        "claude -p | tee agent.log",  # appended words would reach tee
        "claude -p; echo done",  # ... or echo
        "(cd app && claude -p)",  # ... or land after the subshell
        "claude -p  # the comment would swallow them",
        "echo claude",
        "claude -p 'unterminated",
        "",
    ],
)
def test_commands_whose_last_program_is_not_claude_are_left_alone(command: str) -> None:
    assert not is_claude(command)


def test_the_model_and_verbose_are_added_only_when_missing() -> None:
    assert claude_command("cd a && claude -p", "claude-sonnet-4-5") == f"cd a && claude -p {STREAM} --model claude-sonnet-4-5"
    assert claude_command("claude -p --model=x --output-format stream-json", "y") == (
        "claude -p --model=x --output-format stream-json --verbose"
    )


def test_rate_limit_events_are_quiet_unless_they_warn() -> None:
    parser = StreamParser()
    allowed = '{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","isUsingOverage":false},"uuid":"u"}'
    assert parser.feed(allowed) == []
    warning = ('{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning",'
               '"rateLimitType":"five_hour","resetsAt":1764600000}}')
    assert parser.feed(warning) == ["rate limit allowed_warning (five_hour) resets 2025-12-01 14:40 UTC"]
    assert parser.feed('{"type":"rate_limit_event","rate_limit_info":"odd"}') == []


def test_a_stream_line_cut_short_is_noted_not_dumped() -> None:
    parser = StreamParser()
    cut = '{"type": "assistant", "message": {"id": "msg_1", "content": [{"type": "text", "te'
    assert parser.feed(cut) == [f"(a stream line cut short: {len(cut)} characters)"]
    assert parser.feed("{not json at all") == ["{not json at all"]  # anything else passes as it came
