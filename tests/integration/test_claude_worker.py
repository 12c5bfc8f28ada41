"""Real runs with the real Claude Code CLI as the agent in worker containers, against a scripted fake API.

``orchestrate(plan, graph, ...)`` runs as users run it, on the ``mahabharatha-worker:claude-test`` image (the
package's Dockerfile with the real ``claude`` 2.1.332; the ``claude_image`` fixture of ``conftest.py`` builds
or reuses it, and skips with the reason when it cannot, failing instead under ``MAHABHARATHA_REQUIRE_DOCKER=1``
or ``CI=true``). Nothing leaves the machine: the containers have no network, and each task's agent command
starts the fake Messages API (``tests/fakes/fake_anthropic.py``) on 127.0.0.1 inside the container before
``claude -p --dangerously-skip-permissions`` (to which the worker appends ``--output-format stream-json
--verbose``). The fake, its start script and one JSON script per task are committed into the test repository,
so every workspace has them (they are in the merged result too: assertions on files leave them out). The fake
logs every request into a host directory mounted at ``/fakelog``, one file per task attempt.

The agent command sources ``fake/start.sh``, which first sources ``fake/<task>.sh`` when a test wrote one
(per-task environment changes, or a different script for a later attempt), then starts the fake with
``fake/<task>.json`` (or ``$SCRIPT``) and waits for it to listen.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mahabharatha.core.graph import load_graph
from mahabharatha.core.model import EnvVar, LaunchPlan, Mount
from mahabharatha.edge.orchestrator import RunResult, orchestrate

from .conftest import plan_for

pytestmark = pytest.mark.docker

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_anthropic.py"
BASE = "mahabharatha/feat/base"
KEY = {"ANTHROPIC_API_KEY": "sk-ant-test-key"}
SLOW = "python3 -c 'import time; time.sleep(60)'"  # a tool call that takes 60 s (claude refuses a plain sleep)
AGENT = ". fake/start.sh; claude -p --dangerously-skip-permissions"
# The fake's environment for claude, in every container (the plan's own environment stays as planned).
CLAUDE_ENV = {
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "CLAUDE_CODE_MAX_RETRIES": "1",
}
START_SH = """\
# Sourced by the agent command (so the fake runs in the agent's process group and ends with it).
SCRIPT="fake/$MAHABHARATHA_TASK_ID.json"
if [ -f "fake/$MAHABHARATHA_TASK_ID.sh" ]; then . "fake/$MAHABHARATHA_TASK_ID.sh"; fi
fake_out="/tmp/fake-$MAHABHARATHA_TASK_ID-$MAHABHARATHA_TASK_ATTEMPT.out"
python3 fake/fake_anthropic.py --port 8765 --script "$SCRIPT" \\
    --log "/fakelog/$MAHABHARATHA_TASK_ID-$MAHABHARATHA_TASK_ATTEMPT.jsonl" >"$fake_out" 2>&1 &
n=0
while [ "$n" -lt 200 ] && ! grep -q listening "$fake_out" 2>/dev/null; do sleep 0.05; n=$((n + 1)); done
"""


def git(repo: Path, *args: str) -> str:
    # safe.directory: the non-root case's repository belongs to another uid.
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def write(path: str, content: str, **usage: int) -> dict[str, Any]:
    turn: dict[str, Any] = {"text": f"Writing {path}.", "tool_use": {"name": "Write", "input": {
        "file_path": f"/workspace/{path}", "content": content}}}
    if usage:
        turn["usage"] = usage
    return turn


def task(tid: str, level: int = 1, create: tuple[str, ...] = (), deps: tuple[str, ...] = (), description: str = "") -> dict[str, Any]:
    return {
        "id": tid, "title": f"title {tid}", "level": level, "dependencies": list(deps), "description": description,
        "files": {"create": list(create), "modify": [], "read": []}, "verification": {"command": "", "timeout_seconds": 60},
    }


class Harness:
    """One test's repository with the fake committed, its graph, and its runs."""

    def __init__(self, repo: Path, home: Path, prefix: str, image: str, client: Any, tmp: Path) -> None:
        self.repo, self.home, self.prefix, self.image, self.client = repo, home, prefix, image, client
        self.fakelog = tmp / "fakelog"
        self.fakelog.mkdir()
        self.fakelog.chmod(0o777)  # the container's uid writes here
        self.last_plan: LaunchPlan | None = None

    def graph(self, tasks: list[dict[str, Any]], scripts: dict[str, Any], hooks: dict[str, str] | None = None) -> Any:
        """Commit the fake, ``fake/<task>.json`` for each script and ``fake/<task>.sh`` for each hook on main;
        write the task graph."""
        fake = self.repo / "fake"
        fake.mkdir(exist_ok=True)
        (fake / "fake_anthropic.py").write_bytes(FAKE.read_bytes())
        (fake / "start.sh").write_text(START_SH)
        for name, turns in scripts.items():
            (fake / f"{name}.json").write_text(json.dumps({"turns": turns} if isinstance(turns, list) else turns))
        for name, text in (hooks or {}).items():
            (fake / f"{name}.sh").write_text(text)
        git(self.repo, "add", "fake")
        git(self.repo, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "the fake API")
        spec = self.repo / ".gsd" / "specs" / "feat"
        spec.mkdir(parents=True, exist_ok=True)
        path = spec / "task-graph.json"
        path.write_text(json.dumps({"feature": "feat", "tasks": tasks}))
        return load_graph(str(path), path.read_text())

    def plan(self, *, environ: dict[str, str] | None = None, env: dict[str, str] | None = None,
             drop: tuple[str, ...] = (), config: str = "") -> LaunchPlan:
        plan = plan_for(
            self.repo, home=self.home, image=self.image, prefix=self.prefix, environ=KEY if environ is None else environ,
            config=self.config(config),
        )

        def adjust(spec: Any) -> Any:
            values = {**spec.env_dict(), **CLAUDE_ENV, **(env or {})}
            for name in drop:
                values.pop(name, None)
            return msgspec.structs.replace(
                spec, environment=tuple(EnvVar(name=k, value=v) for k, v in sorted(values.items())),
                mounts=(*spec.mounts, Mount(source=str(self.fakelog), target="/fakelog")),
            )

        return msgspec.structs.replace(plan, workers=tuple(adjust(w) for w in plan.workers))

    @staticmethod
    def config(workers: str) -> str:
        """The config file: the agent command, no retries, ``workers`` (more ``workers:`` lines)."""
        return (
            f"workers:\n  agent_command: '{AGENT}'\n  retry_attempts: 0\n{workers}"
            "resources:\n  container_memory_limit: 1g\n  container_cpu_limit: 1.0\n"
        )

    def run(self, graph: Any, **plan_args: Any) -> tuple[RunResult, list[str]]:
        lines: list[str] = []
        self.last_plan = self.plan(**plan_args)
        result = orchestrate(self.last_plan, graph, out=lines.append, client=self.client)
        return result, lines

    def state(self) -> dict[str, Any]:
        return json.loads((self.repo / ".mahabharatha" / "state" / "feat" / "state.json").read_text())

    def requests(self, tid: str, attempt: int = 1) -> list[dict[str, Any]]:
        path = self.fakelog / f"{tid}-{attempt}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def worker_log(self) -> list[str]:
        """The worker's log, checked to be readable: none of claude's stream-json lines in it."""
        assert self.last_plan is not None
        lines = Path(self.last_plan.workers[0].log_path).read_text().splitlines()
        assert not [line for line in lines if line.lstrip().startswith("{")], lines
        return lines

    def files(self, ref: str = BASE) -> set[str]:
        """The files of ``ref`` but the fake's and the initial README."""
        names = set(git(self.repo, "ls-tree", "-r", "--name-only", ref).splitlines())
        return {n for n in names if not n.startswith("fake/") and n != "README.md"}

    def status(self, capsys: Any) -> str:
        from mahabharatha.cli import main

        capsys.readouterr()
        assert main(["status", "--repo", str(self.repo), "--feature", "feat"]) == 0
        return capsys.readouterr().out


@pytest.fixture
def harness(git_repo: Path, temp_home: Path, container_prefix: str, claude_image: str, docker_client: Any, tmp_path: Path) -> Harness:
    return Harness(git_repo, temp_home, container_prefix, claude_image, docker_client, tmp_path)


# ------------------------------------------------------------------------------------------------------------
# 1. A task done by claude: the file, the usage, a readable log, status


HELLO_TURNS = [
    write("hello.txt", "hello from claude\n", input_tokens=3000, output_tokens=60, cache_read_input_tokens=12000),
    {"text": "Created hello.txt.", "usage": {"input_tokens": 3200, "output_tokens": 20}},
]


# The containers run as the caller (the plan's uid:gid): root when the suite runs as root (claude then needs
# the plan's IS_SANDBOX=1), the CI user in CI's unprivileged pass. A container's uid cannot be forced to
# another than the orchestrator's: the worker's channel socket is its owner's only (mode 0600, no capabilities
# in the container), so a foreign uid, root included, cannot reach it. Hence the non-root case below runs the
# orchestrator itself as uid 12345.
CALLER = "root" if os.getuid() == 0 else "non-root"
ROOT_ONLY = pytest.mark.skipif(os.getuid() != 0, reason="containers run as the caller: a root container needs a root caller")


@pytest.mark.parametrize("caller", [CALLER])
def test_claude_writes_the_file_and_the_run_records_its_usage(harness: Harness, caller: str, capsys: Any) -> None:
    graph = harness.graph([task("hello", create=("hello.txt",))], {"hello": HELLO_TURNS})
    result, lines = harness.run(graph)
    assert harness.last_plan is not None
    assert {w.user for w in harness.last_plan.workers} == {f"{os.getuid()}:{os.getgid()}"}  # containers run as the caller
    assert (result.status, result.exit_code) == ("done", 0), lines
    check_hello(harness, capsys)
    assert result.usage["total"]["cost_usd"] == harness.state()["tasks"]["hello"]["usage"]["cost_usd"]


def check_hello(harness: Harness, capsys: Any) -> None:
    """What the hello task must leave: the file merged, usage in the state, a readable log, status."""
    assert harness.files() == {"hello.txt"}
    assert git(harness.repo, "show", f"{BASE}:hello.txt") == "hello from claude"
    usage = harness.state()["tasks"]["hello"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_tokens"]) == (6200, 80, 12000), usage
    assert usage["cost_usd"] > 0 and usage["turns"] == 2 and usage["model"].startswith("claude-"), usage
    # The worker's log: one readable line per message and tool call, none of the stream's JSON.
    log = harness.worker_log()
    assert "tool Write file_path=hello.txt" in log and "text Created hello.txt." in log, log
    assert any(line.startswith("agent claude-code 2.1.332") for line in log), log
    assert any(line.startswith("result ok turns=2 cost=$") for line in log), log
    # claude called the fake only, with the key, and got the prompt on stdin.
    requests = harness.requests("hello")
    assert [r["turn"] for r in requests if r["turn"] is not None] == [0, 1], requests
    assert all(r["auth"] == "x-api-key" for r in requests)
    assert requests[0]["prompt"].startswith("You are mahabharatha worker 0 on feature 'feat'.")
    # status: tokens and cost for the task, its level and the run.
    out = harness.status(capsys)
    cost = f"${usage['cost_usd']:.2f}"
    assert f"    hello: done (worker 0) [6.2k in (12.0k cached), 80 out, {cost}]" in out, out
    assert f"  level 1: 1 done (6.2k in (12.0k cached), 80 out, {cost})" in out, out
    assert f"  agents used: 6.2k in (12.0k cached), 80 out, {cost}" in out, out


# A container's uid must be the orchestrator's (the channel socket is its owner's only: a worker forced to
# another uid cannot reach it). So a non-root worker (uid 12345) comes from a non-root caller: the orchestrator
# itself runs as uid 12345 (in a child process that may use the Docker socket through its group), with a repo,
# home and temp dir of its own. The suite as root only; CI's unprivileged pass covers it as its own user.
DRIVER = """
import json, sys
import docker, msgspec
from mahabharatha.core.graph import load_graph
from mahabharatha.core.model import EnvVar, Mount
from mahabharatha.edge.orchestrator import orchestrate
from mahabharatha.planning import plan as make_plan

a = json.load(sys.stdin)
plan = make_plan(a["repo"], feature="feat", workers=1, mode="container", environ=a["environ"], home=a["home"],
                 overrides=a["overrides"])
def adjust(spec):
    values = {**spec.env_dict(), **a["env"]}
    return msgspec.structs.replace(spec, environment=tuple(EnvVar(name=k, value=v) for k, v in sorted(values.items())),
                                   mounts=(*spec.mounts, Mount(source=a["fakelog"], target="/fakelog")))
plan = msgspec.structs.replace(plan, workers=tuple(adjust(w) for w in plan.workers))
assert {w.user for w in plan.workers} == {"12345:12345"}, plan.workers[0].user
graph = load_graph(a["graph"], open(a["graph"]).read())
r = orchestrate(plan, graph, out=lambda line: print(line, flush=True), client=docker.from_env())
print("RESULT " + json.dumps({"status": r.status, "exit_code": r.exit_code}), flush=True)
"""


def _reachable_by_others(path: str) -> str | None:
    """None when every directory above ``path`` lets other users through, else the first that does not."""
    here = os.path.dirname(os.path.realpath(path))
    while here != "/":
        if not os.stat(here).st_mode & 0o001:
            return here
        here = os.path.dirname(here)
    return None


def test_claude_as_a_non_root_worker_of_a_non_root_caller(
    claude_image: str, docker_client: Any, container_prefix: str, capsys: Any
) -> None:
    import shutil
    import sys
    import tempfile

    if os.getuid() != 0:
        pytest.skip("needs root to run the orchestrator as uid 12345 (the caller case runs as this user)")
    blocked = _reachable_by_others(sys.executable) or _reachable_by_others(__file__)
    if blocked:
        pytest.skip(f"uid 12345 cannot reach the interpreter or the checkout: {blocked} lacks o+x (.ci/run grants it)")
    uid = 12345
    socket_path = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    top = Path(tempfile.mkdtemp(prefix="mh-uid-test-", dir="/tmp")).resolve()
    try:
        repo, home = top / "project" / "repo", top / "home"
        repo.mkdir(parents=True)
        home.mkdir()
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        (repo / "README.md").write_text("hello\n")
        git(repo, "add", "README.md")
        git(repo, "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "initial")
        harness = Harness(repo, home, container_prefix, claude_image, docker_client, top)
        graph = harness.graph([task("hello", create=("hello.txt",))], {"hello": HELLO_TURNS})
        (repo / ".mahabharatha").mkdir()
        (repo / ".mahabharatha" / "config.yaml").write_text(harness.config(""))
        harness.last_plan = harness.plan()  # the paths of the plan the child makes (its log file)
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(top)], check=True)
        args = {
            "repo": str(repo), "home": str(home), "environ": KEY, "env": CLAUDE_ENV, "fakelog": str(harness.fakelog),
            "graph": str(repo / ".gsd" / "specs" / "feat" / "task-graph.json"),
            "overrides": {"workers.max_concurrent": 1, "workers.container_prefix": container_prefix,
                          "resources.container_image": claude_image},
        }
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(top), "LANG": "C.UTF-8"}
        if "DOCKER_HOST" in os.environ:
            env["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER], input=json.dumps(args), capture_output=True, text=True, cwd=str(top),
            user=uid, group=uid, extra_groups=[os.stat(socket_path).st_gid], env=env, timeout=240,
        )
        lines = proc.stdout.splitlines()
        assert proc.returncode == 0 and lines and lines[-1] == 'RESULT {"status": "done", "exit_code": 0}', (
            proc.stdout[-3000:], proc.stderr[-3000:])
        state = harness.state()
        assert state["tasks"]["hello"]["status"] == "done"
        # The file the non-root claude wrote belongs to uid 12345 in the workspace, and made it to the base.
        workspace = top / "project" / ".mahabharatha-worktrees" / "feat" / "worker-0"
        assert (workspace / "hello.txt").stat().st_uid == uid
        check_hello(harness, capsys)
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# 2. Why claude failed, in the task's error and in status: one line each; a prompt too long fails at once


# task -> (its script, its hook, how its error starts). One run, one worker, the three tasks one after another.
FAILURES = {
    "bad-key": ([{"error": 401, "times": -1}], "", "agent command exited 1: Invalid API key · Fix external API key"),
    "overloaded": ([{"error": 529, "times": -1}], "export CLAUDE_CODE_MAX_RETRIES=0\n", "agent command exited 1: API Error: 529"),
    # A prompt too long to start at all: the task fails at once with that reason (no exit 2, no restart).
    "too-long": ([{"error": 400}], "", "the prompt is too long for the model: Prompt is too long"),
}


def test_why_claude_failed_is_the_tasks_error_and_one_status_line(harness: Harness, capsys: Any) -> None:
    graph = harness.graph(
        [task(tid, create=(f"{tid}.txt",)) for tid in FAILURES],
        {tid: turns for tid, (turns, _, _) in FAILURES.items()},
        hooks={tid: hook for tid, (_, hook, _) in FAILURES.items() if hook},
    )
    result, lines = harness.run(graph)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    assert not any("restarting" in line or "exit 2" in line for line in lines), lines
    tasks = harness.state()["tasks"]
    status = harness.status(capsys).splitlines()
    for tid, (_, _, reason) in FAILURES.items():
        record = tasks[tid]
        assert record["status"] == "failed" and record["attempts"] == 1, record
        assert record["error"].startswith(reason) and "\n" not in record["error"], record
        shown = [line for line in status if line.startswith(f"    {tid}: failed")]
        assert len(shown) == 1 and f" - {reason}" in shown[0], status
    # 401 and 529: one retry at most (CLAUDE_CODE_MAX_RETRIES); a prompt too long: not retried at all.
    assert len([r for r in harness.requests("bad-key") if r["turn"] is not None]) == 2
    assert len([r for r in harness.requests("overloaded") if r["turn"] is not None]) == 1
    assert [r["turn"] for r in harness.requests("too-long") if r["turn"] is not None] == [0]


@pytest.mark.parametrize(
    ("plan_args", "reason"),
    [
        pytest.param({"environ": {}}, "Not logged in · Please run /login", id="no-key"),
        pytest.param(
            {"drop": ("IS_SANDBOX",)},
            "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
            id="root-without-is-sandbox", marks=ROOT_ONLY,
        ),
    ],
)
def test_a_claude_that_cannot_start_says_why(harness: Harness, plan_args: dict[str, Any], reason: str, capsys: Any) -> None:
    graph = harness.graph([task("t", create=("t.txt",))], {"t": []})
    result, lines = harness.run(graph, **plan_args)
    assert (result.status, result.exit_code) == ("failed", 1), lines
    record = harness.state()["tasks"]["t"]
    assert record["status"] == "failed" and record["attempts"] == 1, record
    assert record["error"] == f"agent command exited 1: {reason}", record
    shown = [line for line in harness.status(capsys).splitlines() if line.startswith("    t: failed")]
    assert len(shown) == 1 and shown[0].endswith(f" - agent command exited 1: {reason}"), shown
    assert harness.requests("t") == []  # claude gave up before calling the API


# ------------------------------------------------------------------------------------------------------------
# 3. The context threshold: checkpoint, exit 2, a fresh claude continues (a prompt too long: in 2)


def test_at_the_context_threshold_the_work_is_checkpointed_and_a_fresh_claude_finishes(harness: Harness) -> None:
    graph = harness.graph(
        [task("ctx", create=("first.txt", "second.txt"))],
        {
            # First attempt: a Write, then a turn whose context is 80% of the 10000-token window (a Bash call
            # that would take 60 s: the worker stops claude long before).
            "ctx": [
                write("first.txt", "one\n"),
                {"text": "Next.", "tool_use": {"name": "Bash", "input": {"command": SLOW, "description": "wait"}},
                 "usage": {"input_tokens": 8000, "output_tokens": 10}},
            ],
            # Later attempts (first.txt is there: the checkpoint was applied): finish normally.
            "ctx-again": [write("second.txt", "two\n"), {"text": "Both files are written."}],
        },
        hooks={"ctx": 'if [ -f first.txt ]; then SCRIPT=fake/ctx-again.json; fi\n'},
    )
    started = time.monotonic()
    result, lines = harness.run(graph, config="  context_window_tokens: 10000\n  context_threshold_percent: 70\n")
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert time.monotonic() - started < 45, lines  # the 60 s Bash call did not run to its end
    assert any("context limit reached on ctx (exit 2); restarting" in line for line in lines), lines
    record = harness.state()["tasks"]["ctx"]
    assert record["attempts"] == 2 and record["status"] == "done", record
    assert harness.files() == {"first.txt", "second.txt"}
    # The work of the first attempt was kept as the task's checkpoint, in the user's repository.
    ref = "refs/mahabharatha/checkpoint/feat/ctx"
    assert harness.files(ref) == {"first.txt"}
    log = harness.worker_log()
    assert any("ctx: context at 80% of 10000 tokens (workers.context_threshold_percent=70)" in line
               and f"work so far kept at {ref}" in line and "exiting 2" in line for line in log), log
    assert any("(continuing from checkpoint" in line for line in log), log
    # The second claude was told it continues from a checkpoint; both attempts' tokens count.
    assert "(a checkpoint). Continue from it" in harness.requests("ctx", 2)[0]["prompt_tail"]
    assert [r["turn"] for r in harness.requests("ctx", 1) if r["turn"] is not None] == [0, 1]
    assert record["usage"]["input_tokens"] == (1200 + 8000) + (1200 + 1200), record["usage"]


# ------------------------------------------------------------------------------------------------------------
# 4. Budgets


def test_the_per_task_budget_stops_claude_and_fails_the_task(harness: Harness) -> None:
    graph = harness.graph([task("spend", create=("spend.txt",))], {"spend": [
        {"text": "Thinking.", "tool_use": {"name": "Bash", "input": {"command": SLOW, "description": "wait"}}},
        write("spend.txt", "never\n"),
    ]})
    started = time.monotonic()
    result, lines = harness.run(graph, config="  max_cost_usd_per_task: 0.000001\n")
    assert (result.status, result.exit_code) == ("failed", 1), lines
    assert time.monotonic() - started < 45, lines  # the 60 s Bash call did not run to its end
    record = harness.state()["tasks"]["spend"]
    assert record["error"].startswith("cost budget reached: $"), record["error"]
    assert "of workers.max_cost_usd_per_task=$0.000001; the agent was stopped" in record["error"], record["error"]
    assert record["usage"]["input_tokens"] == 1200, record  # what the one message cost, counted
    assert harness.files() == set()


def test_the_run_budget_stops_the_run_after_the_task_that_reached_it(harness: Harness) -> None:
    graph = harness.graph(
        [task("a", create=("a.txt",)), task("b", 2, create=("b.txt",), deps=("a",))],
        {"a": [write("a.txt", "a\n"), {"text": "Done."}], "b": [write("b.txt", "b\n"), {"text": "Done."}]},
    )
    result, lines = harness.run(graph, config="  max_cost_usd: 0.000001\n")
    assert result.status == "stopped", lines
    assert "cost budget reached" in result.message and "workers.max_cost_usd=$0.000001" in result.message, result.message
    tasks = harness.state()["tasks"]
    assert tasks["a"]["status"] == "done" and tasks["a"]["usage"]["cost_usd"] > 0, tasks
    assert tasks["b"]["status"] == "pending" and harness.requests("b") == [], tasks  # b's claude never ran
    # a's work waits on its worker branch (the level was not merged: the run stopped first) ...
    assert harness.files("mahabharatha/feat/worker-0") == {"a.txt"} and harness.files() == set()
    # ... and the run resumes once the budget allows it: a is not redone, b runs, both are merged.
    again, lines2 = harness.run(graph)
    assert (again.status, again.exit_code) == ("done", 0), lines2
    assert harness.state()["tasks"]["a"]["attempts"] == 1 and harness.requests("a", 2) == []
    assert harness.files() == {"a.txt", "b.txt"}


# ------------------------------------------------------------------------------------------------------------
# 5. OAuth: the worker's own copy of the login; the host's files untouched


def _tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root``: its mode and, for a file, the sha256 of its bytes."""
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "")
    return out


def test_an_oauth_login_is_copied_into_the_worker_and_the_host_files_stay_unchanged(harness: Harness) -> None:
    token = "sk-ant-oat01-fake-access-token-0123456789"
    home = harness.home
    (home / ".claude").mkdir(mode=0o700)
    credentials = {"claudeAiOauth": {
        "accessToken": token, "refreshToken": "sk-ant-ort01-fake-refresh-token",
        "expiresAt": int((time.time() + 365 * 86400) * 1000), "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "pro",
    }}
    (home / ".claude" / ".credentials.json").write_text(json.dumps(credentials))
    (home / ".claude" / "settings.json").write_text("{}\n")
    (home / ".claude.json").write_text(json.dumps({
        "oauthAccount": {"accountUuid": "00000000-0000-4000-8000-000000000001", "emailAddress": "user@example.invalid",
                         "organizationUuid": "00000000-0000-4000-8000-000000000002"},
        "hasCompletedOnboarding": True, "numStartups": 3,
    }))
    before = _tree_digest(home)
    graph = harness.graph([task("hello", create=("hello.txt",))], {"hello": [write("hello.txt", "hi\n"), {"text": "Done."}]})
    result, lines = harness.run(graph, environ={})  # no ANTHROPIC_API_KEY, no CLAUDE_CODE_OAUTH_TOKEN
    assert (result.status, result.exit_code) == ("done", 0), lines
    assert harness.files() == {"hello.txt"}
    requests = [r for r in harness.requests("hello") if r["turn"] is not None]
    digest = hashlib.sha256(token.encode()).hexdigest()[:12]
    assert requests and all(r["auth"] == "bearer" and r["auth_digest"] == digest for r in requests), requests
    assert _tree_digest(home) == before  # nothing of the host's login changed, nothing was added
    log = harness.worker_log()  # readable: the subscription's rate_limit_event lines are not in it either
    assert "tool Write file_path=hello.txt" in log, log
    assert not [line for line in log if token in line or "sk-ant-ort01" in line or "could not copy" in line], log


# ------------------------------------------------------------------------------------------------------------
# 6. The prompt travels on stdin: over 200 KiB (more than one argv string may hold) still runs


def test_a_task_description_over_200_kib_reaches_claude_whole(harness: Harness) -> None:
    tail = "END-OF-THE-LONG-DESCRIPTION-7f3c"
    description = "".join(f"Requirement {i}: keep the greeting short and friendly. " for i in range(4000)) + tail
    assert len(description.encode()) > 200 * 1024
    graph = harness.graph([task("long", create=("long.txt",), description=description)],
                          {"long": [write("long.txt", "ok\n"), {"text": "Done."}]})
    result, lines = harness.run(graph)
    assert (result.status, result.exit_code) == ("done", 0), lines
    first = harness.requests("long")[0]
    assert first["prompt_chars"] > len(description) and tail in first["prompt_tail"], first
    assert harness.files() == {"long.txt"}
