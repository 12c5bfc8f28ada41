"""build_plan: the brief's mount/env/label tables, determinism, uniqueness per worker, capping."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.auth import discover_auth
from mahabharatha.core.config import Config, load_config
from mahabharatha.core.model import LaunchPlan
from mahabharatha.core.plan import SUBPROCESS_NOTICE, build_plan, plan_json
from mahabharatha.errors import ConfigError

REPO = "/home/u/src/app"
KEY = "sk-ant-api03-" + "k" * 40
RUNTIME = "/usr/lib/python3/site-packages/mahabharatha/worker"


def make(workers=3, *, config=None, environ=None, dotenv=None, claude_dir=False, claude_json=False, feature="user-auth",
         repo=REPO, uid=1000, gid=1001):
    auth, secrets = discover_auth(
        environ=environ if environ is not None else {"ANTHROPIC_API_KEY": KEY}, dotenv_text=dotenv,
        dotenv_path=f"{repo}/.env", home="/home/u", has_claude_dir=claude_dir, has_claude_json=claude_json,
    )
    return build_plan(
        repo=repo, feature=feature, config=config or Config(), auth=auth, secrets=secrets, uid=uid, gid=gid,
        worker_runtime_dir=RUNTIME, requested_workers=workers, config_path=f"{repo}/.mahabharatha/config.yaml",
    )


def test_worker_spec_matches_the_tables():
    plan = make(3, claude_dir=True, claude_json=True)
    assert isinstance(plan, LaunchPlan) and len(plan.workers) == 3
    w = plan.workers[1]
    o = f"{REPO}/.mahabharatha/runtime/user-auth/worker-1"
    wt = "/home/u/src/.mahabharatha-worktrees/user-auth/worker-1"
    ch = f"{REPO}/.mahabharatha/state/user-auth/channel/worker-1"
    assert [(m.target, m.source, m.read_only) for m in w.mounts] == [
        ("/workspace", wt, False),
        ("/workspace/.git", f"{o}/overlay/dotgit", True),
        ("/workspace/.git-worktree", f"{o}/git", False),
        ("/repo/.git", f"{REPO}/.git", True),
        ("/repo/.gsd", f"{REPO}/.gsd", True),
        ("/opt/mahabharatha/overlay", f"{o}/overlay", True),
        ("/opt/mahabharatha/channel", ch, True),
        ("/opt/mahabharatha/lib/mahabharatha_worker", RUNTIME, True),
    ]
    # Nothing of the user's repository, checkout, run state or home is writable from the container (the
    # home is not mounted at all): only the workspace and the worker's private git directory.
    writable = {m.source for m in w.mounts if not m.read_only}
    assert writable == {wt, f"{o}/git"}
    assert not any(m.source == f"{REPO}/.mahabharatha/state" or m.target.startswith("/workspace/.mahabharatha") for m in w.mounts)
    assert w.channel_socket == f"{ch}/worker.sock"
    assert {f.path: f.content for f in w.files} == {
        f"{o}/overlay/dotgit": "gitdir: /workspace/.git-worktree\n",
        f"{o}/overlay/exclude": "/.git-worktree/\n/.mahabharatha/\n",
    }
    env = w.env_dict()
    assert env == {
        "HOME": "/home/worker",
        "ZERG_WORKER_ID": "1",
        "ZERG_FEATURE": "user-auth",
        "ZERG_BRANCH": "mahabharatha/user-auth/worker-1",
        "MAHABHARATHA_BASE_BRANCH": "mahabharatha/user-auth/base",
        "ZERG_GIT_WORKTREE_DIR": "/workspace/.git-worktree",
        "ZERG_GIT_MAIN_DIR": "/repo/.git",
        "MAHABHARATHA_CHANNEL": "/opt/mahabharatha/channel/worker.sock",
        "IS_SANDBOX": "1",
        "MAHABHARATHA_SPEC_DIR": "/repo/.gsd/specs/user-auth",
        "MAHABHARATHA_AGENT_COMMAND": "claude -p --dangerously-skip-permissions", "MAHABHARATHA_IN_CONTAINER": "1",
        "MAHABHARATHA_CONTEXT_THRESHOLD_PERCENT": "70", "MAHABHARATHA_CONTEXT_WINDOW_TOKENS": "200000",
        "GIT_AUTHOR_NAME": "mahabharatha worker 1",
        "GIT_COMMITTER_NAME": "mahabharatha worker 1",
        "GIT_AUTHOR_EMAIL": "worker-1@mahabharatha.invalid",
        "GIT_COMMITTER_EMAIL": "worker-1@mahabharatha.invalid",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.excludesFile",
        "GIT_CONFIG_VALUE_0": "/opt/mahabharatha/overlay/exclude",
        "GIT_CONFIG_KEY_1": "safe.directory",
        "GIT_CONFIG_VALUE_1": "*",
        "PYTHONPATH": "/opt/mahabharatha/lib",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    assert [e.name for e in w.environment] == sorted(env)
    assert [e.name for e in w.secret_environment] == ["ANTHROPIC_API_KEY"]
    assert "ANTHROPIC_API_KEY" not in env
    assert w.command == ("python3", "-m", "mahabharatha_worker")
    assert (w.name, w.image, w.working_dir, w.user, w.init) == ("mahabharatha-worker-1", "mahabharatha-worker", "/workspace", "1000:1001", True)
    assert (w.mem_limit, w.mem_limit_bytes, w.cpus, w.pids_limit, w.read_only) == ("4g", 4 * 1024**3, 2.0, 1024, True)
    assert w.cap_drop == ("ALL",) and w.security_opt == ("no-new-privileges:true",)
    assert [t.target for t in w.tmpfs] == ["/tmp", "/home/worker", "/run"]
    assert w.label_dict() == {
        "io.mahabharatha.managed": "true", "io.mahabharatha.repo": REPO, "io.mahabharatha.feature": "user-auth",
        "io.mahabharatha.worker": "1", "io.mahabharatha.plan": plan.plan_id,
    }
    assert [lbl.key for lbl in w.labels] == sorted(w.label_dict())
    assert w.log_path == f"{REPO}/.mahabharatha/logs/workers/user-auth/worker-1.stdout.log"
    assert (w.ready_timeout_s, w.start_timeout_s) == (30.0, 120.0)
    assert w.worktree.path == wt and w.worktree.branch == "mahabharatha/user-auth/worker-1"
    assert w.worktree.base == "mahabharatha/user-auth/base" and w.worktree.git_dir == f"{o}/git"
    assert plan.worktrees == tuple(x.worktree for x in plan.workers)
    assert plan.base_branch == "mahabharatha/user-auth/base" and plan.repo == REPO and plan.feature == "user-auth"
    assert plan.requested_workers == 3 and plan.image == "mahabharatha-worker"


def test_the_users_claude_home_is_never_mounted():
    for kwargs in ({}, {"claude_json": True}, {"claude_dir": True, "claude_json": True}):
        targets = [m.target for m in make(1, environ={}, **kwargs).workers[0].mounts]
        assert not [t for t in targets if t.startswith("/home/worker")], targets


def test_security_switches():
    config = load_config("c", "security:\n  container_readonly: false\n  no_new_privileges: false\n  drop_capabilities: false\n")
    w = make(1, config=config).workers[0]
    assert w.tmpfs == () and not w.read_only and w.cap_drop == () and w.security_opt == ()


def test_config_values_flow_into_specs():
    config = load_config(
        "c", "workers:\n  container_prefix: mh-test-abc\n  launcher_type: container\nresources:\n"
        "  container_memory_limit: 1536m\n  container_cpu_limit: 1\n  container_image: img:t\n  pids_limit: null\n",
    )
    plan = make(2, config=config)
    assert plan.mode == "container" and plan.container_prefix == "mh-test-abc"
    w = plan.workers[1]
    assert (w.name, w.image, w.mem_limit, w.mem_limit_bytes, w.cpus, w.pids_limit) == (
        "mh-test-abc-1", "img:t", "1536m", 1536 * 1024**2, 1.0, None)


def test_capping_with_notice():
    plan = make(8)
    assert len(plan.workers) == 5 and plan.requested_workers == 8
    assert "Capped 8 workers to workers.max_concurrent=5" in plan.notices
    assert not any("Capped" in n for n in make(5).notices)
    assert len(make(None).workers) == 5


def test_auth_notices():
    assert any("No Claude credentials" in n for n in make(1, environ={}).notices)
    assert any("has no .credentials.json" in n for n in make(1, environ={}, claude_dir=True).notices)
    assert make(3, claude_dir=True).notices == (SUBPROCESS_NOTICE,)  # an API key: nothing to say about auth
    container = load_config("c", "workers:\n  launcher_type: container\n")
    assert make(3, claude_dir=True, config=container).notices == ()


@pytest.mark.parametrize("bad", [0, -1, True, "3"])
def test_bad_worker_count(bad):
    with pytest.raises(ConfigError, match="--workers"):
        make(bad)


def test_bad_feature_and_relative_repo():
    with pytest.raises(ConfigError, match="feature"):
        make(1, feature="../etc")
    with pytest.raises(ConfigError, match="absolute"):
        make(1, repo="relative/path")
    with pytest.raises(ConfigError, match="cannot be /"):
        make(1, repo="/")


def test_repo_at_top_level_directory():
    w = make(1, repo="/app").workers[0]
    assert w.worktree.path == "/.mahabharatha-worktrees/user-auth/worker-0"
    assert all("//" not in m.source for m in w.mounts)


def test_plan_id_ignores_secret_value_but_tracks_content():
    a = make(2, environ={"ANTHROPIC_API_KEY": KEY})
    b = make(2, environ={"ANTHROPIC_API_KEY": "sk-ant-api03-" + "z" * 40})
    assert a.plan_id == b.plan_id and a != b  # the id never depends on (or leaks) the secret
    assert make(3).plan_id != make(2).plan_id
    assert make(2, uid=1).plan_id != make(2).plan_id


def test_plan_is_hashable_and_frozen():
    plan = make(2)
    assert hash(plan) == hash(make(2))
    with pytest.raises(AttributeError):
        plan.feature = "x"  # type: ignore[misc]


def test_plan_json_roundtrip_shape():
    data = msgspec.json.decode(plan_json(make(2)))
    assert data["workers"][0]["secret_environment"][0]["value"] == "sk-ant-…(redacted)"
    assert KEY not in plan_json(make(2)).decode()


_FEATURE = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,20}", fullmatch=True)
_REPO = st.lists(st.from_regex(r"[a-z0-9_][a-z0-9_.-]{0,8}", fullmatch=True).filter(lambda s: s not in (".", "..")),
                 min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=40, deadline=None)
@given(_FEATURE, _REPO, st.integers(1, 40), st.integers(0, 70000), st.booleans(), st.booleans())
def test_determinism(feature, repo, workers, uid, claude_dir, readonly):
    """Same inputs: equal plans, same id, byte-identical JSON."""
    config = load_config("c", f"workers:\n  max_concurrent: 40\nsecurity:\n  container_readonly: {str(readonly).lower()}\n")
    a = make(workers, config=config, feature=feature, repo=repo, uid=uid, claude_dir=claude_dir)
    b = make(workers, config=config, feature=feature, repo=repo, uid=uid, claude_dir=claude_dir)
    assert a == b and a.plan_id == b.plan_id and plan_json(a) == plan_json(b)
    assert len(a.plan_id) == 12


@settings(max_examples=40, deadline=None)
@given(_FEATURE, _REPO, st.integers(1, 60))
def test_unique_per_worker(feature, repo, workers):
    """Names, worktrees, branches, private git dirs, channels, overlay files and logs never collide between
    workers (the socket a message arrives on names the worker that sent it)."""
    config = load_config("c", "workers:\n  max_concurrent: 60\n")
    plan = make(workers, config=config, feature=feature, repo=repo)
    assert [w.worker_id for w in plan.workers] == list(range(workers))
    for attr in (
        lambda w: w.name, lambda w: w.worktree.path, lambda w: w.worktree.branch, lambda w: w.worktree.git_dir,
        lambda w: w.channel_socket, lambda w: w.log_path, lambda w: w.env_dict()["ZERG_WORKER_ID"], lambda w: w.label_dict()["io.mahabharatha.worker"],
    ):
        values = [attr(w) for w in plan.workers]
        assert len(set(values)) == workers
    files = [f.path for w in plan.workers for f in w.files]
    assert len(set(files)) == len(files)
    assert all("//" not in m.source for w in plan.workers for m in w.mounts)
    rw_sources = [m.source for w in plan.workers for m in w.mounts if not m.read_only and not m.target.startswith("/home/worker")]
    assert len(set(rw_sources)) == len(rw_sources) == 2 * workers  # each worker's own workspace and git dir
    channel_dirs = [m.source for w in plan.workers for m in w.mounts if m.target == "/opt/mahabharatha/channel"]
    assert len(set(channel_dirs)) == workers
    assert len({w.label_dict()["io.mahabharatha.plan"] for w in plan.workers}) == 1
