"""The pure plan -> docker-py translation (no daemon): every planned setting reaches ``containers.create``."""

from __future__ import annotations

import msgspec
import pytest
from docker.models.containers import _create_container_args
from hypothesis import given
from hypothesis import strategies as st

from mahabharatha.core.model import EnvVar, Label, Mount, SecretEnvVar, Tmpfs, WorkerSpec, Worktree
from mahabharatha.core.secret import Secret
from mahabharatha.edge.executor import create_kwargs

KEY = "sk-ant-api03-" + "x" * 40


def make_spec(**changes: object) -> WorkerSpec:
    spec = WorkerSpec(
        worker_id=1,
        name="mahabharatha-worker-1",
        image="mahabharatha-worker",
        command=("python3", "-m", "mahabharatha_worker"),
        mounts=(
            Mount("/r/../.mahabharatha-worktrees/f/worker-1", "/workspace"),
            Mount("/r/.mahabharatha/runtime/f/worker-1/dotgit", "/workspace/.git", True),
            Mount("/r/.git/hooks", "/repo/.git/hooks", True),
        ),
        tmpfs=(Tmpfs("/tmp"), Tmpfs("/home/worker", "rw,size=64m,mode=1777")),
        environment=(EnvVar("HOME", "/home/worker"), EnvVar("ZERG_WORKER_ID", "1")),
        secret_environment=(SecretEnvVar("ANTHROPIC_API_KEY", Secret(KEY), "environment"),),
        mem_limit="4g",
        mem_limit_bytes=4 * 1024**3,
        cpus=1.5,
        pids_limit=1024,
        read_only=True,
        user="1000:1000",
        working_dir="/workspace",
        labels=(Label("io.mahabharatha.feature", "f"), Label("io.mahabharatha.managed", "true")),
        cap_drop=("ALL",),
        security_opt=("no-new-privileges:true",),
        init=True,
        worktree=Worktree(1, "/w", "mahabharatha/f/worker-1", "mahabharatha/f/base", "/r/.git/worktrees/worker-1"),
        files=(),
        log_path="/r/.mahabharatha/logs/workers/worker-1.stdout.log",
    )
    return msgspec.structs.replace(spec, **changes)


def test_translation_carries_every_setting() -> None:
    kw = create_kwargs(make_spec(), reveal_secrets=False)
    assert kw["image"] == "mahabharatha-worker"
    assert kw["command"] == ["python3", "-m", "mahabharatha_worker"]
    assert kw["name"] == "mahabharatha-worker-1" and kw["detach"] is True
    assert kw["user"] == "1000:1000" and kw["working_dir"] == "/workspace"
    assert kw["mem_limit"] == 4 * 1024**3
    assert kw["nano_cpus"] == 1_500_000_000 and isinstance(kw["nano_cpus"], int)
    assert kw["pids_limit"] == 1024
    assert kw["read_only"] is True and kw["init"] is True
    assert kw["cap_drop"] == ["ALL"] and kw["security_opt"] == ["no-new-privileges:true"]
    assert kw["labels"] == {"io.mahabharatha.feature": "f", "io.mahabharatha.managed": "true"}
    assert kw["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m", "/home/worker": "rw,size=64m,mode=1777"}
    assert [(m["Target"], m["Source"], m["Type"], m["ReadOnly"]) for m in kw["mounts"]] == [
        ("/workspace", "/r/../.mahabharatha-worktrees/f/worker-1", "bind", False),
        ("/workspace/.git", "/r/.mahabharatha/runtime/f/worker-1/dotgit", "bind", True),
        ("/repo/.git/hooks", "/r/.git/hooks", "bind", True),
    ]


def test_secret_revealed_only_on_request() -> None:
    hidden = create_kwargs(make_spec(), reveal_secrets=False)
    assert KEY not in repr(hidden)
    assert hidden["environment"]["ANTHROPIC_API_KEY"] == Secret(KEY).redacted
    shown = create_kwargs(make_spec(), reveal_secrets=True)
    assert shown["environment"] == {"HOME": "/home/worker", "ZERG_WORKER_ID": "1", "ANTHROPIC_API_KEY": KEY}
    # Only the environment carries it.
    del shown["environment"]
    assert KEY not in repr(shown)


def test_relaxed_security_omits_flags() -> None:
    kw = create_kwargs(make_spec(pids_limit=None, cap_drop=(), security_opt=(), read_only=False), reveal_secrets=False)
    assert "pids_limit" not in kw and "cap_drop" not in kw and "security_opt" not in kw
    assert kw["read_only"] is False
    assert "pids_limit" not in create_kwargs(make_spec(pids_limit=0), reveal_secrets=False)


def test_docker_py_accepts_the_kwargs() -> None:
    """docker-py's own translation (the one containers.create uses) takes every key: none is left over."""
    kw = create_kwargs(make_spec(), reveal_secrets=False)
    args = _create_container_args({**kw, "version": "1.41"})
    host = args["host_config"]
    assert host["Memory"] == 4 * 1024**3 and host["NanoCpus"] == 1_500_000_000 and host["PidsLimit"] == 1024
    assert host["ReadonlyRootfs"] is True and host["Init"] is True and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"] and len(host["Mounts"]) == 3
    assert args["user"] == "1000:1000" and args["labels"]["io.mahabharatha.managed"] == "true"


@given(st.decimals(min_value="0.01", max_value="64", places=2))
def test_nano_cpus_exact(cpus: object) -> None:
    value = float(cpus)  # type: ignore[arg-type]
    kw = create_kwargs(make_spec(cpus=value), reveal_secrets=False)
    assert kw["nano_cpus"] == int(cpus * 10**9)  # type: ignore[operator]


@pytest.mark.parametrize("render_module", ["mahabharatha.core.render"])
def test_consistent_with_rendered_docker_run(render_module: str) -> None:
    """Every flag of the dry-run's `docker run` line has a create() kwarg, and vice versa."""
    render = pytest.importorskip(render_module)
    fn = getattr(render, "render_docker_run", None)
    if fn is None:
        pytest.skip("render_docker_run not available yet")
    pytest.skip("filled in once render_docker_run's signature is known")
