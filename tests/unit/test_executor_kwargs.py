"""The pure plan -> docker-py translation (no daemon): every planned setting reaches ``containers.create``."""

from __future__ import annotations

import csv
import shlex

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
            Mount("/r/.mahabharatha/runtime/f/worker-1/overlay/dotgit", "/workspace/.git", True),
            Mount("/r/.mahabharatha/state/f/channel/worker-1", "/opt/mahabharatha/channel", True),
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
        worktree=Worktree(1, "/w", "mahabharatha/f/worker-1", "mahabharatha/f/base", "/r/.mahabharatha/runtime/f/worker-1/git"),
        files=(),
        log_path="/r/.mahabharatha/logs/workers/worker-1.stdout.log",
        channel_socket="/r/.mahabharatha/state/f/channel/worker-1/worker.sock",
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
        ("/workspace/.git", "/r/.mahabharatha/runtime/f/worker-1/overlay/dotgit", "bind", True),
        ("/opt/mahabharatha/channel", "/r/.mahabharatha/state/f/channel/worker-1", "bind", True),
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


# docker run flag -> containers.create kwarg
_FLAG_TO_KWARG = {
    "--name": "name", "--init": "init", "--user": "user", "--workdir": "working_dir", "--memory": "mem_limit",
    "--cpus": "nano_cpus", "--pids-limit": "pids_limit", "--read-only": "read_only", "--cap-drop": "cap_drop",
    "--security-opt": "security_opt", "--tmpfs": "tmpfs", "--mount": "mounts", "--label": "labels",
    "-e": "environment",
}
_BOOLEAN_FLAGS = {"--init", "--read-only"}


def _parse_docker_run(line: str) -> tuple[dict[str, list[str]], list[str]]:
    words = shlex.split(line)
    assert words[:2] == ["docker", "run"]
    flags: dict[str, list[str]] = {}
    i = 2
    while words[i].startswith("-"):
        flag = words[i]
        if flag in _BOOLEAN_FLAGS:
            flags.setdefault(flag, []).append("")
            i += 1
        else:
            flags.setdefault(flag, []).append(words[i + 1])
            i += 2
    return flags, words[i:]


def _mount_fields(value: str) -> tuple[str, str, bool]:
    fields = next(csv.reader([value]))
    kv = dict(f.split("=", 1) if "=" in f else (f, "true") for f in fields)
    assert kv.pop("type") == "bind"
    return kv["source"], kv["target"], kv.get("readonly") == "true"


def _specs() -> list[WorkerSpec]:
    from mahabharatha.core.auth import discover_auth
    from mahabharatha.core.config import load_config
    from mahabharatha.core.plan import build_plan

    auth, secrets = discover_auth(environ={"ANTHROPIC_API_KEY": KEY}, dotenv_text=None, dotenv_path="/r/.env",
                                  home="/home/u", has_claude_dir=True, has_claude_json=True)
    config = load_config("/r/.mahabharatha/config.yaml", "resources:\n  container_memory_limit: 1.5GiB\n", {},
                         {"workers.launcher_type": "container"})
    plan = build_plan(repo="/r", feature="f", config=config, auth=auth, secrets=secrets, uid=1000, gid=1000,
                      worker_runtime_dir="/site/mahabharatha/worker", requested_workers=2)
    relaxed = load_config("/r/.mahabharatha/config.yaml",
                          "security:\n  container_readonly: false\n  no_new_privileges: false\n"
                          "  drop_capabilities: false\nresources:\n  pids_limit: null\n", {}, {})
    plain = build_plan(repo="/r", feature="f", config=relaxed, auth=auth, uid=0, gid=0,
                       worker_runtime_dir="/w", requested_workers=1)
    return [make_spec(), *plan.workers, *plain.workers]


@pytest.mark.parametrize("index", range(4))
def test_consistent_with_rendered_docker_run(index: int) -> None:
    """The dry-run's `docker run` line and the executor's create() kwargs carry the same settings.

    Only ``detach`` has no flag: the rendered line runs in the foreground, for debugging by hand.
    """
    from mahabharatha.core.memory import parse_memory
    from mahabharatha.core.render import render_docker_run

    spec = _specs()[index]
    flags, rest = _parse_docker_run(render_docker_run(spec))
    kw = create_kwargs(spec, reveal_secrets=False)
    present = {k for k, v in kw.items() if v not in ([], {}, False)} - {"image", "command", "detach"}
    assert {_FLAG_TO_KWARG[f] for f in flags} == present
    assert rest == [kw["image"], *kw["command"]]
    assert flags["--name"] == [kw["name"]] and flags["--user"] == [kw["user"]]
    assert flags["--workdir"] == [kw["working_dir"]]
    assert parse_memory(flags["--memory"][0])[1] == kw["mem_limit"]
    assert round(float(flags["--cpus"][0]) * 1e9) == kw["nano_cpus"]
    assert [int(v) for v in flags.get("--pids-limit", [])] == ([kw["pids_limit"]] if "pids_limit" in kw else [])
    assert ("--init" in flags) == kw["init"] and ("--read-only" in flags) == kw["read_only"]
    assert flags.get("--cap-drop", []) == kw.get("cap_drop", [])
    assert flags.get("--security-opt", []) == kw.get("security_opt", [])
    assert dict(v.split(":", 1) for v in flags.get("--tmpfs", [])) == kw["tmpfs"]
    assert [_mount_fields(v) for v in flags["--mount"]] == [
        (m["Source"], m["Target"], m["ReadOnly"]) for m in kw["mounts"]
    ]
    assert dict(v.split("=", 1) for v in flags["--label"]) == kw["labels"]
    rendered_env = dict(v.split("=", 1) if "=" in v else (v, None) for v in flags["-e"])
    assert set(rendered_env) == set(kw["environment"])
    secret_names = {s.name for s in spec.secret_environment}
    assert {k: v for k, v in rendered_env.items() if k not in secret_names} == {
        k: v for k, v in kw["environment"].items() if k not in secret_names
    }
    assert all(rendered_env[name] is None for name in secret_names)  # never a value on a command line
