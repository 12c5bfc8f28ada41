"""Beyond one machine: launch latency and per-task overhead on a nested (remote) Docker engine and on a
two-node Swarm of nested engines, as ratios against the local engine measured in the same run.

    python benchmarks/remote_bench.py [--image mahabharatha-worker:test] [--workers 2] [--tasks 12] [--repeat 1]

Each target runs the same feature (``--tasks`` no-op tasks in 3 levels) with ``orchestrate()``:

- ``local``: the local engine, local transport (bind mounts, a Unix socket per worker): the baseline;
- ``local-remote``: the local engine with ``workers.transport: remote`` (no mounts, the TCP channel, git
  packs in and bundles out): what the transport itself costs;
- ``nested``: ``DOCKER_HOST=tcp://127.0.0.1:PORT``, a nested engine that shares no filesystem with this machine;
- ``swarm``: ``launcher_type: swarm`` on a two-node Swarm of nested engines (services, task states polled).

Printed per target: launch (start until every worker announced itself), total, per-task overhead
(``(total - launch) * workers / tasks``) and both as ratios to ``local``. The nested engines run on this same
machine (2 cores here), so the figures measure our protocol and the engines' work, not a network.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from mahabharatha import events as E  # noqa: E402
from mahabharatha.core.graph import load_graph  # noqa: E402
from mahabharatha.edge.orchestrator import orchestrate  # noqa: E402
from mahabharatha.planning import plan as make_plan  # noqa: E402
from tests.integration import nested  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import orchestration_bench  # noqa: E402

AGENT = orchestration_bench.AGENT


def make_repo(root: Path, tasks: int, prefix: str, image: str, workers: int, extra: str) -> Path:
    """The orchestration benchmark's repository (``tasks`` no-op tasks in 3 levels) with this run's config."""
    repo = orchestration_bench.make_repo(root, tasks, 3)
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  max_concurrent: {workers}\n  container_prefix: {prefix}\n  agent_command: '{AGENT}'\n{extra}"
        f"resources:\n  container_image: {image}\n  container_memory_limit: 512m\n  container_cpu_limit: 1.0\n"
    )
    return repo


def one(target: str, client: Any, environ: dict[str, str], mode: str, extra: str, image: str, workers: int, tasks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mh-remote-bench-") as tmp:
        prefix = f"mhb-{uuid.uuid4().hex[:6]}"
        repo = make_repo(Path(tmp), tasks, prefix, image, workers, extra)
        p = make_plan(repo, feature="bench", workers=workers, mode=mode, environ=environ, home=Path(tmp) / "home")
        graph = load_graph(str(repo / ".gsd/specs/bench/task-graph.json"), (repo / ".gsd/specs/bench/task-graph.json").read_text())
        ready: list[float] = []
        t0 = time.monotonic()
        result = orchestrate(p, graph, out=lambda _l: None, client=client,
                             on_event=lambda e: ready.append(time.monotonic()) if isinstance(e, E.WorkerReady) else None)
        total = time.monotonic() - t0
        if result.status != "done":
            raise SystemExit(f"{target}: the run ended {result.status}")
        launch = (ready[workers - 1] if len(ready) >= workers else t0) - t0
        n = len(graph.tasks)
        return {"launch": launch, "total": total, "per_task": (total - launch) * workers / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="mahabharatha-worker:test")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    host = docker.from_env()
    gateway = host.networks.get("bridge").attrs["IPAM"]["Config"][0].get("Gateway", "172.17.0.1")
    prefix = f"mh-nested-bench-{uuid.uuid4().hex[:6]}"
    try:
        t = time.monotonic()
        engine = nested.start_engine(host, f"{prefix}-engine", f"{prefix}-net", prefix=prefix)
        nested.load_image(host, engine.client(), args.image)
        cluster = nested.start_swarm(host, f"{prefix}-s")
        for e in cluster.engines:
            nested.load_image(host, e.client(), args.image)
        print(f"setup: nested engine and two-node swarm in {time.monotonic() - t:.1f} s")
        targets = [
            ("local", host, {}, "container", ""),
            ("local-remote", host, {"MAHABHARATHA_CHANNEL_ADDRESS": gateway}, "container", "  transport: remote\n"),
            ("nested", engine.client(), {"DOCKER_HOST": engine.url, "MAHABHARATHA_CHANNEL_ADDRESS": engine.gateway}, "container", ""),
            ("swarm", cluster.manager.client(), {"DOCKER_HOST": cluster.manager.url, "MAHABHARATHA_CHANNEL_ADDRESS": cluster.gateway}, "swarm", ""),
        ]
        results: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for name, client, env, mode, extra in targets:  # interleaved: drift hits every target alike
                r = one(name, client, env, mode, extra, args.image, args.workers, args.tasks)
                best = results.setdefault(name, r)
                for key in r:
                    best[key] = min(best[key], r[key])
        base = results["local"]
        print(f"{'target':14} {'launch':>8} {'x local':>8} {'total':>8} {'per task':>9} {'x local':>8}")
        for name, r in results.items():
            print(f"{name:14} {r['launch']:7.2f}s {r['launch'] / base['launch']:7.2f}x {r['total']:7.2f}s "
                  f"{r['per_task'] * 1000:7.0f}ms {r['per_task'] / base['per_task']:7.2f}x")
    finally:
        nested.remove_all(host, prefix)
        nested.remove_all(host, f"{prefix}-s")


if __name__ == "__main__":
    main()
