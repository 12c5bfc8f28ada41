"""The worker runtime run directly on the host (``python -m mahabharatha_worker`` with host paths): git check,
ready line, context-limit and stop-signal exits leave the task claimable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.launchers import worker_env_for_host
from mahabharatha.edge.worktrees import ensure_worktrees
from mahabharatha.planning import plan
from mahabharatha.worker import protocol as P
from mahabharatha.worker import state as S


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def setup(tmp_path: Path):
    def make(tasks: list[dict[str, Any]]) -> tuple[Any, dict[str, str], S.StateStore]:
        repo = (tmp_path / "p" / "repo").resolve()
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("hello\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "initial")
        spec = repo / ".gsd" / "specs" / "feat"
        spec.mkdir(parents=True)
        (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
        (repo / ".mahabharatha").mkdir()
        (repo / ".mahabharatha" / "config.yaml").write_text(
            "workers:\n  launcher_type: subprocess\n  agent_command: python3 -m mahabharatha_worker.scripted_agent\n"
        )
        (tmp_path / "home").mkdir()
        p = plan(str(repo), feature="feat", workers=1, environ={}, home=tmp_path / "home")
        ensure_worktrees(p.repo, p.base_branch, p.worktrees)
        store = S.StateStore(p.state_dir, "feat")
        store.create(S.new_state("feat", [(t["id"], t["level"]) for t in tasks]))
        return p, worker_env_for_host(p, p.workers[0]), store

    return make


def _task(tid: str, **scripted: Any) -> dict[str, Any]:
    return {"id": tid, "level": 1, "title": tid, "files": {"create": [f"{tid}.txt"]}, "scripted": scripted}


def _start(p: Any, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", P.RUNTIME_PACKAGE], cwd=p.workers[0].worktree.path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _start_until_claimed(p: Any, env: dict[str, str], store: Any, task_id: str) -> tuple[subprocess.Popen[str], float]:
    """Start the worker, check its ready line, and wait until it has claimed ``task_id``; returns the process
    and the deadline (30 s from start) the caller may keep using."""
    proc = _start(p, env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == P.ready_line(0)
    deadline = time.monotonic() + 30
    while (store.read() or {})["tasks"][task_id]["status"] != "claimed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, deadline


def test_wrong_branch_is_exit_1_before_the_ready_line(setup) -> None:
    p, env, _ = setup([_task("A")])
    git(Path(p.workers[0].worktree.path), "switch", "-q", "-c", "elsewhere")
    proc = _start(p, env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == P.EXIT_ERROR
    assert "expected refs/heads/mahabharatha/feat/worker-0" in out
    assert P.READY_MARKER not in out


def test_context_limit_exits_2_and_leaves_the_task_claimable(setup) -> None:
    p, env, store = setup([_task("A", exit={"1": 2})])
    proc = _start(p, env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == P.EXIT_CONTEXT_LIMIT, out
    assert out.splitlines()[0] == P.ready_line(0)
    task = (store.read() or {})["tasks"]["A"]
    assert task["status"] == "pending" and task["attempts"] == 1


def test_stop_signal_exits_130_and_releases_the_task(setup) -> None:
    p, env, store = setup([_task("A", sleep=60)])
    proc, deadline = _start_until_claimed(p, env, store, "A")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == P.EXIT_STOPPED, out
    assert (store.read() or {})["tasks"]["A"]["status"] == "pending"
    progress = Path(p.repo, ".gsd/specs/feat/progress.md").read_text()
    assert "stopped; A released" in progress


def test_repeated_stop_signals_still_exit_130(setup) -> None:
    """Two stoppers at once (the orchestrator and `mahabharatha stop`) send SIGTERM twice: one arriving while
    the interpreter shuts down must not turn the worker's 130 into a default-handler death (143)."""
    p, env, store = setup([_task("A", sleep=60)])
    proc, deadline = _start_until_claimed(p, env, store, "A")
    while proc.poll() is None:  # keep signalling until it is gone
        assert time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.0005)
    assert proc.returncode == P.EXIT_STOPPED, proc.stdout.read()
    assert (store.read() or {})["tasks"]["A"]["status"] == "pending"


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace_period(setup) -> None:
    p, env, store = setup([_task("A")])
    env = {**env, P.ENV_AGENT_COMMAND: "trap '' TERM; touch ../agent-trapped; sleep 60", P.ENV_STOP_GRACE: "1"}
    trapped = Path(p.workers[0].worktree.path).parent / "agent-trapped"
    proc = _start(p, env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == P.ready_line(0)
    deadline = time.monotonic() + 30
    while not trapped.exists():  # the agent runs and ignores SIGTERM
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)  # not the agent's 60 s
    finally:
        proc.kill()
    assert proc.returncode == P.EXIT_STOPPED, out
    assert (store.read() or {})["tasks"]["A"]["status"] == "pending"


def test_final_status_ends_an_idle_worker(setup) -> None:
    p, env, store = setup([_task("A")])
    proc = _start(p, env)
    deadline = time.monotonic() + 30
    while (store.read() or {})["tasks"]["A"]["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert proc.poll() is None  # waits for the orchestrator to end the level
    with store.transaction() as data:
        data["status"] = "blocked"
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == P.EXIT_BLOCKED, out
    subject = git(Path(p.workers[0].worktree.path), "log", "-1", "--format=%s")
    assert subject == "A: A"


def test_leftovers_of_an_interrupted_task_are_kept_apart(setup) -> None:
    p, env, store = setup([_task("A")])
    wt = Path(p.workers[0].worktree.path)
    (wt / "half-done.txt").write_text("partial work of a killed agent\n")
    proc = _start(p, env)
    deadline = time.monotonic() + 30
    while (store.read() or {})["tasks"]["A"]["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with store.transaction() as data:
        data["status"] = "done"
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "kept uncommitted leftovers" in out
    files = git(wt, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
    assert "half-done.txt" not in files and "A.txt" in files  # not mixed into task A's commit
    refs = git(wt, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/feat/").splitlines()
    assert len(refs) == 1 and "half-done.txt" in git(wt, "ls-tree", "-r", "--name-only", refs[0])


def test_a_resumed_worker_starts_from_the_merged_base(setup, tmp_path: Path) -> None:
    # The orchestrator merged work into the base after this worker's branch was made (e.g. the run was
    # stopped right after a level merge): the worker must bring it in before taking a task.
    task = _task("A")
    task["verification"] = {"command": "test -f from-base.txt"}
    p, env, store = setup([task])
    other = tmp_path / "other"
    git(Path(p.repo), "worktree", "add", "-q", str(other), p.base_branch)
    (other / "from-base.txt").write_text("merged earlier\n")
    git(other, "add", "-A")
    git(other, "commit", "-qm", "earlier level")
    git(Path(p.repo), "worktree", "remove", str(other))
    proc = _start(p, env)
    deadline = time.monotonic() + 30
    while (store.read() or {})["tasks"]["A"]["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with store.transaction() as data:
        data["status"] = "done"
    out, _ = proc.communicate(timeout=30)
    assert (store.read() or {})["tasks"]["A"]["status"] == "done", out
