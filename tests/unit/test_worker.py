"""The worker runtime run directly on the host (``python -m mahabharatha_worker`` with host paths) against the
orchestrator's real channel handler (no launcher, no loop: the tests drive the state through the run's lock):
git setup, ready line, context-limit and stop-signal exits leave the task claimable, the run's end reaches an
idle worker, leftovers of an interrupted task are kept apart in the user's repository, a resumed worker starts
from the merged base. The ``harness`` fixture is in conftest.py."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.worker import protocol as P
from mahabharatha.worker import state as S

BRANCH = "mahabharatha/feat/worker-0"


def git(repo: str | Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def _task(tid: str, **scripted: Any) -> dict[str, Any]:
    return {"id": tid, "level": 1, "title": tid, "files": {"create": [f"{tid}.txt"]}, "scripted": scripted}


def _wait(h: Any, task_id: str, *statuses: str, proc: Any = None, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while (task := h.task(task_id))["status"] not in statuses:
        assert time.monotonic() < deadline, f"{task_id} never {'/'.join(statuses)}: {task}"
        assert proc is None or proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    return task


def _start_until_claimed(h: Any, task_id: str, env: dict[str, str] | None = None) -> Any:
    """Start the worker, check its ready line, and wait until it works on ``task_id`` (claimed in the state,
    and the worker has the claim's answer: it says so before it starts the agent)."""
    proc = h.start(env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == P.ready_line(0)
    _wait(h, task_id, S.CLAIMED, proc=proc)
    seen = [proc.stdout.readline() for _ in range(1)]
    while f"task {task_id} (attempt " not in seen[-1]:
        assert seen[-1] and len(seen) < 50, seen
        seen.append(proc.stdout.readline())
    return proc


def _end_run(h: Any, status: str = "done") -> None:
    with h.tx() as data:  # what the orchestrator does at the run's end: waiting claims answer "final"
        data["status"] = status


def _files(repo: str, ref: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", ref).splitlines())


@pytest.mark.parametrize("broken", ["objects", "workspace"])
def test_git_setup_failure_is_exit_1_before_the_ready_line(harness, tmp_path: Path, broken: str) -> None:
    # (The worker's branch is private now and set by the worker itself: a checkout on the wrong branch, the
    # old failure, cannot happen. What can: a private repository that cannot see the run's commits because
    # /repo/.git is not mounted, or no workspace.)
    h = harness([_task("A")])
    env = h.env()
    if broken == "workspace":
        h.workspace().rename(tmp_path / "moved-away")
        expected = "does not exist"
    else:
        env[P.ENV_GIT_MAIN_DIR] = str(tmp_path / "not-mounted" / ".git")
        expected = "cannot see commit"
    proc = h.start(env=env, cwd=tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == P.EXIT_ERROR, out
    assert "git setup failed" in out and expected in out, out
    assert P.READY_MARKER not in out
    assert h.task("A")["status"] == S.PENDING and h.task("A")["attempts"] == 0  # nothing claimed


def test_an_agent_moving_the_private_head_does_not_change_what_is_handed_back(harness) -> None:
    # The old "wrong branch" premise in the new design: an agent may run git in its workspace (the private
    # repository), even switch branches; the worker commits the work tree on the start commit itself and hands
    # back its own branch, which is all the orchestrator admits.
    h = harness([_task("A")])
    agent = f"git switch -q -c elsewhere && {h.env()[P.ENV_AGENT_COMMAND]}"
    proc = h.start(env=h.env(**{P.ENV_AGENT_COMMAND: agent}))
    task = _wait(h, "A", S.DONE, S.FAILED, proc=proc)
    _end_run(h)
    out, _ = proc.communicate(timeout=30)
    assert task["status"] == S.DONE and proc.returncode == P.EXIT_DONE, (task, out)
    assert git(h.repo, "rev-parse", BRANCH) == task["commit"] and "A.txt" in _files(h.repo, BRANCH)
    assert git(h.repo, "for-each-ref", "--format=%(refname)", "refs/heads/elsewhere") == ""  # stayed private


def test_context_limit_exits_2_and_leaves_the_task_claimable(harness) -> None:
    h = harness([_task("A", exit={"1": 2})])
    proc = h.start()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == P.EXIT_CONTEXT_LIMIT, out
    assert out.splitlines()[0] == P.ready_line(0)
    task = h.task("A")
    assert task["status"] == S.PENDING and task["attempts"] == 1 and task["worker"] is None
    assert 0 not in h.run.claims


def test_stop_signal_exits_130_and_releases_the_task(harness) -> None:
    h = harness([_task("A", sleep=60)])
    proc = _start_until_claimed(h, "A")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == P.EXIT_STOPPED, out
    assert h.task("A")["status"] == S.PENDING and 0 not in h.run.claims
    # The orchestrator's reply names what it released (the worker no longer writes progress.md itself).
    assert "stopped; A released" in out, out


def test_repeated_stop_signals_still_exit_130(harness) -> None:
    """Two stoppers at once (the orchestrator and `mahabharatha stop`) send SIGTERM twice: one arriving while
    the interpreter shuts down must not turn the worker's 130 into a default-handler death (143)."""
    h = harness([_task("A", sleep=60)])
    proc = _start_until_claimed(h, "A")
    deadline = time.monotonic() + 30
    while proc.poll() is None:  # keep signalling until it is gone
        assert time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.0005)
    assert proc.returncode == P.EXIT_STOPPED, proc.stdout.read()
    assert h.task("A")["status"] == S.PENDING


def test_a_stop_signal_ends_an_idle_workers_wait_with_130(harness) -> None:
    # An idle worker waits in its claim on the channel (no polling): the signal must end the wait at once.
    h = harness([_task("A")])
    proc = h.start()
    _wait(h, "A", S.DONE, proc=proc)
    time.sleep(0.3)  # back in its claim
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"an idle worker did not end on SIGTERM: {out}") from None
    assert proc.returncode == P.EXIT_STOPPED, out
    assert h.task("A")["status"] == S.DONE  # finished work is never released


def test_an_agent_ignoring_sigterm_is_killed_after_the_grace_period(harness) -> None:
    h = harness([_task("A")])
    env = h.env(**{P.ENV_AGENT_COMMAND: "trap '' TERM; touch ../agent-trapped; sleep 60", P.ENV_STOP_GRACE: "1"})
    trapped = h.workspace().parent / "agent-trapped"
    proc = h.start(env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == P.ready_line(0)
    deadline = time.monotonic() + 30
    while not trapped.exists():  # the agent runs and ignores SIGTERM
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=20)  # not the agent's 60 s
    assert proc.returncode == P.EXIT_STOPPED, out
    assert time.monotonic() - t0 < 15
    assert h.task("A")["status"] == S.PENDING


def test_final_status_ends_an_idle_worker(harness) -> None:
    h = harness([_task("A")])
    proc = h.start()
    task = _wait(h, "A", S.DONE, proc=proc)
    time.sleep(0.3)
    assert proc.poll() is None  # waits (in its claim) for the orchestrator to end the level
    _end_run(h, "blocked")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == P.EXIT_BLOCKED, out
    assert "run blocked; exiting" in out
    # The result reached the user's repository only through the orchestrator's import: the worker branch.
    assert git(h.repo, "log", "-1", "--format=%s", BRANCH) == "A: A"
    assert git(h.repo, "rev-parse", BRANCH) == task["commit"]
    assert git(h.workspace(), "log", "-1", "--format=%s") == "A: A"  # and the workspace stands on it


def test_leftovers_of_an_interrupted_task_are_kept_apart(harness) -> None:
    h = harness([_task("A")])
    (h.workspace() / "half-done.txt").write_text("partial work of a killed agent\n")
    start = git(h.repo, "rev-parse", h.plan.base_branch)
    proc = h.start()
    task = _wait(h, "A", S.DONE, proc=proc)
    _end_run(h)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "kept uncommitted leftovers" in out
    # Kept in the user's repository (imported from the worker's bundle), under the feature's namespace ...
    refs = git(h.repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/feat/").splitlines()
    assert len(refs) == 1 and refs[0].startswith(P.interrupted_ref_prefix("feat", 0)), refs
    assert "half-done.txt" in _files(h.repo, refs[0])
    assert git(h.repo, "rev-parse", f"{refs[0]}^") == start
    # ... and not mixed into task A's commit, which starts from the run's commit, not from the leftovers.
    assert "half-done.txt" not in _files(h.repo, task["commit"]) and "A.txt" in _files(h.repo, task["commit"])
    assert git(h.repo, "rev-parse", f"{task['commit']}^") == start
    assert not (h.workspace() / "half-done.txt").exists()
    assert git(h.repo, "for-each-ref", "--format=%(refname)", "refs/mahabharatha/incoming/") == ""  # cleaned


def test_a_resumed_worker_starts_from_the_merged_base(harness, tmp_path: Path) -> None:
    # The orchestrator merged work into the base after this worker's branch was made (e.g. the run was
    # stopped right after a level merge): the worker's task must start from the base.
    task = _task("A")
    task["verification"] = {"command": "test -f from-base.txt"}
    h = harness([task])
    other = tmp_path / "other"
    git(h.repo, "worktree", "add", "-q", str(other), h.plan.base_branch)
    (other / "from-base.txt").write_text("merged earlier\n")
    git(other, "add", "-A")
    git(other, "commit", "-qm", "earlier level")
    git(h.repo, "worktree", "remove", str(other))
    base = git(h.repo, "rev-parse", h.plan.base_branch)
    assert git(h.repo, "rev-parse", BRANCH) != base  # the worker branch is behind
    proc = h.start()
    done = _wait(h, "A", S.DONE, S.FAILED, proc=proc)
    _end_run(h)
    out, _ = proc.communicate(timeout=30)
    assert done["status"] == S.DONE, (done, out)
    assert git(h.repo, "rev-parse", f"{done['commit']}^") == base
    assert {"from-base.txt", "A.txt"} <= _files(h.repo, BRANCH)
