"""Per-task orchestration overhead against the graph's size: 100, 1,000 and 10,000 no-op tasks on 4 workers.

    python benchmarks/scale_bench.py [--sizes 100,1000,10000] [--workers 4] [--levels 10]
                                     [--mode subprocess|container] [--image mahabharatha-worker:test]

Each size is one real run through :func:`mahabharatha.execute` (real worker processes, the real channel,
state, merges): the agent is ``true`` (a no-op: no files, so no commit and no bundle), the tasks spread over
``--levels`` levels with no file ownership. Subprocess mode by default (workers are host processes: what is
measured is the orchestrator and the worker runtime, not container starts); ``--mode container`` runs the
same in containers (cheap enough for the 100-task point).

Printed per size: total seconds, tasks per second, per-task cost (total / tasks, worker start included), and
the ratio of the per-task cost to the first (smallest) size's, measured in the same run. Targets: 10,000
tasks within 1.5x the per-task cost of 100, and 10,000 tasks in under 10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mahabharatha


def make_repo(root: Path, tasks: int, levels: int, workers: int, mode: str, image: str, prefix: str) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@x.invalid", *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    (repo / ".gitignore").write_text(".mahabharatha/\n.gsd/specs/*/progress.md\n")
    spec = repo / ".gsd" / "specs" / "bench"
    spec.mkdir(parents=True)
    per = max(1, -(-tasks // levels))
    graph = {"feature": "bench", "tasks": [{"id": f"T{i:05d}", "level": 1 + i // per, "title": f"no-op {i}"} for i in range(tasks)]}
    (spec / "task-graph.json").write_text(json.dumps(graph))
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  max_concurrent: {workers}\n  launcher_type: {mode}\n  agent_command: 'true'\n"
        f"  container_prefix: {prefix}\nresources:\n  container_image: {image}\n  container_memory_limit: 512m\n"
    )
    git("add", "-A")
    git("commit", "-qm", "initial")
    return repo


def one(size: int, args: argparse.Namespace, root: Path) -> tuple[float, str]:
    repo = make_repo(root / str(size), size, args.levels, args.workers, args.mode, args.image, f"mh-scale-{os.getpid()}-{size}")
    t0 = time.monotonic()
    plan = mahabharatha.plan(str(repo), feature="bench", workers=args.workers, environ={}, home=str(root / "home"))
    result = mahabharatha.execute(plan)
    return time.monotonic() - t0, result.status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--mode", default="subprocess", choices=("subprocess", "container"))
    parser.add_argument("--image", default="mahabharatha-worker:test")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mh-scale-") as tmp:
        (Path(tmp) / "home").mkdir()
        for size in sizes:
            seconds, status = one(size, args, Path(tmp))
            rows.append((size, seconds, status))
            print(f"  {size} tasks: {seconds:.1f} s ({status})", file=sys.stderr, flush=True)
    base = rows[0][1] / rows[0][0]
    print(f"{args.mode}, {args.workers} workers, {args.levels} levels, no-op agent")
    print(f"{'tasks':>7} {'status':>7} {'total s':>9} {'tasks/s':>8} {'ms/task':>8} {'ratio':>6}")
    for size, seconds, status in rows:
        per = seconds / size
        print(f"{size:>7} {status:>7} {seconds:>9.1f} {size / seconds:>8.1f} {per * 1000:>8.1f} {per / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
