"""End to end in real containers: the worker runtime, the scripted agent and the orchestrator on real git repos.

Uses the shared fixtures of ``conftest.py`` (engine, ``mahabharatha-worker:test`` image, a fresh repo, a unique
container prefix, label-based cleanup).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.graph import load_graph
from mahabharatha.core.model import LABEL_REPO
from mahabharatha.edge.orchestrator import orchestrate
from mahabharatha.errors import GraphError
from mahabharatha.worker import state as S

pytestmark = pytest.mark.docker

AGENT = "python3 -m mahabharatha_worker.scripted_agent"
BASE = "mahabharatha/feat/base"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def task(tid: str, level: int, deps: tuple[str, ...] = (), create: tuple[str, ...] = (), modify: tuple[str, ...] = (),
         verify: str = "", **scripted: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "id": tid, "title": f"title {tid}", "level": level, "dependencies": list(deps),
        "files": {"create": list(create), "modify": list(modify), "read": []},
        "verification": {"command": verify, "timeout_seconds": 60},
    }
    if scripted:
        t["scripted"] = scripted
    return t


def write_graph(repo: Path, tasks: list[dict[str, Any]]) -> Any:
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    path = spec / "task-graph.json"
    path.write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    return load_graph(str(path), path.read_text())


def config(retry: int = 2, memory: str = "256m") -> str:
    return (
        f"workers:\n  agent_command: {AGENT}\n  retry_attempts: {retry}\n"
        f"resources:\n  container_memory_limit: {memory}\n  container_cpu_limit: 1.0\n"
    )


def run(make_plan: Any, docker_client: Any, graph: Any, workers: int, **cfg: Any) -> tuple[Any, list[str]]:
    plan = make_plan(workers, config=config(**cfg))
    lines: list[str] = []
    result = orchestrate(plan, graph, out=lines.append, client=docker_client)
    return result, lines


def state_of(repo: Path) -> dict[str, Any]:
    return json.loads((repo / ".mahabharatha" / "state" / "feat" / "state.json").read_text())


def three_levels(repo: Path) -> Any:
    """Six tasks in three levels: level 2 modifies level 1's file, level 3 the README (also used remotely)."""
    return write_graph(repo, [
        task("A", 1, create=("src/a.py",), verify="test -f src/a.py && grep -c task src/a.py | grep -q 1"),
        task("B", 1, create=("src/b.py",)),
        task("C", 1, create=("docs/c.md",)),
        task("D", 2, ("A", "B"), create=("src/d.py",), modify=("src/a.py",)),
        task("E", 2, ("C",), create=("docs/e.md",)),
        task("F", 3, ("D", "E"), modify=("README.md",), verify="grep -q 'task F' README.md"),
    ])


def test_three_levels_on_three_workers(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    graph = three_levels(git_repo)
    result, lines = run(make_plan, docker_client, graph, 3)
    assert (result.status, result.exit_code) == ("done", 0), lines
    files = set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert files == {"README.md", "src/a.py", "src/b.py", "docs/c.md", "src/d.py", "docs/e.md"}
    assert "task D" in git(git_repo, "show", f"{BASE}:src/a.py")  # level 2 built on level 1's merge
    # A clean history: the initial commit, one commit per task, and the orchestrator's merges; nothing else.
    subjects = git(git_repo, "log", "--format=%s", BASE).splitlines()
    assert sorted(s.split(":")[0] for s in subjects if not s.startswith(("initial", "mahabharatha feat level"))) == list("ABCDEF")
    assert git(git_repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(git_repo, "status", "--porcelain", "--untracked-files=no") == ""
    # Every workspace holds exactly its branch (nothing left uncommitted), and can be removed without --force.
    from mahabharatha.edge.worktrees import remove_worktree, uncommitted_changes

    for spec in make_plan(3, config=config()).workers:
        wt = spec.worktree
        assert uncommitted_changes(git_repo, wt.path, git(git_repo, "rev-parse", wt.branch)) == []
        assert remove_worktree(git_repo, wt.path, branch=wt.branch, git_dir=wt.git_dir)
    # Nothing of a worker went into the user's .git but the run's refs and objects.
    assert not (git_repo / ".git" / "worktrees").exists()
    refs = git(git_repo, "for-each-ref", "--format=%(refname)").splitlines()
    assert all(r == "refs/heads/main" or r.startswith(("refs/heads/mahabharatha/feat/", "refs/mahabharatha/")) for r in refs), refs
    assert not [r for r in refs if r.startswith("refs/mahabharatha/incoming/")]
    # The run removed its containers.
    assert docker_client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={git_repo}"}) == []


def test_failed_verification_blocks_dependants_exit_3(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [
        task("ok", 1, create=("ok.txt",)),
        task("bad", 1, create=("bad.txt",), verify="test -f bad.txt && false"),
        task("needs-bad", 2, ("bad",), create=("x.txt",)),
    ])
    result, lines = run(make_plan, docker_client, graph, 2)
    assert (result.status, result.exit_code) == ("blocked", 3), lines
    st = state_of(git_repo)["tasks"]
    assert st["bad"]["status"] == "failed" and "verification failed (exit 1)" in st["bad"]["error"]
    assert st["needs-bad"]["status"] == "blocked" and st["needs-bad"]["error"] == "blocked by bad"
    assert any("exited 3" in line for line in lines)  # the workers ended on the blocked run
    assert "bad.txt" not in git(git_repo, "ls-tree", "-r", "--name-only", BASE)


def test_memory_kill_is_retried_and_succeeds(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    # The agent needs 400 MB on its first attempt only (a spike): the 128m limit kills it, the orchestrator
    # puts the task back and restarts the worker, the second attempt fits.
    graph = write_graph(git_repo, [task("big", 1, create=("big.txt",), allocate_mb={"1": 400}), task("next", 2, ("big",), create=("n.txt",))])
    result, lines = run(make_plan, docker_client, graph, 1, memory="128m")
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert any("exited 137" in line for line in lines) and any("restarting" in line for line in lines), lines
    assert any("OOMKilled" in line for line in lines), lines  # the engine confirms it was the memory limit
    assert state_of(git_repo)["tasks"]["big"]["attempts"] == 2
    assert "big.txt" in git(git_repo, "ls-tree", "-r", "--name-only", BASE)


def test_memory_kill_beyond_retries_fails_with_advice(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [task("big", 1, create=("big.txt",), allocate_mb={"1": 400, "2": 400})])
    result, lines = run(make_plan, docker_client, graph, 1, memory="128m", retry=1)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    error = state_of(git_repo)["tasks"]["big"]["error"]
    assert "raise resources.container_memory_limit (now 128m)" in error, error


def test_memory_kill_then_the_advised_higher_limit_succeeds(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    # The user's path after the advice: raise the limit, `mahabharatha retry`, run again. Work already merged
    # stays, and the task that needed more memory now fits.
    from mahabharatha.cli import main

    graph = write_graph(git_repo, [
        task("small", 1, create=("small.txt",)),
        task("big", 2, ("small",), create=("big.txt",), allocate_mb={"1": 300}),
    ])
    result, lines = run(make_plan, docker_client, graph, 1, memory="128m", retry=0)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    assert "raise resources.container_memory_limit (now 128m)" in state_of(git_repo)["tasks"]["big"]["error"]
    small_commit = state_of(git_repo)["tasks"]["small"]["commit"]

    assert main(["retry", "--repo", str(git_repo), "--feature", "feat"]) == 0
    again, lines2 = run(make_plan, docker_client, graph, 1, memory="768m", retry=0)
    assert (again.status, again.exit_code) == ("done", 0), lines2
    tasks = state_of(git_repo)["tasks"]
    assert tasks["small"]["commit"] == small_commit and tasks["big"]["status"] == "done"
    assert {"small.txt", "big.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())


def test_context_limit_restarts_the_worker(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    graph = write_graph(git_repo, [task("A", 1, create=("a.txt",), exit={"1": 2})])
    result, lines = run(make_plan, docker_client, graph, 1)
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert any("context limit reached on A (exit 2); restarting" in line for line in lines), lines
    assert state_of(git_repo)["tasks"]["A"]["attempts"] == 2


def test_stop_yields_130_and_resume_finishes(git_repo: Path, make_plan: Any, docker_client: Any) -> None:
    from mahabharatha.cli import main

    graph = write_graph(git_repo, [
        task("quick", 1, create=("q.txt",)),
        task("slow", 1, create=("s.txt",), sleep={"1": 120}),
        task("after", 2, ("quick", "slow"), create=("a.txt",)),
    ])
    plan = make_plan(2, config=config())
    box: dict[str, Any] = {}
    lines: list[str] = []
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(plan, graph, out=lines.append, client=docker_client)))
    runner.start()
    store = S.StateStore(plan.state_dir, "feat")
    deadline = time.monotonic() + 120
    while True:  # until quick is done and slow is being worked on
        data = store.read() or {"tasks": {}}
        if data["tasks"].get("quick", {}).get("status") == "done" and data["tasks"].get("slow", {}).get("status") == "claimed":
            break
        assert time.monotonic() < deadline and runner.is_alive(), lines
        time.sleep(0.1)
    # `mahabharatha stop` marks the run stopped before it signals the containers, so the idle worker cannot
    # claim the task the busy one puts back (a bare stop_workers() left that window open).
    assert main(["stop", "--repo", str(git_repo), "--feature", "feat", "--timeout", "20"]) == 0
    runner.join(timeout=120)
    assert (box["result"].status, box["result"].exit_code) == ("stopped", 130), lines
    quick_commit = state_of(git_repo)["tasks"]["quick"]["commit"]
    assert state_of(git_repo)["tasks"]["slow"]["status"] == "pending"
    lines2: list[str] = []
    again = orchestrate(plan, graph, out=lines2.append, client=docker_client)
    assert (again.status, again.exit_code) == ("done", 0), lines2
    st = state_of(git_repo)["tasks"]
    assert st["quick"]["attempts"] == 1 and st["quick"]["commit"] == quick_commit  # not redone, not lost
    assert st["slow"]["attempts"] == 2
    assert {"q.txt", "s.txt", "a.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())


def test_two_tasks_writing_one_file_are_rejected_before_launch(git_repo: Path, container_prefix: str, worker_image: str, docker_client: Any, capsys: Any) -> None:
    from mahabharatha.cli import main

    with pytest.raises(GraphError):
        write_graph(git_repo, [task("a", 1, create=("same.py",)), task("b", 1, modify=("same.py",))])
    (git_repo / ".gsd" / ".current-feature").write_text("feat\n")
    (git_repo / ".mahabharatha").mkdir(exist_ok=True)
    (git_repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  agent_command: {AGENT}\n  container_prefix: {container_prefix}\n"
        f"resources:\n  container_image: {worker_image}\n"
    )
    code = main(["kurukshetra", "--repo", str(git_repo), "--mode", "container", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "tasks 'a' and 'b' of level 1 both create or modify 'same.py'" in err
    assert "Traceback" not in err
    assert docker_client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={git_repo}"}) == []
    assert subprocess.run(["git", "-C", str(git_repo), "rev-parse", "--verify", "-q", BASE], capture_output=True).returncode != 0


def test_a_broken_event_stream_does_not_hang_the_run(git_repo: Path, make_plan: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import mahabharatha.edge.launchers as launchers
    import mahabharatha.edge.orchestrator as orchestrator

    monkeypatch.setattr(launchers.ContainerLauncher, "_on_die", lambda self, *event: None)  # no die events at all
    monkeypatch.setattr(orchestrator, "_WAKE_S", 0.2)
    graph = write_graph(git_repo, [task("A", 1, create=("a.txt",), exit={"1": 2}), task("B", 2, ("A",), create=("b.txt",))])
    result, lines = run(make_plan, docker_client, graph, 1)
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert any("context limit reached on A (exit 2); restarting" in line for line in lines), lines


def test_a_container_over_its_time_is_stopped_and_its_task_fails(git_repo: Path, make_plan: Any, docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import mahabharatha.edge.orchestrator as orchestrator

    monkeypatch.setattr(orchestrator, "_SECONDS_PER_MINUTE", 2.0)  # timeout_minutes: 1 -> two seconds
    graph = write_graph(git_repo, [task("slow", 1, create=("s.txt",), sleep={"1": 120}), task("next", 2, ("slow",), create=("n.txt",))])
    plan = make_plan(1, config=f"workers:\n  agent_command: {AGENT}\n  timeout_minutes: 1\n")
    lines: list[str] = []
    started = time.monotonic()
    result = orchestrate(plan, graph, out=lines.append, client=docker_client)
    assert (result.status, result.exit_code) == ("blocked", 3), lines
    assert time.monotonic() - started < 60, lines  # the 120 s task did not run to its end
    st = state_of(git_repo)["tasks"]
    assert st["slow"]["status"] == "failed"
    assert st["slow"]["error"] == "task attempt timed out after 1 min (workers.timeout_minutes)"
    assert st["next"]["status"] == "blocked"
    assert any("over workers.timeout_minutes=1; stopping it" in line for line in lines), lines
    assert any("exited 130" in line and "after its timeout" in line for line in lines), lines  # the container was stopped
    assert "s.txt" not in git(git_repo, "ls-tree", "-r", "--name-only", BASE)


def test_stopping_one_container_does_not_hold_up_the_orchestrator(make_plan: Any, docker_client: Any) -> None:
    """A timed-out worker is stopped without blocking the loop: stop() returns while the container (here one
    that ignores SIGTERM, so the engine would wait 30 s before killing it) is still winding down."""
    import queue

    from mahabharatha.edge.launchers import ContainerLauncher

    stubborn = ("python3", "-c", (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); time.sleep(600)"
    ))
    plan = make_plan(1, command=stubborn)
    launcher = ContainerLauncher(plan, queue.Queue(), lambda line: None, client=docker_client)
    try:
        launcher.start_all()
        launcher.stop(0)
        assert docker_client.api.inspect_container(launcher.current(0))["State"]["Running"]
    finally:
        launcher.close(success=True)  # removes the container (the fixture would too)


def test_a_container_removed_by_hand_is_a_lost_worker_and_its_task_is_retried(
    git_repo: Path, make_plan: Any, docker_client: Any
) -> None:
    """`docker rm -f` of a worker mid-task: not an abort, not "raise the memory limit": the worker is restarted
    once Docker frees its name and the task runs again."""
    graph = write_graph(git_repo, [
        task("slow", 1, create=("s.txt",), sleep={"1": 60}),
        task("next", 2, ("slow",), create=("n.txt",)),
    ])
    plan = make_plan(1, config=config())
    box: dict[str, Any] = {}
    lines: list[str] = []
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(plan, graph, out=lines.append, client=docker_client)))
    runner.start()
    store = S.StateStore(plan.state_dir, "feat")
    deadline = time.monotonic() + 120
    while (store.read() or {"tasks": {}})["tasks"].get("slow", {}).get("status") != "claimed":
        assert time.monotonic() < deadline and runner.is_alive(), lines
        time.sleep(0.1)
    time.sleep(0.5)  # the agent is at work
    docker_client.api.remove_container(plan.workers[0].name, force=True)
    runner.join(timeout=180)
    result = box["result"]
    assert (result.status, result.exit_code) == ("done", 0), lines
    tasks = state_of(git_repo)["tasks"]
    assert tasks["slow"]["status"] == "done" and tasks["slow"]["attempts"] == 2, tasks
    assert any("container removed: a lost worker" in line for line in lines), lines
    assert "container_memory_limit" not in " ".join(lines) + tasks["slow"]["error"], lines  # not blamed on memory
    assert {"s.txt", "n.txt"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
