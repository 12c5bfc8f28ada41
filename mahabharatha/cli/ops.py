"""``mahabharatha status``, ``logs``, ``retry`` and ``install-commands``.

All read the shared state (``.mahabharatha/state/<feature>/state.json``) and the host log files; ``status``
also asks the Docker engine (when reachable) for each worker container's state and CPU/memory use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MahabharathaError
from ..worker import state as S
from .common import repo_feature, run_in_progress, state_store

__all__ = [
    "cmd_status",
    "cmd_logs",
    "cmd_retry",
    "cmd_install_commands",
    "container_rows",
]


def _read_state(repo: str, feature: str) -> dict[str, Any]:
    data = state_store(repo, feature).read()
    if data is None:
        raise MahabharathaError(
            f"no run state for feature {feature!r} in {repo}", hint="start one with `mahabharatha kurukshetra`"
        )
    return data


def container_rows(repo: str, feature: str) -> list[dict[str, Any]] | None:
    """One row per worker container (name, worker, state, exit, cpu %, memory), or None without an engine."""
    try:
        from ..core.model import LABEL_WORKER
        from ..edge.executor import feature_containers, feature_services, make_client

        client = make_client(timeout=10)
        services = feature_services(client, repo, feature)
        rows = [  # (a Swarm task's container on this node is shown as its service)
            r for r in feature_containers(client, repo, feature)
            if not (services and "com.docker.swarm.service.id" in (r.get("Labels") or {}))
        ] + services
    except Exception:  # noqa: BLE001 - status works without Docker (subprocess mode, engine down)
        return None
    rows = sorted(rows, key=lambda r: int((r.get("Labels") or {}).get(LABEL_WORKER, "0")))
    running = [row["Id"] for row in rows if row.get("State") == "running" and row.get("Id")]
    usage: dict[str, dict[str, Any]] = {}
    if running:
        # The engine takes about a second per stats sample (it measures CPU over an interval): ask for all
        # containers at once, so `status` stays quick with many workers.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(running), 16), thread_name_prefix="mahabharatha-stats") as pool:
            usage = {cid: u for cid, u in zip(running, pool.map(lambda cid: _usage(client, cid), running)) if u}
    out = []
    for row in rows:
        info: dict[str, Any] = {
            "name": (row.get("Names") or ["?"])[0].lstrip("/"),
            "worker": int((row.get("Labels") or {}).get(LABEL_WORKER, "-1")),
            "state": row.get("State"),
            "status": row.get("Status"),
        }
        info.update(usage.get(row["Id"], {}))
        out.append(info)
    return out


def _usage(client: Any, cid: str) -> dict[str, Any]:
    """CPU % and memory use of one running container (``{}`` when it just exited or the engine balks)."""
    try:
        stats = client.api.stats(cid, stream=False)
        cpu = stats["cpu_stats"]["cpu_usage"]["total_usage"] - stats["precpu_stats"]["cpu_usage"]["total_usage"]
        system = stats["cpu_stats"].get("system_cpu_usage", 0) - stats["precpu_stats"].get("system_cpu_usage", 0)
        ncpu = stats["cpu_stats"].get("online_cpus") or 1
        return {
            "cpu_percent": round(100.0 * cpu / system * ncpu, 1) if system > 0 else 0.0,
            "memory_bytes": stats["memory_stats"].get("usage", 0),
            "memory_limit_bytes": stats["memory_stats"].get("limit", 0),
        }
    except Exception:  # noqa: BLE001 - the container may have just exited
        return {}


def cmd_status(args: argparse.Namespace) -> int:
    repo, feature = repo_feature(args)
    data = _read_state(repo, feature)
    if getattr(args, "watch", False):
        from .live import watch_status

        return watch_status(repo, feature, data)
    containers = container_rows(repo, feature)
    if getattr(args, "json", False):
        from .documents import status_document

        doc = status_document(repo, feature, data, containers, running=run_in_progress(repo, feature))
        json.dump(doc, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    levels = data["levels"]
    where = f"level {data['level']}" + (f" (levels {levels[0]}-{levels[-1]})" if len(levels) > 1 else "")
    print(f"Feature {feature}: {data['status']}, {where}" + (f" ({data['message']})" if data.get("message") else ""))
    if data["status"] == S.RUNNING and not run_in_progress(repo, feature):
        # The orchestrator was killed (SIGKILL, a crash, a reboot): nothing merges levels until it runs again.
        print("  no `mahabharatha kurukshetra` is running for it: run it again to resume (or `mahabharatha stop` the workers)")
    usage = S.usage_summary(data)
    for level, counts in S.summary(data).items():
        spent = S.format_usage(usage["levels"].get(level) or {})
        print(f"  level {level}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + (f" ({spent})" if spent else ""))
        for tid, t in sorted(data["tasks"].items()):
            if t["level"] == level and (t["status"] != S.DONE or tid in usage["tasks"]):
                who = f" (worker {t['worker']})" if t.get("worker") is not None else ""
                task_spent = S.format_usage(usage["tasks"].get(tid) or {})
                print(f"    {tid}: {t['status']}{who}{' - ' + t['error'] if t.get('error') else ''}"
                      + (f" [{task_spent}]" if task_spent else ""))
    if usage["total"]:
        print(f"  agents used: {S.format_usage(usage['total'])}")
    by_worker: dict[int, list[str]] = {}
    for tid, t in sorted(data["tasks"].items()):
        if t.get("worker") is not None:
            by_worker.setdefault(t["worker"], []).append(f"{tid}:{t['status']}")
    if by_worker:
        print("Workers:")
        for wid, items in sorted(by_worker.items()):
            print(f"  worker {wid}: {' '.join(items)}")
    if containers is None:
        print("Containers: Docker engine not reachable")
    elif containers:
        print("Containers:")
        for c in containers:
            extra = ""
            if "cpu_percent" in c:
                extra = f", cpu {c['cpu_percent']}%, mem {c.get('memory_bytes', 0) / 2**20:.0f}/{c.get('memory_limit_bytes', 0) / 2**20:.0f} MiB"
            print(f"  {c['name']} (worker {c['worker']}): {c['status']}{extra}")
    return 0


def _log_files(repo: str, feature: str, worker: str | None) -> list[Path]:
    from ..core.plan import log_dir

    logs = Path(log_dir(repo, feature))
    if worker is not None:
        if not worker.isdigit():
            raise ConfigError(f"logs: WORKER must be a worker id (0, 1, ...), got {worker!r}")
        path = logs / f"worker-{worker}.stdout.log"
        if not path.is_file():
            raise MahabharathaError(f"no log for worker {worker} at {path}")
        return [path]
    files = sorted(logs.glob("worker-*.stdout.log"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    if not files:
        raise MahabharathaError(f"no worker logs in {logs}", hint="start a run with `mahabharatha kurukshetra`")
    return files


_COLOURS = ("36", "33", "35", "32", "34", "31")


def _tag(name: str, n: int) -> str:
    """``[worker-N] ``: coloured on a terminal (a colour per worker), plain otherwise."""
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        return f"\x1b[{_COLOURS[n % len(_COLOURS)]}m[{name}]\x1b[0m "
    return f"[{name}] "


def cmd_logs(args: argparse.Namespace) -> int:
    repo, feature = repo_feature(args)
    if getattr(args, "feature", None) and not state_store(repo, feature).exists():
        raise MahabharathaError(
            f"no run of feature {feature!r} in {repo}, so no logs for it",
            hint="see `mahabharatha status --feature NAME` for the features that ran",
        )
    files = _log_files(repo, feature, getattr(args, "worker", None))
    prefix = len(files) > 1
    tail = getattr(args, "tail", None)
    handles = []
    for path in files:
        fh = open(path, encoding="utf-8", errors="replace")
        lines = fh.readlines()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        tag = _tag(path.name.split(".")[0], len(handles)) if prefix else ""
        sys.stdout.writelines(tag + line if line.endswith("\n") else tag + line + "\n" for line in lines)
        handles.append((tag, fh))
    sys.stdout.flush()
    if not getattr(args, "follow", False):
        for _, fh in handles:
            fh.close()
        return 0
    try:
        while True:  # follow like `tail -f` while the run lasts: a CLI convenience, not part of any run
            active = run_in_progress(repo, feature)  # asked before reading, so the last lines are never missed
            got = False
            for tag, fh in handles:
                for line in fh.readlines():
                    got = True
                    sys.stdout.write(tag + line)
            sys.stdout.flush()
            if not active:
                return 0  # the run is over (or none is running): nothing will write these files any more
            if not got:
                time.sleep(0.25)
    except KeyboardInterrupt:
        return 0
    finally:
        for _, fh in handles:
            fh.close()


def cmd_retry(args: argparse.Namespace) -> int:
    """Put failed and blocked tasks (or one TASK) back to pending so the next run (or the running one) takes them."""
    repo, feature = repo_feature(args)
    store = state_store(repo, feature)
    _read_state(repo, feature)
    wanted = getattr(args, "task", None)
    with store.transaction() as data:
        if wanted is not None and wanted not in data["tasks"]:
            raise MahabharathaError(f"no task {wanted!r} in feature {feature}", hint="see `mahabharatha status`")
        reset = []
        for tid, t in sorted(data["tasks"].items()):
            if (wanted is None and t["status"] in (S.FAILED, S.BLOCKED)) or (tid == wanted and t["status"] != S.CLAIMED):
                t.update(status=S.PENDING, worker=None, attempts=0, error="")
                reset.append(tid)
        if reset and data["status"] in S.FINAL:
            data["status"] = S.RUNNING
            data["message"] = ""
        S.rewind_to_pending(data)
    if not reset:
        print("Nothing to retry" + (f": {wanted} is being worked on" if wanted else ": no failed or blocked tasks"))
        return 0
    print(f"Back to pending: {', '.join(reset)}. Run `mahabharatha kurukshetra` to continue.")
    return 0


def cmd_install_commands(args: argparse.Namespace) -> int:
    """Copy the /mahabharatha:* slash-command files into ``<repo>/.claude/commands/mahabharatha/``."""
    from ..planning import find_repo_root

    repo = find_repo_root(getattr(args, "repo", "."))
    target = repo / ".claude" / "commands" / "mahabharatha"
    target.mkdir(parents=True, exist_ok=True)
    installed = []
    for entry in sorted(resources.files("mahabharatha.commands").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".md"):
            with resources.as_file(entry) as src:
                shutil.copyfile(src, target / entry.name)
            installed.append("/mahabharatha:" + entry.name[:-3])
    print(f"Installed {len(installed)} commands into {target}: {', '.join(installed)}")
    return 0
