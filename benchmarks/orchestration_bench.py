"""Orchestration overhead: 30 tasks in 3 levels with a no-op agent, on 1, 3 and 5 workers.

    python benchmarks/orchestration_bench.py [--image mahabharatha-worker:test] [--mode container|subprocess]
                                             [--workers 1,3,5] [--tasks 30] [--repeat 1]

The agent only writes its task's one file (``echo ID > out/ID.txt``), so every task still costs a claim under
the lock, the agent and verification processes, a git commit, a state update, the progress line and its
share of the level-end merges. Printed per worker count:

- total: ``orchestrate()`` start to result (worker start included);
- launch: start until every worker announced itself (container create/start + git check);
- per-task overhead: ``(total - launch) * workers / tasks - agent_seconds``, the worker-time each task costs
  beyond the agent's own work (idle time at level barriers included). Target: under 200 ms;
- above ideal: total minus (launch + the agent time of a perfect schedule, ``3 * ceil(10 / N)`` rounds), i.e.
  the whole run's orchestration cost on the critical path (claims, commits, verification, level merges);
- speed-up: total on 1 worker / total on N workers.

With the no-op agent every task is ~30 ms of CPU-bound process work (sh, git), so on a 2-core machine more
workers cannot go faster; ``--agent-seconds 0.5`` stands in for an agent that waits on its model, which is
where parallel workers pay off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mahabharatha.core.config import load_config
from mahabharatha.core.graph import load_graph
from mahabharatha.core.model import AuthSummary, LABEL_REPO
from mahabharatha.core.plan import build_plan
from mahabharatha.edge.orchestrator import orchestrate

AGENT = 'mkdir -p out && echo "$MAHABHARATHA_TASK_ID" > "out/$MAHABHARATHA_TASK_ID.txt"'


def agent(seconds: float) -> str:
    """The no-op agent; with ``seconds`` it first sleeps (a stand-in for an agent waiting on its model)."""
    return f"sleep {seconds:g} && {AGENT}" if seconds else AGENT


def make_repo(root: Path, tasks: int, levels: int) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@x.invalid", *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    run("add", "-A")
    run("commit", "-qm", "initial")
    per = tasks // levels
    graph = {"feature": "bench", "tasks": []}
    for i in range(tasks):
        level = 1 + i // per
        deps = [f"T{j:03d}" for j in range((level - 2) * per, (level - 2) * per + 1)] if level > 1 else []
        graph["tasks"].append({
            "id": f"T{i:03d}", "title": f"task {i}", "level": level, "dependencies": deps,
            "files": {"create": [f"out/T{i:03d}.txt"]},
            "verification": {"command": f"test -s out/T{i:03d}.txt", "timeout_seconds": 30},
        })
    spec = repo / ".gsd" / "specs" / "bench"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps(graph))
    return repo


def one_run(workers: int, args: argparse.Namespace, client: object) -> tuple[float, float]:
    import mahabharatha.worker

    with tempfile.TemporaryDirectory(prefix="mh-bench-") as tmp:
        repo = make_repo(Path(tmp).resolve(), args.tasks, 3)
        prefix = f"mh-bench-{uuid.uuid4().hex[:8]}"
        config = load_config("(bench)", None, {}, {
            "workers.launcher_type": args.mode, "workers.max_concurrent": workers, "workers.container_prefix": prefix,
            "resources.container_image": args.image, "workers.agent_command": agent(args.agent_seconds),
            "resources.container_memory_limit": "256m", "resources.container_cpu_limit": 1.0,
        })
        plan = build_plan(
            repo=str(repo), feature="bench", config=config, auth=AuthSummary(), uid=os.getuid(), gid=os.getgid(),
            worker_runtime_dir=str(Path(mahabharatha.worker.__file__).resolve().parent), requested_workers=workers,
        )
        graph_file = repo / ".gsd/specs/bench/task-graph.json"
        graph = load_graph(str(graph_file), graph_file.read_text())
        marks: dict[str, float] = {}
        t0 = time.perf_counter()

        def out(line: str) -> None:
            if line.endswith("ready") or "All containers running" in line:
                marks["ready"] = time.perf_counter()

        try:
            result = orchestrate(plan, graph, out=out, client=client)
        finally:
            if client is not None:
                for row in client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"}):
                    client.api.remove_container(row["Id"], force=True)
        total = time.perf_counter() - t0
        if result.status != "done":
            sys.exit(f"run on {workers} workers ended {result.status}: {result.message}")
        return total, marks.get("ready", t0) - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="mahabharatha-worker:test")
    p.add_argument("--mode", choices=("container", "subprocess"), default="container")
    p.add_argument("--workers", default="1,3,5")
    p.add_argument("--tasks", type=int, default=30)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--agent-seconds", type=float, default=0.0, help="agent sleeps this long per task (shows speed-up)")
    args = p.parse_args()
    client = None
    if args.mode == "container":
        from mahabharatha.edge.executor import make_client

        client = make_client(workers=8)
    counts = [int(x) for x in args.workers.split(",")]
    rows = []
    for n in counts:
        best = min((one_run(n, args, client) for _ in range(args.repeat)), key=lambda r: r[0])
        rows.append((n, *best))
    base = rows[0][1]
    what = f"agent sleeping {args.agent_seconds:g} s" if args.agent_seconds else "no-op agent"
    print(f"{args.tasks} tasks in 3 levels, {what}, {args.mode} mode ({args.image if client else 'host'}), best of {args.repeat}")
    print(f"{'workers':>7}  {'total s':>8}  {'launch s':>8}  {'overhead/task ms':>16}  {'above ideal s':>13}  {'speed-up':>8}")
    per_level = args.tasks // 3
    for n, total, launch in rows:
        overhead = ((total - launch) * n / args.tasks - args.agent_seconds) * 1000
        # The ideal schedule: every level in ceil(tasks/N) rounds of agent time, no orchestration cost at all.
        ideal = launch + 3 * -(-per_level // n) * args.agent_seconds
        print(f"{n:>7}  {total:>8.2f}  {launch:>8.2f}  {overhead:>16.0f}  {total - ideal:>13.2f}  {base / total:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
