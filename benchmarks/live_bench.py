"""The live view's CPU cost while a 30-task run goes (target: under 5% of one core).

    python benchmarks/live_bench.py [--mode subprocess|container] [--image mahabharatha-worker:test]
                                    [--tasks 30] [--workers 4] [--agent-seconds 1.0]

Two measurements, each of a real ``mahabharatha`` process on a pseudo-terminal (so the view is drawn, as on a
user's screen; the terminal's output is read and thrown away):

- ``status --watch``: a second process showing the run from its journal, started with the run. Its CPU time
  (user + system, from ``wait4``) over its wall time is the view's whole cost, start-up included; sampled
  from ``/proc`` after its first 2 s, its steady cost while the run goes;
- ``kurukshetra`` with the view against the same run with ``MAHABHARATHA_NO_LIVE=1`` (plain lines): the
  difference of the run process's CPU time, over the run's wall time, is what drawing costs the run itself.

The scripted agent sleeps ``--agent-seconds`` per task, standing in for an agent that waits on its model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_repo(where: Path, *, tasks: int, workers: int, agent_seconds: float, mode: str, image: str) -> Path:
    repo = where / "repo"
    repo.mkdir(parents=True)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@e.invalid", *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    (repo / "README.md").write_text("bench\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    per_level = tasks // 3
    graph = []
    for i in range(tasks):
        level = min(3, i // per_level + 1)
        deps = [f"T{i - per_level:02d}"] if level > 1 else []
        graph.append({"id": f"T{i:02d}", "level": level, "dependencies": deps, "files": {"create": [f"out/T{i:02d}.txt"]},
                      "scripted": {"sleep": agent_seconds}})
    spec = repo / ".gsd" / "specs" / "bench"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "bench", "tasks": graph}))
    (repo / ".gsd" / ".current-feature").write_text("bench\n")
    (repo / ".mahabharatha").mkdir()
    config = (f"workers:\n  launcher_type: {mode}\n  max_concurrent: {workers}\n"
              f"  container_prefix: mh-bench-{uuid.uuid4().hex[:6]}\n"
              "  agent_command: python3 -m mahabharatha_worker.scripted_agent\n")
    if mode == "container":
        config += f"resources:\n  container_image: {image}\n  container_memory_limit: 256m\n  container_cpu_limit: 0.5\n"
    (repo / ".mahabharatha" / "config.yaml").write_text(config)
    (where / "home").mkdir()
    return repo


def on_pty(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    os.set_blocking(master, True)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 170, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return proc, master


class Sampler:
    """Samples a process's CPU time (``/proc/PID/stat``) to tell its start-up (imports, first screen) from
    its steady state."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, []  # (monotonic, cpu seconds)
        self.tick = os.sysconf("SC_CLK_TCK")
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                with open(f"/proc/{self.pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                return
            if fields[0] == "Z":
                return
            self.samples.append((time.monotonic(), (int(fields[11]) + int(fields[12])) / self.tick))
            time.sleep(0.2)

    def steady(self, skip: float = 2.0) -> float:
        """CPU share (percent of one core) after the first ``skip`` seconds."""
        if not self.samples:
            return float("nan")
        start = next((s for s in self.samples if s[0] - self.samples[0][0] >= skip), self.samples[0])
        end = self.samples[-1]
        return 100 * (end[1] - start[1]) / max(end[0] - start[0], 1e-9)


def cpu_of(proc: subprocess.Popen[bytes]) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of a child, from wait4 (its own and its children's: none here)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, 0.0


def one_run(opts: argparse.Namespace, *, live: bool, watch: bool) -> dict[str, float]:
    where = Path(tempfile.mkdtemp(prefix="mh-live-bench-"))
    repo = make_repo(where, tasks=opts.tasks, workers=opts.workers, agent_seconds=opts.agent_seconds, mode=opts.mode, image=opts.image)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(where / "home"), TERM="xterm-256color")
    if not live:
        env["MAHABHARATHA_NO_LIVE"] = "1"
    cmd = [sys.executable, "-m", "mahabharatha"]
    t0 = time.monotonic()
    run, m1 = on_pty([*cmd, "kurukshetra", "--workers", str(opts.workers)], repo, env)
    watcher = None
    if watch:
        journal = repo / ".mahabharatha" / "journal" / "bench.jsonl"
        while not journal.exists():
            time.sleep(0.05)
        time.sleep(0.3)  # the state exists once the journal has its first line
        wenv = dict(env)
        wenv.pop("MAHABHARATHA_NO_LIVE", None)
        tw = time.monotonic()
        watcher, m2 = on_pty([*cmd, "status", "--watch"], repo, wenv)
        sampler = Sampler(watcher.pid)
    run_cpu, _ = cpu_of(run)
    wall = time.monotonic() - t0
    out = {"run_cpu_s": run_cpu, "run_wall_s": wall, "run_rc": float(run.returncode)}
    if watcher is not None:
        watch_cpu, _ = cpu_of(watcher)
        out.update(watch_cpu_s=watch_cpu, watch_wall_s=time.monotonic() - tw, watch_rc=float(watcher.returncode),
                   watch_steady=sampler.steady())
    subprocess.run(["rm", "-rf", str(where)], check=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("subprocess", "container"), default="subprocess")
    parser.add_argument("--image", default="mahabharatha-worker:test")
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--agent-seconds", type=float, default=1.0)
    opts = parser.parse_args()
    plain = one_run(opts, live=False, watch=False)
    live = one_run(opts, live=True, watch=True)
    print(f"{opts.tasks} tasks, {opts.workers} workers, {opts.mode} mode, agent {opts.agent_seconds:g} s per task")
    print(f"  plain run:            {plain['run_wall_s']:.1f} s wall, {plain['run_cpu_s']:.2f} s CPU (exit {plain['run_rc']:.0f})")
    print(f"  run with live view:   {live['run_wall_s']:.1f} s wall, {live['run_cpu_s']:.2f} s CPU (exit {live['run_rc']:.0f})")
    drawing = (live["run_cpu_s"] - plain["run_cpu_s"]) / live["run_wall_s"] * 100
    print(f"  the view in the run:  {drawing:+.1f}% of one core (CPU difference over the run's wall time)")
    share = live["watch_cpu_s"] / live["watch_wall_s"] * 100
    print(f"  status --watch:       {live['watch_cpu_s']:.2f} s CPU over {live['watch_wall_s']:.1f} s = {share:.1f}% of one core"
          f" (exit {live['watch_rc']:.0f}); after its first 2 s (start-up: imports, replay): {live['watch_steady']:.1f}%")
    ok = live["watch_steady"] < 5 and drawing < 5
    print(f"  target: under 5% of one core while the run goes -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
