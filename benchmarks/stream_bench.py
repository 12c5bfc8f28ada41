"""What reading Claude Code's stream-json costs the worker, against plain line copying measured in the same run.

    python benchmarks/stream_bench.py [--lines 2000] [--repeat 7] [--claude-image mahabharatha-worker:claude-test]
                                      [--runs 3]

1. parser: a 2,000-line stream made of the recorded streams in tests/fakes/streams (the init line, then
   assistant/tool-result lines with a fresh message id each, then the result), fed line by line. Baseline:
   what the worker does for any other agent (strip the newline, keep the line); also ``json.loads`` alone
   (the least any reader of the stream must do).
2. worker: the worker's own ``run_agent`` on the host, the agent a script that prints the same 2,000 lines.
   Named ``claude`` it is read as Claude Code (options appended, the parser, readable lines); named ``replay``
   (the same script) its lines are copied as they come. Both print to /dev/null; median of ``--repeat``.
3. run (with ``--claude-image``, needs Docker and that image): a whole ``orchestrate()`` of one Write task with
   the real claude against the fake API in the container, ``claude -p ...`` (parsed) against ``claude -p ...
   --output-format stream-json --verbose | cat`` (the same claude and stream; a pipeline is not read as Claude
   Code, so the lines are copied). ``--runs`` each, alternating; the difference is within run-to-run noise
   unless it is larger than the spread shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mahabharatha.worker.agent_stream import StreamParser

ROOT = Path(__file__).resolve().parents[1]
STREAMS = ROOT / "tests" / "fakes" / "streams"


def make_stream(n: int) -> list[str]:
    """``n`` lines: the recorded init, assistant and tool-result lines cycled (a fresh message id per assistant
    line), the recorded result last."""
    recorded = [json.loads(line) for name in ("write_nonroot.jsonl", "bash.jsonl")
                for line in (STREAMS / name).read_text().splitlines()]
    init = next(e for e in recorded if e["type"] == "system")
    result = next(e for e in recorded if e["type"] == "result")
    middle = [e for e in recorded if e["type"] in ("assistant", "user")]
    lines = [json.dumps(init)]
    i = 0
    while len(lines) < n - 1:
        event = json.loads(json.dumps(middle[i % len(middle)]))
        if event["type"] == "assistant":
            event["message"]["id"] = f"msg_bench{i:06d}"
        lines.append(json.dumps(event))
        i += 1
    lines.append(json.dumps(result))
    return lines


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, float]:
    """(median, spread: max - min) of ``repeat`` timings."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) - min(times)


def table(title: str, rows: list[tuple[str, float, str]], baseline: float, unit: str) -> None:
    print(f"\n{title}")
    print(f"  {'what':<44} {unit:>12} {'vs baseline':>12}  notes")
    for name, value, note in rows:
        scale = 1e3 if unit.endswith("ms") else 1.0
        print(f"  {name:<44} {value * scale:>12.2f} {value / baseline:>11.2f}x  {note}")


# ------------------------------------------------------------------------------------------------------------
# 1. the parser alone


def bench_parser(lines: list[str], repeat: int) -> None:
    raw = [line + "\n" for line in lines]

    def copy() -> None:
        out = []
        for line in raw:
            out.append(line.rstrip("\r\n"))

    def loads() -> None:
        for line in raw:
            json.loads(line)

    def parse() -> None:
        parser = StreamParser(200_000)
        for line in raw:
            parser.feed(line)
            parser.over(70)

    base = best_of(repeat, copy)
    rows = [
        ("plain line copying (baseline)", base, "what any other agent's lines get"),
        ("json.loads per line", best_of(repeat, loads), "the least a stream reader does"),
        ("StreamParser.feed + over() per line", best_of(repeat, parse), "what a claude agent's lines get"),
    ]
    size = sum(len(line) for line in raw)
    table(f"1. parser: {len(raw)} lines, {size / 1024:.0f} KiB, best of {repeat}", rows, base, "total ms")
    per_line = rows[2][1] / len(raw) * 1e6
    print(f"  -> {per_line:.1f} µs per line parsed; a task's whole stream is usually tens to a few hundred lines")


# ------------------------------------------------------------------------------------------------------------
# 2. the worker's run_agent, parsed vs copied


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The worker prints with print(): send it to /dev/null (a real file descriptor, as in a container)."""
    saved = sys.stdout
    with open(os.devnull, "w") as null:
        sys.stdout = null
        try:
            yield
        finally:
            sys.stdout = saved


def bench_worker(lines: list[str], repeat: int) -> None:
    from mahabharatha.worker import protocol as P
    from mahabharatha.worker.__main__ import Worker

    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        root = Path(tmp)
        stream = root / "stream.jsonl"
        stream.write_text("\n".join(lines) + "\n")
        script = f"#!/bin/sh\ncat {stream}\n"
        for name in ("claude", "replay"):
            (root / name).write_text(script)
            (root / name).chmod(0o755)
        prompt = root / "prompt.txt"
        prompt.write_text("bench\n")

        def worker(program: str) -> Worker:
            env = {
                P.ENV_WORKER_ID: "0", P.ENV_FEATURE: "bench", P.ENV_BRANCH: "mahabharatha/bench/worker-0",
                P.ENV_CHANNEL: str(root / "none.sock"), P.ENV_AGENT_COMMAND: f"{root / program} -p",
                P.ENV_WORKSPACE: str(root), P.ENV_GIT_WORKTREE_DIR: str(root / "git"),
                P.ENV_CONTEXT_WINDOW: "100000000",  # the recorded turns' context must not stop the replay
            }
            return Worker(env)

        parsed, copied = worker("claude"), worker("replay")
        env = dict(os.environ)
        with quiet_stdout():
            for w in (parsed, copied):  # warm up (page cache, imports)
                w.run_agent(env, str(prompt))
            base, base_spread = median_of(repeat, lambda: copied.run_agent(env, str(prompt)))
            value, spread = median_of(repeat, lambda: parsed.run_agent(env, str(prompt)))
            run = parsed.run_agent(env, str(prompt))
        if run.parser is None or run.parser.result is None or run.stopped_for or run.code != 0:
            raise SystemExit(f"the parsed replay did not run to its result (exit {run.code}, stopped for {run.stopped_for})")
        rows = [
            ("run_agent, lines copied (agent 'replay')", base, f"spread {base_spread * 1e3:.1f} ms"),
            ("run_agent, stream parsed (agent 'claude')", value, f"spread {spread * 1e3:.1f} ms"),
        ]
        table(f"2. worker: run_agent on {len(lines)} lines, median of {repeat}", rows, base, "ms")
        print(f"  -> parsing adds {(value - base) * 1e3:.1f} ms to a {len(lines)}-line task "
              f"({(value - base) / len(lines) * 1e6:.1f} µs per line)")


# ------------------------------------------------------------------------------------------------------------
# 3. a whole run with the real claude in a container


FAKE_START = """\
python3 fake_anthropic.py --port 8765 --script fake-script.json --log /tmp/fake.log >/tmp/fake.out 2>&1 &
n=0
while [ "$n" -lt 200 ] && ! grep -q listening /tmp/fake.out 2>/dev/null; do sleep 0.05; n=$((n + 1)); done
"""
SCRIPT = {"turns": [
    {"text": "Writing.", "tool_use": {"name": "Write", "input": {"file_path": "/workspace/hello.txt", "content": "hi\n"}}},
    {"text": "Done."},
]}
CLAUDE_ENV = {
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
}


def one_run(client: Any, image: str, agent: str) -> float:
    import msgspec

    from mahabharatha.core.graph import load_graph
    from mahabharatha.core.model import EnvVar
    from mahabharatha.edge.orchestrator import orchestrate
    from mahabharatha.planning import plan as make_plan

    with tempfile.TemporaryDirectory(prefix="stream-bench-run-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        git = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@x.invalid", *a], check=True, capture_output=True
        )
        git("init", "-q", "-b", "main")
        (repo / "fake_anthropic.py").write_bytes((ROOT / "tests" / "fakes" / "fake_anthropic.py").read_bytes())
        (repo / "fake-start.sh").write_text(FAKE_START)
        (repo / "fake-script.json").write_text(json.dumps(SCRIPT))
        git("add", "-A")
        git("commit", "-qm", "the fake")
        spec = repo / ".gsd" / "specs" / "bench"
        spec.mkdir(parents=True)
        (spec / "task-graph.json").write_text(json.dumps({"feature": "bench", "tasks": [{
            "id": "hello", "title": "hello", "level": 1, "dependencies": [], "description": "write hello.txt",
            "files": {"create": ["hello.txt"], "modify": [], "read": []},
            "verification": {"command": "", "timeout_seconds": 60}}]}))
        (repo / ".mahabharatha").mkdir()
        (repo / ".mahabharatha" / "config.yaml").write_text(f"workers:\n  agent_command: '{agent}'\n  retry_attempts: 0\n")
        plan = make_plan(repo, feature="bench", workers=1, mode="container", environ={"ANTHROPIC_API_KEY": "sk-ant-bench"},
                         home=Path(tmp), overrides={"workers.container_prefix": f"mh-bench-{uuid.uuid4().hex[:8]}",
                                                    "resources.container_image": image})
        plan = msgspec.structs.replace(plan, workers=tuple(msgspec.structs.replace(
            w, environment=tuple(EnvVar(name=k, value=v) for k, v in sorted({**w.env_dict(), **CLAUDE_ENV}.items())))
            for w in plan.workers))
        text = (spec / "task-graph.json").read_text()
        t0 = time.perf_counter()
        result = orchestrate(plan, load_graph(str(spec / "task-graph.json"), text), out=lambda line: None, client=client)
        seconds = time.perf_counter() - t0
        if result.status != "done":
            raise SystemExit(f"the benchmark run ended {result.status}: {result.message}")
        log = Path(plan.workers[0].log_path).read_text()
        parsed = "tool Write file_path=hello.txt" in log
        raw = '"type":"assistant"' in log
        if parsed == raw:
            raise SystemExit(f"expected the run's log to be either parsed or raw:\n{log[-2000:]}")
        return seconds


def bench_run(image: str, runs: int) -> None:
    import docker

    client = docker.from_env()
    parsed_cmd = ". ./fake-start.sh; claude -p --dangerously-skip-permissions"
    copied_cmd = ". ./fake-start.sh; claude -p --dangerously-skip-permissions --output-format stream-json --verbose | cat"
    one_run(client, image, parsed_cmd)  # warm up (image layers, page cache)
    parsed, copied = [], []
    for _ in range(runs):
        copied.append(one_run(client, image, copied_cmd))
        parsed.append(one_run(client, image, parsed_cmd))
    base = statistics.median(copied)
    shown = lambda times: "runs " + " ".join(f"{t:.2f}" for t in times) + " s"  # noqa: E731
    rows = [
        ("run, claude's stream copied (| cat)", base, shown(copied)),
        ("run, claude's stream parsed", statistics.median(parsed), shown(parsed)),
    ]
    table(f"3. run: orchestrate() of one Write task with the real claude ({image}), median of {runs}", rows, base, "ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--claude-image", help="also time whole runs with the real claude in this image (needs Docker)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    lines = make_stream(args.lines)
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} CPU(s)")
    bench_parser(lines, args.repeat)
    bench_worker(lines, args.repeat)
    if args.claude_image:
        bench_run(args.claude_image, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
