"""The executor against the real engine: what a running worker sees, limits, git, failures and cleanup.

Workers here run a small stand-in command (``ready_command``: prints the ready line, then idles) unless a
test is about the real worker runtime. Plans come from the real planner (``make_plan`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mahabharatha.core.model import LABEL_REPO, LaunchPlan
from mahabharatha.core.plan import plan_json
from mahabharatha.edge import executor, worktrees
from mahabharatha.errors import LaunchError

pytestmark = pytest.mark.docker

KEY = "sk-ant-api03-" + "Q7vXk2" * 8  # a fake key: only its presence matters


def _sh(client: Any, handle: executor.WorkerHandle, script: str) -> tuple[int, str]:
    code, out = client.containers.get(handle.container_id).exec_run(["sh", "-c", script])
    return code, out.decode("utf-8", "replace")


def _repo_containers(client: Any, repo: Path) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"})


def _git(repo: Path | str, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def _eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """For effects that land asynchronously (the background log copy): poll with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _stoppable_ready_command() -> tuple[str, ...]:
    """Announces itself, then idles; SIGTERM exits 130 like the real worker."""
    script = (
        "import os, signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); "
        "print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); "
        "print('after ready', flush=True); "
        "time.sleep(600)"
    )
    return ("python3", "-c", script)


def test_running_worker_sees_the_plan(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any, git_repo: Path,
                                      temp_home: Path) -> None:
    (temp_home / ".claude").mkdir()
    (temp_home / ".claude" / "settings.json").write_text("{}\n")
    config = "resources:\n  container_memory_limit: 256m\n  container_cpu_limit: 0.5\n"
    plan = make_plan(1, environ={"ANTHROPIC_API_KEY": KEY}, config=config, command=ready_command())
    spec = plan.workers[0]
    launch = executor.execute(plan, client=docker_client)
    (handle,) = launch.workers
    assert (handle.worker_id, handle.name, handle.status) == (0, spec.name, "running")

    attrs = docker_client.api.inspect_container(handle.container_id)
    host = attrs["HostConfig"]
    # Limits and hardening as the engine reports them.
    assert host["Memory"] == 256 * 1024**2
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 1024
    assert host["ReadonlyRootfs"] is True and host["Init"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges:true" in host["SecurityOpt"]
    assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
    assert attrs["Config"]["Labels"] == spec.label_dict()
    # Every planned mount, at its documented path, with its mode.
    mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"]}
    assert mounts == {m.target: (m.source, not m.read_only) for m in spec.mounts}
    assert "/repo/.gsd" in mounts and not [t for t in mounts if t.startswith("/home/worker")]  # ~/.claude never

    # The same limits seen from inside (cgroup v1 or v2).
    code, out = _sh(docker_client, handle, (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null "
        "|| cat /sys/fs/cgroup/cpu.max"
    ))
    numbers = out.split()
    assert code == 0 and int(numbers[0]) == 256 * 1024**2
    assert int(numbers[1]) / int(numbers[2]) == 0.5

    code, out = _sh(docker_client, handle, "id -u; id -g")
    assert out.split() == [str(os.getuid()), str(os.getgid())]
    code, out = _sh(docker_client, handle, "touch /usr/x 2>&1; echo rc=$?; touch /tmp/x /home/worker/x && echo tmp-ok")
    assert "Read-only file system" in out and "rc=1" in out and "tmp-ok" in out
    # Nothing of the user's repository or checkout is writable: not .git (HEAD, refs, objects, config, hooks,
    # commondir), not .gsd, not the channel directory; the state directory is not there at all.
    code, out = _sh(docker_client, handle, (
        "for f in /repo/.git/hooks/evil /repo/.git/config /repo/.git/HEAD /repo/.git/commondir "
        "/repo/.git/refs/heads/x /repo/.git/objects/x /repo/.gsd/x /opt/mahabharatha/channel/x /workspace/.git; "
        "do touch $f 2>&1; done; echo done"
    ))
    assert out.count("Read-only file system") == 9, out
    code, out = _sh(docker_client, handle, (
        "cat /workspace/.git; "
        "test -f /opt/mahabharatha/lib/mahabharatha_worker/protocol.py && echo runtime-ok; "
        "test -e /home/worker/.claude/settings.json || echo no-host-claude-ok; "
        "test -d /workspace/.git-worktree && test -w /workspace/.git-worktree && echo private-git-ok; "
        "test -e /workspace/.mahabharatha/state || echo no-state-ok"
    ))
    assert out.split() == [
        "gitdir:", "/workspace/.git-worktree", "runtime-ok", "no-host-claude-ok", "private-git-ok", "no-state-ok",
    ]

    # The environment is the plan's, plus the secret.
    code, out = _sh(docker_client, handle, "env -0")
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    for name, value in spec.env_dict().items():
        assert env[name] == value, name
    assert env["ANTHROPIC_API_KEY"] == KEY

    # The secret is nowhere else: not in labels, command, plan output, host files, host log or image files.
    visible = dict(attrs)
    visible["Config"] = {k: v for k, v in attrs["Config"].items() if k != "Env"}
    assert KEY not in json.dumps(visible)
    assert KEY.encode() not in plan_json(plan)
    assert KEY not in repr(plan)
    code, out = _sh(docker_client, handle, (
        f"grep -rl {shlex.quote(KEY)} /workspace /repo /opt/mahabharatha /etc /home/worker /proc/1/cmdline "
        "2>/dev/null; echo scanned"
    ))
    assert out.strip() == "scanned"
    for root in (git_repo, Path(spec.worktree.path)):
        for path in root.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path
    assert "MAHABHARATHA_WORKER_READY worker=0" in Path(spec.log_path).read_text()


def test_git_commit_in_a_worker_stays_in_its_private_repository(docker_client: Any, make_plan: Callable[..., LaunchPlan],
                                                                ready_command: Any, git_repo: Path) -> None:
    """An agent's own ``git commit`` in /workspace works (the private repository, the user's objects as
    alternates), and reaches nothing of the user's: the branch, the refs and the object store stay as they were
    until the orchestrator imports a result."""
    plan = make_plan(1, command=ready_command())
    (handle,) = executor.execute(plan, client=docker_client).workers
    wt = plan.workers[0].worktree
    base = _git(git_repo, "rev-parse", "HEAD")
    refs_before = _git(git_repo, "for-each-ref")
    setup = (
        "python3 -c \"from mahabharatha_worker.gitsetup import Repo; "
        f"r = Repo('/workspace', '/workspace/.git-worktree', '{wt.branch}', '/repo/.git/objects'); "
        f"r.ensure(); r.checkout('{base}')\""
    )
    code, out = _sh(docker_client, handle, f"{setup} && git status --porcelain && git rev-parse --abbrev-ref HEAD")
    assert (code, out.strip()) == (0, wt.branch), out  # clean: mount points are excluded
    code, out = _sh(docker_client, handle, (
        "echo work > result.txt && git add result.txt && git commit -q -m 'from worker' && git status --porcelain "
        "&& git rev-parse HEAD"
    ))
    assert code == 0, out
    commit = out.strip()
    assert _git(git_repo, "log", "-1", "--format=%s", wt.branch) == "initial"  # the user's branch did not move
    assert _git(git_repo, "for-each-ref") == refs_before
    assert subprocess.run(["git", "-C", str(git_repo), "cat-file", "-e", commit]).returncode != 0  # no object
    assert _git(git_repo, "branch", "--show-current") == "main"

    executor.remove_containers(docker_client, plan.repo, plan.feature)
    with pytest.raises(Exception, match="uncommitted changes"):  # result.txt is not on the worker branch
        worktrees.remove_worktree(plan.repo, wt.path, branch=wt.branch, git_dir=wt.git_dir)
    assert worktrees.remove_worktree(plan.repo, wt.path, branch=wt.branch, git_dir=wt.git_dir, force=True) is True
    assert not Path(wt.path).exists() and not Path(wt.git_dir).exists()


def test_oom_kill_is_reported(docker_client: Any, make_plan: Callable[..., LaunchPlan]) -> None:
    script = (
        "import os; print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); "
        "hog = ['x' * (1 << 20) + str(i) for i in range(512)]"
    )
    plan = make_plan(1, config="resources:\n  container_memory_limit: 32m\n", command=("python3", "-c", script))
    (handle,) = executor.execute(plan, client=docker_client).workers
    result = executor.wait_exit(docker_client, handle.name, timeout=60)
    assert (result.worker_id, result.exit_code, result.oom_killed) == (0, 137, True)
    assert result.meaning == "killed (out of memory or SIGKILL)"


def test_missing_image_says_how_to_build(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any,
                                         git_repo: Path) -> None:
    plan = make_plan(2, command=ready_command(), image="mahabharatha-no-such-image:missing")
    with pytest.raises(LaunchError) as info:
        executor.execute(plan, client=docker_client)
    message = str(info.value)
    assert message.startswith("Failed to start container: image mahabharatha-no-such-image:missing not found")
    assert "docker build -t mahabharatha-worker -f .devcontainer/Dockerfile ." in message
    assert _repo_containers(docker_client, git_repo) == []
    assert not (git_repo.parent / ".mahabharatha-worktrees").exists()  # nothing touched


def test_unreachable_engine(make_plan: Callable[..., LaunchPlan], ready_command: Any, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    plan = make_plan(1, command=ready_command())
    dead = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", dead)
    with pytest.raises(LaunchError, match=f"^Failed to start container: cannot reach the Docker engine at {dead}; start Docker"):
        executor.execute(plan)


def test_name_clash_with_another_owner_is_refused(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any,
                                                   worker_image: str, git_repo: Path) -> None:
    plan = make_plan(2, command=ready_command())
    other = docker_client.containers.create(
        worker_image, ["true"], name=plan.workers[1].name,
        labels={"io.mahabharatha.managed": "true", "io.mahabharatha.repo": "/elsewhere/repo",
                "io.mahabharatha.feature": "other"},
    )
    with pytest.raises(LaunchError) as info:
        executor.execute(plan, client=docker_client)
    message = str(info.value)
    assert plan.workers[1].name in message and "repo /elsewhere/repo, feature other" in message
    assert "mahabharatha cleanup other" in message
    other.reload()  # still there, untouched
    assert _repo_containers(docker_client, git_repo) == []

    other.remove()
    docker_client.containers.create(worker_image, ["true"], name=plan.workers[0].name)  # not ours at all
    with pytest.raises(LaunchError, match="not created by mahabharatha"):
        executor.execute(plan, client=docker_client)


def test_relaunch_replaces_stale_containers(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any,
                                            git_repo: Path) -> None:
    plan = make_plan(2, command=ready_command())
    first = executor.execute(plan, client=docker_client)
    (Path(plan.workers[0].worktree.path) / "keep.txt").write_text("uncommitted work\n")
    second = executor.execute(plan, client=docker_client)
    assert {h.name for h in second.workers} == {h.name for h in first.workers}
    alive = {row["Id"] for row in _repo_containers(docker_client, git_repo)}
    assert alive == {h.container_id for h in second.workers}
    assert not alive & {h.container_id for h in first.workers}
    assert (Path(plan.workers[0].worktree.path) / "keep.txt").read_text() == "uncommitted work\n"


def test_failed_launch_leaves_no_containers(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any,
                                            git_repo: Path) -> None:
    plan = make_plan(3, command=ready_command())
    broken = msgspec.structs.replace(
        plan.workers[1], command=("python3", "-c", "print('cannot reach task graph'); raise SystemExit(1)")
    )
    plan = msgspec.structs.replace(plan, workers=(plan.workers[0], broken, plan.workers[2]))
    with pytest.raises(LaunchError) as info:
        executor.execute(plan, client=docker_client)
    message = str(info.value)
    assert message.startswith(f"Worker process failed to start in {broken.name}: the container exited with code 1")
    assert "cannot reach task graph" in message and broken.log_path in message
    assert _repo_containers(docker_client, git_repo) == []
    assert all(Path(w.worktree.path).is_dir() for w in plan.workers)  # worktrees are never deleted

    with pytest.raises(LaunchError, match="containers kept for debugging"):
        executor.execute(plan, client=docker_client, keep_failed=True)
    assert len(_repo_containers(docker_client, git_repo)) == 3


def test_worker_without_ready_line_times_out(docker_client: Any, make_plan: Callable[..., LaunchPlan],
                                             git_repo: Path) -> None:
    plan = make_plan(1, command=("python3", "-c", "print('thinking', flush=True); import time; time.sleep(600)"),
                     start_timeout_s=1.0)
    with pytest.raises(LaunchError, match=r"^Worker process failed to start .*no `MAHABHARATHA_WORKER_READY worker=0` "
                                          r"line after 1 s; last log lines: thinking"):
        executor.execute(plan, client=docker_client)
    assert _repo_containers(docker_client, git_repo) == []


def test_logs_keep_flowing_and_stop_reports_exit(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any) -> None:
    plan = make_plan(2, command=_stoppable_ready_command())
    launch = executor.execute(plan, client=docker_client)
    for spec in plan.workers:
        assert _eventually(lambda: "after ready" in Path(spec.log_path).read_text())
    assert executor.worker_exit(docker_client, launch.workers[0].name).exit_code is None
    exits = executor.stop_workers(docker_client, plan.repo, plan.feature, timeout=20)
    assert [(e.worker_id, e.exit_code, e.meaning, e.oom_killed) for e in exits] == [
        (0, 130, "stopped by signal", False), (1, 130, "stopped by signal", False)
    ]
    assert executor.remove_containers(docker_client, plan.repo, plan.feature) == sorted(h.name for h in launch.workers)


def test_start_worker_restarts_one(docker_client: Any, make_plan: Callable[..., LaunchPlan], ready_command: Any, git_repo: Path) -> None:
    plan = make_plan(2, command=ready_command())
    launch = executor.execute(plan, client=docker_client)
    again = executor.start_worker(docker_client, plan, plan.workers[1])
    alive = {row["Id"] for row in _repo_containers(docker_client, git_repo)}
    assert alive == {launch.workers[0].container_id, again.container_id}
    assert again.container_id != launch.workers[1].container_id


def test_real_worker_runtime_announces_itself(docker_client: Any, make_plan: Callable[..., LaunchPlan], git_repo: Path) -> None:
    """The real runtime (python3 -m mahabharatha_worker, mounted read-only) reaches its channel, sets up its
    private repository inside the container and prints the ready line; told the run is done, it exits 0."""
    from mahabharatha.edge.channel import ChannelServer

    plan = make_plan(1)
    spec = plan.workers[0]
    assert spec.command == ("python3", "-m", "mahabharatha_worker")
    base = _git(git_repo, "rev-parse", "HEAD")
    answers = {"hello": {"ok": True, "start": base}, "claim": {"ok": True, "final": "done"}}
    server = ChannelServer({0: spec.channel_socket}, lambda wid, msg, blob: answers[msg["op"]]).start()
    try:
        (handle,) = executor.execute(plan, client=docker_client).workers
        result = executor.wait_exit(docker_client, handle.name, timeout=60)
    finally:
        server.close()
    assert (result.exit_code, result.meaning, result.oom_killed) == (0, "done: all tasks completed", False)
    log = Path(plan.workers[0].log_path)
    assert _eventually(lambda: "exiting" in log.read_text())
    assert "MAHABHARATHA_WORKER_READY worker=0" in log.read_text().splitlines()


def test_secret_printed_by_a_worker_is_redacted_on_the_host(docker_client: Any,
                                                            make_plan: Callable[..., LaunchPlan]) -> None:
    """Even a worker that prints its key leaks it neither into the host log nor into the error message."""
    from mahabharatha.core.secret import Secret

    script = "import os; print('key is', os.environ['ANTHROPIC_API_KEY'], flush=True); raise SystemExit(1)"
    plan = make_plan(1, environ={"ANTHROPIC_API_KEY": KEY}, command=("python3", "-c", script))
    with pytest.raises(LaunchError) as info:
        executor.execute(plan, client=docker_client)
    assert KEY not in str(info.value) and f"key is {Secret(KEY).redacted}" in str(info.value)
    log = Path(plan.workers[0].log_path).read_text()
    assert KEY not in log and Secret(KEY).redacted in log


def test_container_not_seen_running_in_time(docker_client: Any, make_plan: Callable[..., LaunchPlan],
                                            ready_command: Any, container_prefix: str) -> None:
    """The running check trusts only the engine's events: a container whose start event never reaches the
    launch (here: unlabelled, so outside the launch's event filter) fails with the documented message."""
    plan = make_plan(1, command=ready_command(), labels=(), ready_timeout_s=1.0)
    with pytest.raises(LaunchError, match=r"^Container failed to become ready: .* was not running after 1 s"):
        executor.execute(plan, client=docker_client)
    assert docker_client.api.containers(all=True, filters={"name": f"^/{container_prefix}"}) == []
