"""The real claude CLI in the worker image, against the scripted fake API in the same container.

The image ``mahabharatha-worker:claude-test`` comes from the ``claude_image`` fixture of ``conftest.py`` (the
package's Dockerfile with ``INSTALL_CLAUDE=1`` on the offline base, built once and reused). Without it the
tests skip with the reason, or fail under ``MAHABHARATHA_REQUIRE_DOCKER=1`` or ``CI=true``.

Each test runs one container with no network: the fake (tests/fakes/fake_anthropic.py) on 127.0.0.1, then
``claude -p --output-format stream-json --verbose`` with the prompt on stdin, a read-only root filesystem and
tmpfs HOME/workspace, like a worker. The stream is read with the worker's own parser.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.worker.agent_stream import StreamParser

pytestmark = pytest.mark.docker

FAKES = Path(__file__).resolve().parents[1] / "fakes"
PROMPT = "Create hello.py that prints hello."


# What the container runs: the fake in the background, then claude with the prompt on stdin.
RUN = """
python3 /fakes/fake_anthropic.py --port 8765 --script /out/script.json --log /out/requests.jsonl >/out/fake.txt 2>&1 &
for _ in $(seq 100); do grep -q listening /out/fake.txt 2>/dev/null && break; sleep 0.05; done
printf '%s' "$PROMPT" | claude -p --output-format stream-json --verbose $CLAUDE_FLAGS >/out/stream.jsonl 2>/out/stderr.txt
code=$?
cat /workspace/hello.py >/out/hello.py 2>/dev/null
exit $code
"""


def run_claude(
    client: Any, image: str, tmp_path: Path, turns: list[dict[str, Any]], *, user: str, env: dict[str, str] | None = None,
    flags: str = "--dangerously-skip-permissions",
) -> tuple[int, Path]:
    """Run claude against the fake with ``turns``; return (exit code, the dir holding its output files)."""
    from docker.types import Mount

    out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    out.chmod(0o777)  # the container's uid writes here
    (out / "script.json").write_text(json.dumps({"turns": turns}))
    environment = {
        "HOME": "/home/worker",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        "PROMPT": PROMPT,
        "CLAUDE_FLAGS": flags,
        **(env or {}),
    }
    container = client.containers.create(
        image,
        ["bash", "-c", RUN],
        user=user,
        environment={k: v for k, v in environment.items() if v is not None},
        network_mode="none",
        read_only=True,
        tmpfs={"/home/worker": "rw,exec,mode=1777", "/tmp": "rw,exec,mode=1777", "/workspace": "rw,mode=1777"},
        mounts=[
            Mount("/fakes", str(FAKES), type="bind", read_only=True),
            Mount("/out", str(out), type="bind"),
        ],
        name=f"mh-test-claude-{uuid.uuid4().hex[:8]}",
        labels={"io.mahabharatha.test": "claude-image"},
    )
    try:
        container.start()
        code = container.wait(timeout=180)["StatusCode"]
    finally:
        container.remove(force=True)
    return code, out


def parse(out: Path) -> tuple[StreamParser, list[str]]:
    parser = StreamParser(context_window=200_000)
    lines: list[str] = []
    for line in (out / "stream.jsonl").read_text().splitlines():
        lines.extend(parser.feed(line))
    return parser, lines


WRITE_TURNS = [
    {
        "text": "I'll create the file.",
        "tool_use": {"name": "Write", "input": {"file_path": "/workspace/hello.py", "content": "print('hello')\n"}},
        "usage": {"input_tokens": 3000, "output_tokens": 60, "cache_read_input_tokens": 150000,
                  "cache_creation_input_tokens": 500},
    },
    {"text": "Created hello.py.", "usage": {"input_tokens": 3200, "output_tokens": 20}},
]


@pytest.mark.parametrize(("user", "env"), [("12345:12345", {}), ("0:0", {"IS_SANDBOX": "1"})], ids=["non-root", "root-sandbox"])
def test_claude_writes_the_file_the_fake_asks_for(
    docker_client: Any, claude_image: str, tmp_path: Path, user: str, env: dict[str, str]
) -> None:
    code, out = run_claude(docker_client, claude_image, tmp_path, WRITE_TURNS, user=user, env=env)
    assert code == 0, (out / "stderr.txt").read_text()
    assert (out / "hello.py").read_text() == "print('hello')\n"
    parser, lines = parse(out)
    assert "tool Write file_path=hello.py" in lines and "text Created hello.py." in lines
    usage = parser.usage
    assert usage.cost_usd is not None and usage.cost_usd > 0
    assert (usage.input_tokens, usage.cache_read_tokens, usage.turns) == (6200, 150000, 2)
    assert parser.max_context_tokens == 3000 + 150000 + 500
    assert parser.failure_reason(code, []) is None
    # The prompt came from stdin, and claude called nothing but the streaming Messages endpoint.
    requests = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert {(r["method"], r["path"]) for r in requests} == {("POST", "/v1/messages?beta=true")}
    assert [r["turn"] for r in requests] == [0, 1] and requests[0]["prompt"] == PROMPT
    assert all(r["stream"] and r["auth"] == "x-api-key" for r in requests)


def test_root_without_is_sandbox_is_refused(docker_client: Any, claude_image: str, tmp_path: Path) -> None:
    code, out = run_claude(docker_client, claude_image, tmp_path, WRITE_TURNS, user="0:0")
    assert code == 1 and (out / "stream.jsonl").read_text() == ""
    stderr = (out / "stderr.txt").read_text().splitlines()
    assert StreamParser().failure_reason(code, stderr) == (
        "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons"
    )
    assert not (out / "requests.jsonl").exists()


@pytest.mark.parametrize(
    ("turns", "env", "reason"),
    [
        ([{"error": 401, "times": -1}], {}, "Invalid API key · Fix external API key"),
        ([{"error": 400}], {}, "Prompt is too long"),
        ([], {"ANTHROPIC_API_KEY": None}, "Not logged in · Please run /login"),
    ],
    ids=["invalid-key", "prompt-too-long", "no-key"],
)
def test_failures_exit_1_with_a_reason(
    docker_client: Any, claude_image: str, tmp_path: Path, turns: list[dict[str, Any]], env: dict[str, Any],
    reason: str,
) -> None:
    code, out = run_claude(docker_client, claude_image, tmp_path, turns, user="12345:12345", env=env)
    assert code == 1  # never 2, not even for a prompt that is too long
    parser, _ = parse(out)
    got = parser.failure_reason(code, (out / "stderr.txt").read_text().splitlines())
    assert got is not None and got.startswith(reason)
    assert parser.prompt_too_long == (reason == "Prompt is too long")
