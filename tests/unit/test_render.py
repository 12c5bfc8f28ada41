"""Renderings of a plan: the words users know, canonical JSON, and paste-able ``docker run`` lines."""

from __future__ import annotations

import csv
import shlex

import msgspec
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mahabharatha.core.auth import discover_auth
from mahabharatha.core.config import Config, load_config
from mahabharatha.core.model import Mount
from mahabharatha.core.plan import build_plan
from mahabharatha.core.render import mount_option, render_docker_run, render_json, render_text

REPO = "/home/u/src/app"
SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def make(workers=3, *, key="sk-ant-api03-" + "q" * 40, token=None, config=None, claude_dir=False, repo=REPO,
         dotenv=None):
    environ = {}
    if key:
        environ["ANTHROPIC_API_KEY"] = key
    if token:
        environ["CLAUDE_CODE_OAUTH_TOKEN"] = token
    auth, secrets = discover_auth(environ=environ, dotenv_text=dotenv, dotenv_path=f"{repo}/.env", home="/home/u",
                                  has_claude_dir=claude_dir, has_claude_json=False)
    config = config or load_config("c", None, {}, {"workers.launcher_type": "container"})
    return build_plan(repo=repo, feature="user-auth", config=config, auth=auth, secrets=secrets, uid=1000,
                      gid=1000, worker_runtime_dir="/opt/lib/mahabharatha/worker", requested_workers=workers,
                      config_path=f"{repo}/.mahabharatha/config.yaml")


def test_text_uses_the_words_users_know():
    text = render_text(make(3))
    assert "Container mode: using image mahabharatha-worker" in text
    for n in range(3):
        assert f"Launching Worker {n}: mahabharatha-worker-{n} (memory=4g, cpus=2.0)" in text
    assert "TARGET" in text and "/workspace/.git-worktree" in text and "/opt/mahabharatha/channel" in text
    # The user's repository shows as read-only: what a user reads is what the container gets.
    mounts = {line.split()[0]: line.split()[1] for line in text.splitlines() if line.startswith("    /")}
    assert mounts["/repo/.git"] == "ro" and mounts["/repo/.gsd"] == "ro" and mounts["/workspace"] == "rw"
    assert "ZERG_WORKER_ID=2" in text and "ZERG_BRANCH=mahabharatha/user-auth/worker-1" in text
    assert "ANTHROPIC_API_KEY=sk-ant-…(redacted)  (secret, from environment)" in text
    assert "ANTHROPIC_API_KEY from environment" in text


def test_text_subprocess_mode_and_notices():
    text = render_text(make(8, key=None, config=Config()))
    assert "Subprocess mode" in text
    assert "Notices:" in text and "Capped 8 workers to workers.max_concurrent=5" in text
    assert "No Claude credentials" in text and "Workers: 5, requested 8" in text


def test_text_shows_control_characters_escaped_on_one_line():
    config = load_config("c", 'workers:\n  agent_command: "line1\\nline2"\n')
    text = render_text(make(1, config=config))
    assert "MAHABHARATHA_AGENT_COMMAND='line1\\nline2'" in text


def test_json_is_canonical_and_complete():
    plan = make(2)
    data = msgspec.json.decode(render_json(plan))
    assert data["plan_id"] == plan.plan_id and len(data["workers"]) == 2
    assert list(data) == sorted(data)
    assert data["workers"][0]["secret_environment"][0] == {
        "name": "ANTHROPIC_API_KEY", "source": "environment", "value": "sk-ant-…(redacted)"}
    assert render_json(plan) == render_json(make(2))


def test_docker_run_line_is_equivalent():
    plan = make(2, claude_dir=True)
    spec = plan.workers[1]
    args = shlex.split(render_docker_run(spec))
    assert args[:4] == ["docker", "run", "--name", "mahabharatha-worker-1"]
    assert args[-4:] == ["mahabharatha-worker", "python3", "-m", "mahabharatha_worker"]

    def values(flag):
        return [args[i + 1] for i, a in enumerate(args) if a == flag]

    assert values("--memory") == ["4g"] and values("--cpus") == ["2.0"] and values("--pids-limit") == ["1024"]
    assert values("--user") == ["1000:1000"] and values("--workdir") == ["/workspace"]
    assert "--read-only" in args and "--init" in args
    assert values("--cap-drop") == ["ALL"] and values("--security-opt") == ["no-new-privileges:true"]
    assert [v.split(":")[0] for v in values("--tmpfs")] == ["/tmp", "/home/worker", "/run"]
    mounts = values("--mount")
    assert len(mounts) == len(spec.mounts)
    for option, m in zip(mounts, spec.mounts):
        fields = next(csv.reader([option]))
        assert fields[:3] == ["type=bind", f"source={m.source}", f"target={m.target}"]
        assert ("readonly" in fields) == m.read_only
    assert values("--label") == [f"{lbl.key}={lbl.value}" for lbl in spec.labels]
    env = values("-e")
    assert env[:-1] == [f"{e.name}={e.value}" for e in spec.environment]
    assert env[-1] == "ANTHROPIC_API_KEY"  # value taken from the caller's environment


def test_mount_option_quotes_commas():
    option = mount_option(Mount(source="/a,b/c\"d", target="/x", read_only=True))
    assert next(csv.reader([option])) == ["type=bind", 'source=/a,b/c"d', "target=/x", "readonly"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=SECRET_ALPHABET, min_size=20, max_size=64), st.text(alphabet=SECRET_ALPHABET, min_size=20, max_size=64),
       st.booleans())
def test_no_rendering_contains_a_secret(key, token, from_dotenv):
    """repr, text, JSON and docker run lines never contain the API key or OAuth token."""
    baseline = render_text(make(2, key=None)) + render_docker_run(make(1, key=None).workers[0])
    assume(key not in baseline and token not in baseline)  # a "secret" that is plain plan text proves nothing
    if from_dotenv:
        plan = make(2, key=None, dotenv=f"ANTHROPIC_API_KEY={key}\nCLAUDE_CODE_OAUTH_TOKEN='{token}'\n")
    else:
        plan = make(2, key=key, token=token)
    assert {s.value.reveal() for s in plan.workers[0].secret_environment} == {key, token}
    outputs = [repr(plan), str(plan), render_text(plan), render_json(plan).decode(), repr(plan.workers[0]),
               *(render_docker_run(w) for w in plan.workers)]
    for out in outputs:
        assert key not in out and token not in out
