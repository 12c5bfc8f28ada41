"""``create_kwargs()`` checked against the real engine through an independent launcher: testcontainers.

The executor and its own tests come from one hand. Here the same pure translation of a planned worker is
handed to testcontainers' ``DockerContainer`` instead, and the running container is inspected for every
setting the plan asked for: if the translation dropped or mangled a setting, the engine would show it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mahabharatha.edge.executor import create_kwargs, write_planned_files
from mahabharatha.edge.worktrees import ensure_worktrees
from mahabharatha.worker.protocol import READY_MARKER

KEY = "sk-ant-api03-" + "T" * 40


def _prepare_host(plan: Any) -> None:
    """What execute() does on the host before any container starts (worktrees, overlay files, shared dirs)."""
    repo = Path(plan.repo)
    (repo / ".gsd").mkdir(exist_ok=True)
    Path(plan.state_dir).mkdir(parents=True, exist_ok=True)
    for spec in plan.workers:
        Path(spec.channel_socket).parent.mkdir(parents=True, exist_ok=True)
    ensure_worktrees(repo, plan.base_branch, plan.worktrees)
    write_planned_files(plan.workers)


def test_planned_worker_under_testcontainers_gets_every_setting(
    make_plan: Any, ready_command: Any, docker_client: Any
) -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    plan = make_plan(1, environ={"ANTHROPIC_API_KEY": KEY}, command=ready_command(120))
    spec = plan.workers[0]
    _prepare_host(plan)

    kwargs = create_kwargs(spec, reveal_secrets=True)
    kwargs.pop("detach")  # testcontainers always detaches
    container = DockerContainer(
        kwargs.pop("image"), command=kwargs.pop("command"), env=kwargs.pop("environment"), name=kwargs.pop("name")
    )
    for target, options in kwargs.pop("tmpfs").items():
        container.with_tmpfs_mount(target, options)
    container.with_kwargs(**kwargs).waiting_for(LogMessageWaitStrategy(READY_MARKER))

    with container:  # started, and waited for the worker's ready line
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        host = wrapped.attrs["HostConfig"]
        config = wrapped.attrs["Config"]

        assert host["Memory"] == spec.mem_limit_bytes
        assert host["NanoCpus"] == round(spec.cpus * 1e9)
        assert host["PidsLimit"] == spec.pids_limit
        assert host["ReadonlyRootfs"] is spec.read_only is True
        assert host["CapDrop"] == list(spec.cap_drop)
        assert host["SecurityOpt"] == list(spec.security_opt)
        assert host["Init"] is True
        assert set(host["Tmpfs"]) == {t.target for t in spec.tmpfs}
        assert config["User"] == spec.user
        assert config["WorkingDir"] == spec.working_dir
        assert spec.label_dict().items() <= config["Labels"].items()

        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in wrapped.attrs["Mounts"]}
        assert mounts == {m.target: (m.source, not m.read_only) for m in spec.mounts}

        # The overlay makes /workspace/.git name the worker's private git directory.
        code, out = container.exec(["cat", "/workspace/.git"])
        assert (code, out.decode().strip()) == (0, "gitdir: /workspace/.git-worktree")
        # The credential reaches the process environment, and the read-only hooks stay read-only.
        code, out = container.exec(["printenv", "ANTHROPIC_API_KEY"])
        assert (code, out.decode().strip()) == (0, KEY)
        code, _ = container.exec(["touch", "/repo/.git/hooks/post-merge"])
        assert code != 0
        code, _ = container.exec(["touch", "/repo/.git/HEAD"])
        assert code != 0
