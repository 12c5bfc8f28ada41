"""Fixtures shared by the unit tests: a run's real channel handler (``_Run.handle``) served on the workers'
sockets, without its loop or a launcher, so tests drive the state themselves and run real worker processes
(``python -m mahabharatha_worker``) against it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.graph import TaskGraph, load_graph
from mahabharatha.core.model import LaunchPlan
from mahabharatha.edge import worktrees as _worktrees
from mahabharatha.edge.channel import ChannelServer
from mahabharatha.edge.launchers import worker_env_for_host
from mahabharatha.edge.orchestrator import _Run, init_state
from mahabharatha.planning import plan
from mahabharatha.worker import protocol as P
from mahabharatha.worker import state as S

SCRIPTED_AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def git(repo: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


class Harness:
    """One feature's run as the workers see it: plan, graph, state and the orchestrator's channel handler."""

    def __init__(self, p: LaunchPlan, graph: TaskGraph) -> None:
        self.plan = p
        self.graph = graph
        self.lines: list[str] = []
        self.run = _Run(p, graph, self.lines.append, launcher_factory=None)
        self.store: S.StateStore = self.run.store
        init_state(self.store, graph)
        _worktrees.ensure_worktrees(p.repo, p.base_branch, p.worktrees, host_git=True)
        self.server = ChannelServer({spec.worker_id: spec.channel_socket for spec in p.workers}, self.run.handle).start()
        self.run.server = self.server
        self.procs: list[subprocess.Popen[str]] = []

    @property
    def repo(self) -> str:
        return self.plan.repo

    def workspace(self, wid: int = 0) -> Path:
        return Path(self.plan.workers[wid].worktree.path)

    def env(self, wid: int = 0, **changes: str) -> dict[str, str]:
        return {**worker_env_for_host(self.plan, self.plan.workers[wid]), **changes}

    def tx(self) -> Any:
        """A state transaction under the run's lock: waiting claims wake afterwards."""
        return self.run._tx()

    def task(self, tid: str) -> dict[str, Any]:
        return (self.store.read() or {})["tasks"][tid]

    def starting(self, wid: int) -> None:
        """What the run does as it (re)starts a worker: it may keep leftovers once, before its first task."""
        may_park = getattr(self.run, "may_park", None)
        if may_park is not None:
            with self.run.changed:
                may_park.add(wid)

    def start(self, wid: int = 0, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.Popen[str]:
        self.starting(wid)
        proc = subprocess.Popen(
            [sys.executable, "-m", P.RUNTIME_PACKAGE], cwd=str(cwd or self.workspace(wid)),
            env=env if env is not None else self.env(wid), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        with self.run.changed:  # claims still waiting answer "stopped"
            self.run.stopping = True
            self.run.changed.notify_all()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.server.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Any]:
    """``make(tasks, workers=1, config="")``: a repository with the feature's graph and a :class:`Harness` on
    it. The channel server is closed (and worker processes killed) afterwards."""
    made: list[Harness] = []

    def make(tasks: list[dict[str, Any]], *, workers: int = 1, config: str = "") -> Harness:
        repo = (tmp_path / "p" / "repo").resolve()
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("hello\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "initial")
        spec = repo / ".gsd" / "specs" / "feat"
        spec.mkdir(parents=True)
        graph_file = spec / P.GRAPH_FILE
        graph_file.write_text(json.dumps({"feature": "feat", "tasks": tasks}))
        (repo / ".mahabharatha").mkdir()
        (repo / ".mahabharatha" / "config.yaml").write_text(
            f"workers:\n  launcher_type: subprocess\n  max_concurrent: {workers}\n  agent_command: {SCRIPTED_AGENT}\n{config}"
        )
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        p = plan(str(repo), feature="feat", workers=workers, environ={}, home=home)
        h = Harness(p, load_graph(str(graph_file), graph_file.read_text()))
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
