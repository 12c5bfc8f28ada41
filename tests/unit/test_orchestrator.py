"""The orchestrator without Docker: plumbing merges, level settling, and whole runs in subprocess mode (the same
worker runtime as in containers, run on the host against real git repositories)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.graph import load_graph
from mahabharatha.edge.launchers import worker_env_for_host
from mahabharatha.edge.orchestrator import merge_into_base, orchestrate, settle_level
from mahabharatha.errors import OrchestrationError
from mahabharatha.planning import plan
from mahabharatha.worker import state as S

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = (tmp_path / "p" / "repo").resolve()
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hello\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    return r


def task(tid: str, level: int, deps: tuple[str, ...] = (), create: tuple[str, ...] = (), modify: tuple[str, ...] = (),
         verify: str = "", **scripted: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "id": tid, "title": f"title {tid}", "description": "", "level": level, "dependencies": list(deps),
        "files": {"create": list(create), "modify": list(modify), "read": []},
        "verification": {"command": verify, "timeout_seconds": 30},
    }
    if scripted:
        t["scripted"] = scripted
    return t


def run(repo: Path, tasks: list[dict[str, Any]], *, workers: int = 3, agent: str = AGENT, extra: str = "",
        home: Path | None = None) -> tuple[Any, list[str]]:
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".mahabharatha").mkdir(exist_ok=True)
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: {workers}\n  retry_attempts: 1\n"
        f"  agent_command: {agent}\n{extra}"
    )
    home = home or repo.parent / "home"
    home.mkdir(exist_ok=True)
    p = plan(str(repo), feature="feat", workers=workers, environ={}, home=home)
    g = load_graph(str(spec / "task-graph.json"), (spec / "task-graph.json").read_text())
    lines: list[str] = []
    return orchestrate(p, g, out=lines.append), lines


def files_on(repo: Path, ref: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", ref).splitlines())


# -------------------------------------------------------------------------------------------------------------
# merges


def _branch_with(repo: Path, branch: str, start: str, path: str, text: str) -> None:
    wt = repo.parent / f"wt-{branch.replace('/', '-')}"
    git(repo, "worktree", "add", "-q", "-b", branch, str(wt), start)
    (wt / path).write_text(text)
    git(wt, "add", "-A")
    git(wt, "commit", "-qm", f"{branch} writes {path}")


def test_merge_fast_forwards_then_merges_without_touching_the_checkout(repo: Path) -> None:
    git(repo, "branch", "base")
    _branch_with(repo, "w0", "base", "a.txt", "a\n")
    _branch_with(repo, "w1", "base", "b.txt", "b\n")
    (repo / "dirty.txt").write_text("user's uncommitted work\n")
    head, status = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")
    assert merge_into_base(str(repo), "base", ["w0", "w1"], "level 1") == ["w0", "w1"]
    assert files_on(repo, "base") == {"README.md", "a.txt", "b.txt"}
    assert git(repo, "rev-parse", "base^1") == git(repo, "rev-parse", "w0")  # w0 fast-forwarded
    assert git(repo, "rev-parse", "base^2") == git(repo, "rev-parse", "w1")  # w1 merged
    assert (git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")) == (head, status)
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert merge_into_base(str(repo), "base", ["w0", "w1"], "again") == []  # nothing new


def test_merge_conflict_names_the_file_and_leaves_base_alone(repo: Path) -> None:
    git(repo, "branch", "base")
    _branch_with(repo, "w0", "base", "same.txt", "from w0\n")
    _branch_with(repo, "w1", "base", "same.txt", "from w1\n")
    with pytest.raises(OrchestrationError, match=r"merging w1 into base conflicts in: same.txt"):
        merge_into_base(str(repo), "base", ["w0", "w1"], "level 1")
    assert git(repo, "rev-parse", "base") == git(repo, "rev-parse", "w0")


# -------------------------------------------------------------------------------------------------------------
# settling


def test_settle_blocks_dependants_transitively_and_ends_blocked() -> None:
    g = load_graph("g", json.dumps({"feature": "f", "tasks": [
        task("a", 1), task("b", 1), task("c", 2, ("a",)), task("d", 3, ("c",)), task("e", 3, ("b",))]}))
    data = S.new_state("f", [(t.id, t.level) for t in g.tasks])
    S.finish_task(data, "a", S.FAILED, error="x")
    S.finish_task(data, "b", S.DONE)
    settle_level(data, g)
    assert data["level"] == 3 and data["status"] == "running"  # level 2 holds only blocked work
    assert data["tasks"]["c"]["status"] == "blocked" and data["tasks"]["d"]["error"] == "blocked by c"
    assert data["tasks"]["e"]["status"] == "pending"
    S.finish_task(data, "e", S.DONE)
    settle_level(data, g)
    assert data["status"] == "blocked" and "failed: a; blocked: c, d" in data["message"]


# -------------------------------------------------------------------------------------------------------------
# whole runs (subprocess mode)


GRAPH_3 = [
    task("A", 1, create=("src/a.py",), verify="test -f src/a.py && grep -q 'task A' src/a.py | cat"),
    task("B", 1, create=("src/b.py",)),
    task("C", 1, create=("docs/c.md",)),
    task("D", 2, ("A", "B"), create=("src/d.py",), modify=("src/a.py",)),
    task("E", 2, ("C",), create=("docs/e.md",)),
    task("F", 3, ("D", "E"), modify=("README.md",), verify="grep -q 'task F' README.md"),
]


def test_three_levels_on_three_workers_end_on_the_base_branch(repo: Path) -> None:
    result, lines = run(repo, GRAPH_3)
    assert result.status == "done" and result.exit_code == 0, lines
    assert result.levels == {1: {"done": 3}, 2: {"done": 2}, 3: {"done": 1}}
    base = "mahabharatha/feat/base"
    assert files_on(repo, base) == {"README.md", "src/a.py", "src/b.py", "docs/c.md", "src/d.py", "docs/e.md"}
    assert "task D" in git(repo, "show", f"{base}:src/a.py")  # level 2 saw level 1's merged work
    subjects = git(repo, "log", "--format=%s", base).splitlines()
    for tid in "ABCDEF":
        assert sum(s.startswith(f"{tid}: ") for s in subjects) == 1
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "main@{0}")
    progress = (repo / ".gsd" / "specs" / "feat" / "progress.md").read_text()
    assert progress.count(" done") == 6
    # Re-running a finished feature resumes from the state: nothing runs again.
    again, lines2 = run(repo, GRAPH_3)
    assert again.status == "done" and not any("starting" in line for line in lines2)


def test_failed_verification_fails_the_task_and_blocks_dependants(repo: Path) -> None:
    tasks = [
        task("ok", 1, create=("ok.txt",)),
        task("bad", 1, create=("bad.txt",), verify="echo checking && exit 7"),
        task("after-bad", 2, ("bad",), create=("x.txt",)),
        task("after-ok", 2, ("ok",), create=("y.txt",)),
        task("last", 3, ("after-bad",), create=("z.txt",)),
    ]
    result, lines = run(repo, tasks, workers=2)
    assert result.status == "blocked" and result.exit_code == 3, lines
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    assert state["tasks"]["bad"]["status"] == "failed"
    assert "verification failed (exit 7)" in state["tasks"]["bad"]["error"]
    assert state["tasks"]["after-bad"]["status"] == "blocked" and state["tasks"]["last"]["status"] == "blocked"
    assert state["tasks"]["after-ok"]["status"] == "done"
    base = "mahabharatha/feat/base"
    assert "bad.txt" not in files_on(repo, base) and {"ok.txt", "y.txt"} <= files_on(repo, base)
    assert "bad.txt" in files_on(repo, "refs/mahabharatha/failed/feat/bad")  # the work is kept, not merged


def test_context_limit_restarts_the_worker_for_the_same_task(repo: Path) -> None:
    tasks = [task("A", 1, create=("a.txt",), exit={"1": 2}), task("B", 2, ("A",), create=("b.txt",))]
    result, lines = run(repo, tasks, workers=1)
    assert result.status == "done", lines
    assert any("context limit reached on A (exit 2); restarting" in line for line in lines)
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    assert state["tasks"]["A"]["attempts"] == 2
    assert {"a.txt", "b.txt"} <= files_on(repo, "mahabharatha/feat/base")


def test_agent_failure_fails_the_task(repo: Path) -> None:
    result, lines = run(repo, [task("A", 1, create=("a.txt",), exit={"1": 5})], workers=1)
    assert result.status == "failed" and result.exit_code == 1, lines
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    assert state["tasks"]["A"]["error"].startswith("agent command exited 5")


def test_the_agent_gets_the_task_in_its_environment(repo: Path) -> None:
    agent = (
        "python3 -c \"import json, os; t = json.load(open(os.environ['MAHABHARATHA_TASK_JSON'])); "
        "open('seen-' + os.environ['MAHABHARATHA_TASK_ID'], 'w').write(t['title'] + '|' + "
        "os.environ['MAHABHARATHA_TASK_PROMPT'].splitlines()[1])\""
    )
    result, lines = run(repo, [task("T1", 1, create=("seen-T1",))], workers=1, agent=agent)
    assert result.status == "done", lines
    assert git(repo, "show", "mahabharatha/feat/base:seen-T1") == "title T1|Task T1: title T1"


def test_a_worker_over_its_time_is_stopped_and_its_task_fails(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mahabharatha.edge.orchestrator as orchestrator

    monkeypatch.setattr(orchestrator, "_SECONDS_PER_MINUTE", 1.0)  # timeout_minutes: 1 -> one second
    tasks = [task("slow", 1, create=("s.txt",), sleep={"1": 60}), task("next", 2, ("slow",), create=("n.txt",))]
    result, lines = run(repo, tasks, workers=1, extra="  timeout_minutes: 1\n")
    assert (result.status, result.exit_code) == ("blocked", 3), lines
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    assert state["tasks"]["slow"]["status"] == "failed"
    assert state["tasks"]["slow"]["error"] == "task attempt timed out after 1 min (workers.timeout_minutes)"
    assert state["tasks"]["next"]["status"] == "blocked"
    assert any("task slow over workers.timeout_minutes=1; stopping it" in line for line in lines), lines


def test_the_timeout_counts_from_each_claim_not_from_the_worker_start(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # workers.timeout_minutes bounds one task attempt: a worker that does several tasks, each well within the
    # limit, is never stopped although its whole time exceeds it.
    import mahabharatha.edge.orchestrator as orchestrator

    monkeypatch.setattr(orchestrator, "_SECONDS_PER_MINUTE", 3.0)  # timeout_minutes: 1 -> three seconds
    tasks = [task(t, 1, create=(f"{t}.txt",), sleep={"1": 1.2}) for t in ("a", "b", "c")]
    result, lines = run(repo, tasks, workers=1, extra="  timeout_minutes: 1\n")
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert result.seconds > 3.6 and not any("timeout" in line for line in lines), lines


def test_a_second_orchestrator_for_the_same_feature_is_refused(repo: Path) -> None:
    import fcntl
    import os

    lock_dir = repo / ".mahabharatha" / "state" / "feat"
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / "orchestrator.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OrchestrationError, match="another `mahabharatha kurukshetra` is running feature feat"):
            run(repo, [task("A", 1, create=("a.txt",))], workers=1)
    finally:
        os.close(fd)


def test_work_of_an_earlier_run_with_more_workers_reaches_the_base(repo: Path) -> None:
    # Run 1 (3 workers) finished level 1 but was stopped before merging it; run 2 has 1 worker.
    slow = {"sleep": {"1": 0.5}}  # so the three workers each take one
    tasks = [task("A", 1, create=("a.txt",), **slow), task("B", 1, create=("b.txt",), **slow), task("C", 1, create=("c.txt",), **slow),
             task("D", 2, ("A", "B", "C"), create=("d.txt",), verify="test -f a.txt && test -f b.txt && test -f c.txt")]
    first, lines = run(repo, tasks, workers=3)
    assert first.status == "done", lines
    git(repo, "branch", "-f", "mahabharatha/feat/base", "main")  # as if the level-1 merge never happened
    with S.StateStore(str(repo / ".mahabharatha/state"), "feat").transaction() as state:
        state["tasks"]["D"].update(status="pending", commit="", worker=None)
        state.update(status="running", level=1)
    assert len({state["tasks"][t]["worker"] for t in "ABC"}) == 3  # level 1 was spread over the workers
    for t in "ABC":  # each worker branch holds only its own level-1 task, unmerged
        wt = repo.parent / ".mahabharatha-worktrees" / "feat" / f"worker-{state['tasks'][t]['worker']}"
        git(wt, "reset", "-q", "--hard", state["tasks"][t]["commit"])
    second, lines2 = run(repo, tasks, workers=1)
    assert second.status == "done", lines2
    assert {"a.txt", "b.txt", "c.txt", "d.txt"} <= files_on(repo, "mahabharatha/feat/base")


def test_a_merge_conflict_fails_the_run_naming_the_file(repo: Path) -> None:
    # Agents may write outside their declared files: two workers both write shared.txt in level 1.
    agent = 'sleep 0.5; echo "$MAHABHARATHA_TASK_ID" > shared.txt'
    tasks = [task("A", 1), task("B", 1), task("C", 2, ("A", "B"))]
    result, lines = run(repo, tasks, workers=2, agent=agent)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    assert "into mahabharatha/feat/base conflicts in: shared.txt" in result.message
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main" and git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    assert state["tasks"]["C"]["status"] == "pending"  # never started on a half-merged base


# -------------------------------------------------------------------------------------------------------------
# `mahabharatha stop` in subprocess mode


def _setup(repo: Path, tasks: list[dict[str, Any]], workers: int) -> tuple[Any, Any]:
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".mahabharatha").mkdir(exist_ok=True)
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: {workers}\n  agent_command: {AGENT}\n"
    )
    home = repo.parent / "home"
    home.mkdir(exist_ok=True)
    p = plan(str(repo), feature="feat", workers=workers, environ={}, home=home)
    return p, load_graph(str(spec / "task-graph.json"), (spec / "task-graph.json").read_text())


def _wait_for(store: S.StateStore, task_id: str, status: str, alive: Any = lambda: True) -> None:
    import time

    deadline = time.monotonic() + 60
    while ((store.read() or {}).get("tasks", {}).get(task_id) or {}).get("status") != status:
        assert time.monotonic() < deadline and alive(), f"{task_id} never {status}"
        time.sleep(0.05)


STOP_GRAPH = [
    task("quick", 1, create=("q.txt",)),
    task("slow", 1, create=("s.txt",), sleep={"1": 120}),
    task("after", 2, ("quick", "slow"), create=("a.txt",)),
]


def test_stop_ends_a_subprocess_run_with_130_and_it_resumes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from mahabharatha.cli import main

    p, g = _setup(repo, STOP_GRAPH, workers=2)
    box: dict[str, Any] = {}
    lines: list[str] = []
    runner = threading.Thread(target=lambda: box.update(result=orchestrate(p, g, out=lines.append)))
    runner.start()
    store = S.StateStore(p.state_dir, "feat")
    _wait_for(store, "quick", S.DONE, runner.is_alive)
    _wait_for(store, "slow", S.CLAIMED, runner.is_alive)
    assert main(["stop", "--repo", str(repo), "--feature", "feat", "--timeout", "20"]) == 0
    out = capsys.readouterr().out
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert (box["result"].status, box["result"].exit_code) == ("stopped", 130), lines
    assert "stopped by `mahabharatha stop`" in box["result"].message
    busy = store.read()["processes"][str(store.read()["tasks"]["quick"]["worker"] ^ 1)]["pid"]
    assert f"(pid {busy}): stopped" in out, out
    assert "Run of feature feat marked stopped; `mahabharatha kurukshetra` resumes it" in out
    assert sum("exited 130 (stopped by signal)" in line for line in lines) == 2, lines  # both workers
    assert store.read()["tasks"]["slow"]["status"] == S.PENDING  # put back, not lost
    again = orchestrate(p, g, out=lines.append)
    assert (again.status, again.exit_code) == ("done", 0), lines
    assert store.read()["tasks"]["quick"]["attempts"] == 1 and store.read()["tasks"]["slow"]["attempts"] == 2
    assert {"q.txt", "s.txt", "a.txt"} <= files_on(repo, "mahabharatha/feat/base")


def test_stop_reaches_workers_whose_orchestrator_is_gone(harness, capsys: pytest.CaptureFixture[str]) -> None:
    # Workers started by a run whose orchestrator then died (its channel closed with it; the agent of the
    # worker below keeps running, it has no reason to ask anything yet): `mahabharatha stop` finds them by the
    # recorded pids, they exit 130, and the run is marked stopped. Nobody is left to take the task back, so it
    # stays claimed in the state until the next run resumes it.
    import queue
    import time

    from mahabharatha.cli import main
    from mahabharatha.edge.launchers import SubprocessLauncher
    from mahabharatha.edge.orchestrator import init_state

    h = harness(STOP_GRAPH[1:2])
    store = h.store
    launcher = SubprocessLauncher(h.plan, queue.Queue(), print)  # workers without any orchestrator loop
    launcher.start_all()
    try:
        _wait_for(store, "slow", S.CLAIMED)
        log = Path(h.plan.workers[0].log_path)
        deadline = time.monotonic() + 30
        while "task slow (attempt 1)" not in (log.read_text() if log.exists() else ""):  # it has its answer
            assert time.monotonic() < deadline and launcher.procs[0].poll() is None
            time.sleep(0.05)
        pid = launcher.procs[0].pid
        assert store.read()["processes"]["0"]["pid"] == pid
        h.server.close()  # the orchestrator is gone
        assert main(["stop", "--repo", h.repo, "--feature", "feat", "--timeout", "20"]) == 0
        assert launcher.procs[0].wait(timeout=30) == 130
    finally:
        launcher.stop_all(timeout=5)
    assert f"worker 0 (pid {pid}): stopped" in capsys.readouterr().out
    data = store.read()
    assert data["status"] == "stopped" and data["tasks"]["slow"]["status"] == S.CLAIMED
    text = log.read_text()
    assert "could not release tasks" in text and "stopped by signal" in text, text
    # A second stop finds nothing to signal (the recorded pid is gone) and says so.
    assert main(["stop", "--repo", h.repo, "--feature", "feat"]) == 0
    assert "No running workers for feature feat" in capsys.readouterr().out
    # The next run takes the task up again.
    resumed, _ = init_state(store, h.graph)
    assert resumed["tasks"]["slow"]["status"] == S.PENDING and resumed["status"] == S.RUNNING


def test_secrets_in_worker_output_are_redacted_in_the_host_log(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-ant-api03-" + "Zq9Lm4" * 8  # fake; only its presence matters
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)  # the worker inherits the host environment
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": [task("T", 1, create=("t.txt",))]}))
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  launcher_type: subprocess\n  agent_command: 'echo \"agent sees $ANTHROPIC_API_KEY\"; echo t > t.txt'\n"
    )
    home = repo.parent / "home"
    home.mkdir()
    p = plan(str(repo), feature="feat", workers=1, environ={"ANTHROPIC_API_KEY": key}, home=home)
    g = load_graph(str(spec / "task-graph.json"), (spec / "task-graph.json").read_text())
    lines: list[str] = []
    result = orchestrate(p, g, out=lines.append)
    assert result.status == "done", lines
    log = Path(p.workers[0].log_path).read_text()
    assert "agent sees sk-ant-" in log and "(redacted)" in log, log  # the line is there, the value is not
    assert key not in log and key[20:40] not in log


def test_subprocess_workers_get_credentials_from_dotenv(repo: Path, tmp_path: Path) -> None:
    # A key that lives only in the repo's .env must reach host workers, as it reaches containers.
    key = "sk-ant-api03-" + "k" * 40
    (repo / ".env").write_text(f"ANTHROPIC_API_KEY={key}\n")
    p = plan(repo, feature="feat", workers=1, mode="subprocess", environ={}, home=tmp_path / "home")
    env = worker_env_for_host(p, p.workers[0], base_env={})
    assert env["ANTHROPIC_API_KEY"] == key
    assert key not in repr(p)


def test_a_task_that_always_reaches_its_context_limit_fails_naming_the_fix_and_retry_puts_it_back(repo: Path) -> None:
    """Exit 2 on every attempt: the restarts are bounded, the task fails saying why and what to do, the run
    ends (not "all workers exited with work left"), and `retry` makes it pending again."""
    from mahabharatha.cli import main

    always = {str(n): 2 for n in range(1, 40)}
    result, lines = run(repo, [task("big", 1, create=("b.txt",), exit=always)], workers=1)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    state = json.loads((repo / ".mahabharatha/state/feat/state.json").read_text())
    error = state["tasks"]["big"]["error"]
    assert "context limit reached on" in error and "split it" in error and "mahabharatha retry" in error, error
    assert "all workers exited with work left" not in result.message
    assert main(["retry", "--repo", str(repo), "--feature", "feat", "big"]) == 0
    from mahabharatha.worker import state as S

    data = S.StateStore(str(repo / ".mahabharatha" / "state"), "feat").read()
    assert data is not None and data["tasks"]["big"]["status"] == "pending"
