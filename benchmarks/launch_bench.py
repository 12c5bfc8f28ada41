"""Launch latency: ``execute()`` against two baselines, on the same engine, in the same run.

For N = 1, 5, 10 workers (same image, same command: print the ready line, then idle):

- ``execute``: from calling :func:`mahabharatha.edge.executor.execute` until every worker is verified
  (running per the engine's events *and* its ready line seen in the log stream). "cold" starts in a fresh
  repository (creates the base branch and N worktrees); "warm" re-launches with the worktrees in place.
- (a) ``docker-py run``: bare parallel ``client.containers.run(image, command, detach=True)`` (one thread per
  worker); done when every call returned. No mounts, no limits, no readiness check.
- (b) ``CLI loop``: the old way, sequentially per worker: ``docker rm -f``, ``docker run -d``, then a
  ``docker inspect`` poll loop (0.1 s sleeps) until running. The docker CLI is used only here, as a baseline.

Targets at N = 10: ``execute`` within 1.3x of (a), and at least 2x faster than (b).

    python benchmarks/launch_bench.py [--image mahabharatha-worker:test] [--repeat 3] [--sizes 1,5,10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

import mahabharatha.worker
from mahabharatha.core.auth import discover_auth
from mahabharatha.core.config import load_config
from mahabharatha.core.model import LaunchPlan
from mahabharatha.core.plan import build_plan
from mahabharatha.edge import executor

import msgspec

SCRIPT = (
    "import os, time; "
    "print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); "
    "time.sleep(600)"
)
COMMAND = ("python3", "-c", SCRIPT)
LABEL = "io.mahabharatha.bench"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _fresh_repo(root: Path) -> Path:
    repo = (root / uuid.uuid4().hex[:8] / "repo").resolve()
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init")
    return repo


def _plan(repo: Path, n: int, image: str, prefix: str) -> LaunchPlan:
    config = load_config(
        str(repo / ".mahabharatha/config.yaml"),
        None,
        {},
        {
            "workers.launcher_type": "container",
            "workers.max_concurrent": n,
            "workers.container_prefix": prefix,
            "resources.container_image": image,
        },
    )
    auth, secrets = discover_auth(environ={}, dotenv_text=None, dotenv_path=str(repo / ".env"), home="/nonexistent",
                                  has_claude_dir=False, has_claude_json=False)
    plan = build_plan(repo=str(repo), feature="bench", config=config, auth=auth, secrets=secrets, uid=os.getuid(),
                      gid=os.getgid(), worker_runtime_dir=str(Path(mahabharatha.worker.__file__).resolve().parent),
                      requested_workers=n)
    return msgspec.structs.replace(plan, workers=tuple(msgspec.structs.replace(w, command=COMMAND) for w in plan.workers))


def _remove_by_name_prefix(client: docker.DockerClient, prefix: str) -> None:
    for row in client.api.containers(all=True, filters={"name": f"^/{prefix}"}):
        client.api.remove_container(row["Id"], force=True)


def bench_execute(client: docker.DockerClient, root: Path, n: int, image: str) -> tuple[float, float]:
    """(cold, warm) seconds for execute() of an n-worker plan."""
    prefix = f"mh-bench-x{uuid.uuid4().hex[:6]}"
    plan = _plan(_fresh_repo(root), n, image, prefix)
    try:
        t0 = time.perf_counter()
        launch = executor.execute(plan, client=client)
        cold = time.perf_counter() - t0
        assert len(launch.workers) == n
        executor.remove_containers(client, plan.repo, plan.feature)
        t0 = time.perf_counter()
        executor.execute(plan, client=client)
        warm = time.perf_counter() - t0
    finally:
        executor.remove_containers(client, plan.repo, plan.feature)
    return cold, warm


def bench_docker_py(client: docker.DockerClient, n: int, image: str) -> float:
    prefix = f"mh-bench-a{uuid.uuid4().hex[:6]}"

    def run(i: int) -> None:
        client.containers.run(image, list(COMMAND), name=f"{prefix}-{i}", detach=True,
                              environment={"ZERG_WORKER_ID": str(i)}, labels={LABEL: "a"})

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=n) as pool:
            list(pool.map(run, range(n)))
        return time.perf_counter() - t0
    finally:
        _remove_by_name_prefix(client, prefix)


def bench_cli_loop(client: docker.DockerClient, n: int, image: str) -> float:
    prefix = f"mh-bench-b{uuid.uuid4().hex[:6]}"

    def cli(*args: str) -> str:
        return subprocess.run(["docker", *args], capture_output=True, text=True).stdout.strip()

    try:
        t0 = time.perf_counter()
        for i in range(n):
            name = f"{prefix}-{i}"
            cli("rm", "-f", name)
            cli("run", "-d", "--name", name, "-e", f"ZERG_WORKER_ID={i}", "--label", f"{LABEL}=b", image, *COMMAND)
            while cli("inspect", "-f", "{{.State.Running}}", name) != "true":
                time.sleep(0.1)
        return time.perf_counter() - t0
    finally:
        _remove_by_name_prefix(client, prefix)


def _median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="mahabharatha-worker:test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1,5,10")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    client = executor.make_client(workers=max(sizes))
    if not any(t == args.image for img in client.images.list() for t in img.tags):
        print(f"image {args.image} not found: build it first (see README)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="mh-launch-bench-") as tmp:
        root = Path(tmp)
        # Warm-up: first container start after an idle engine is slower for everyone.
        bench_docker_py(client, 1, args.image)
        for n in sizes:
            runs = [bench_execute(client, root, n, args.image) for _ in range(args.repeat)]
            cold = statistics.median(r[0] for r in runs)
            warm = statistics.median(r[1] for r in runs)
            a = _median(lambda: bench_docker_py(client, n, args.image), args.repeat)
            b = _median(lambda: bench_cli_loop(client, n, args.image), args.repeat)
            rows.append((n, cold, warm, a, b))
    print(f"launch latency, median of {args.repeat} (seconds); image {args.image}")
    print(f"{'N':>3} {'execute cold':>13} {'execute warm':>13} {'(a) docker-py':>14} {'(b) CLI loop':>13} "
          f"{'cold/(a)':>9} {'warm/(a)':>9} {'(b)/cold':>9} {'(b)/warm':>9}")
    for n, cold, warm, a, b in rows:
        print(f"{n:>3} {cold:>13.3f} {warm:>13.3f} {a:>14.3f} {b:>13.3f} "
              f"{cold / a:>8.2f}x {warm / a:>8.2f}x {b / cold:>8.2f}x {b / warm:>8.2f}x")
    n, cold, warm, a, b = rows[-1]
    print(f"targets at N={n}: execute within 1.3x of (a): cold {cold / a:.2f}x, warm {warm / a:.2f}x; "
          f"at least 2x faster than (b): cold {b / cold:.2f}x, warm {b / warm:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
