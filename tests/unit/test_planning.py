"""The public plan(): real files in a temp repo, a temp home, and an explicit environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mahabharatha
from mahabharatha.errors import ConfigError
from mahabharatha.planning import find_repo_root, plan

KEY = "sk-ant-api03-" + "p" * 40


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".gsd").mkdir()
    (root / ".gsd" / ".current-feature").write_text("user-auth\n")
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_defaults_and_current_feature(repo, home):
    p = plan(repo, environ={}, home=home)
    assert p.repo == str(repo.resolve()) and p.feature == "user-auth"
    assert len(p.workers) == 5 and p.mode == "subprocess"
    assert p.workers[0].user == f"{os.getuid()}:{os.getgid()}"
    runtime = Path(mahabharatha.__file__).parent / "worker"
    assert any(m.source == str(runtime.resolve()) and m.target == "/opt/mahabharatha/lib/mahabharatha_worker"
               for m in p.workers[0].mounts)
    assert p.config_path == str(repo / ".mahabharatha" / "config.yaml")


def test_package_level_plan_is_the_same_function(repo, home):
    assert mahabharatha.plan(repo, environ={}, home=home, workers=2) == plan(repo, environ={}, home=home, workers=2)


def test_finds_root_from_a_subdirectory(repo, home):
    sub = repo / "src" / "pkg"
    sub.mkdir(parents=True)
    assert find_repo_root(sub) == repo.resolve()
    assert plan(sub, environ={}, home=home, workers=1).repo == str(repo.resolve())


def test_config_env_and_flags(repo, home):
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  max_concurrent: 4\n  container_prefix: mh-test-1\nresources:\n  container_memory_limit: 2g\n"
    )
    p = plan(repo, workers=9, mode="container", environ={"MAHABHARATHA_CONTAINER_CPUS": "1.5"}, home=home)
    assert p.mode == "container" and len(p.workers) == 4 and p.requested_workers == 9
    assert p.workers[3].name == "mh-test-1-3" and p.workers[0].mem_limit == "2g" and p.workers[0].cpus == 1.5
    assert any("Capped 9" in n for n in p.notices)


def test_extra_overrides_have_command_line_precedence(repo, home):
    p = plan(repo, workers=2, environ={"MAHABHARATHA_CONTAINER_IMAGE": "env-image"}, home=home,
             overrides={"resources.container_image": "demo:1", "workers.container_prefix": "mh-demo"})
    assert p.image == "demo:1" and p.workers[1].name == "mh-demo-1"
    with pytest.raises(ConfigError, match="command line: resources.container_image"):
        plan(repo, environ={}, home=home, overrides={"resources.container_image": "Bad Image"})


def test_auth_from_repo_dotenv_not_cwd(repo, home, tmp_path, monkeypatch):
    (repo / ".env").write_text(f"export ANTHROPIC_API_KEY='{KEY}'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("ANTHROPIC_API_KEY=wrong-value-from-cwd-xxxx\n")
    monkeypatch.chdir(elsewhere)
    p = plan(repo, environ={}, home=home, workers=1)
    (secret,) = p.workers[0].secret_environment
    assert secret.value.reveal() == KEY and secret.source == str(repo / ".env")
    p = plan(repo, environ={"ANTHROPIC_API_KEY": "from-env-" + "e" * 20}, home=home, workers=1)
    assert p.workers[0].secret_environment[0].source == "environment"


def test_home_entries_come_from_the_given_home(repo, home):
    (home / ".claude").mkdir()
    (home / ".claude.json").write_text("{}")
    p = plan(repo, environ={}, home=home, workers=1)
    assert p.auth.claude_dir == str(home / ".claude") and p.auth.claude_json == str(home / ".claude.json")
    (home / ".claude.json").unlink()
    (home / ".claude.json").mkdir()  # a directory is not the credentials file
    assert plan(repo, environ={}, home=home, workers=1).auth.claude_json is None


def test_deterministic_across_calls(repo, home):
    a = plan(repo, environ={"ANTHROPIC_API_KEY": KEY}, home=home, workers=3)
    b = plan(repo, environ={"ANTHROPIC_API_KEY": KEY}, home=home, workers=3)
    assert a == b and a.plan_id == b.plan_id


@pytest.mark.parametrize(
    ("setup", "kwargs", "fragments"),
    [
        (lambda r: (r / ".gsd" / ".current-feature").unlink(), {}, [".current-feature", "does not exist", "--feature"]),
        (lambda r: (r / ".gsd" / ".current-feature").write_text("\n"), {}, ["is empty", "--feature"]),
        (lambda r: (r / ".gsd" / ".current-feature").write_text("../etc\n"), {}, [".current-feature", "feature name"]),
        (lambda r: None, {"feature": "a/b"}, ["--feature"]),
        (lambda r: None, {"workers": 0}, ["--workers"]),
        (lambda r: None, {"mode": "vm"}, ["--mode", "workers.launcher_type"]),
        (lambda r: (r / ".mahabharatha").mkdir() or (r / ".mahabharatha" / "config.yaml").write_text("workers: [\n"),
         {}, ["config.yaml", "invalid YAML", "line"]),
        (lambda r: (r / ".mahabharatha").mkdir() or (r / ".mahabharatha" / "config.yaml").write_bytes(b"\xff\xfe"),
         {}, ["config.yaml", "UTF-8"]),
        (lambda r: (r / ".mahabharatha" / "config.yaml").mkdir(parents=True), {}, ["config.yaml", "directory"]),
    ],
)
def test_user_mistakes_are_config_errors(repo, home, setup, kwargs, fragments):
    setup(repo)
    environ = {"ANTHROPIC_API_KEY": KEY}
    (repo / ".env").write_text(f"CLAUDE_CODE_OAUTH_TOKEN={KEY}-token\n")
    with pytest.raises(ConfigError) as info:
        plan(repo, environ=environ, home=home, **kwargs)
    message = str(info.value)
    assert "\n" not in message and KEY not in message
    for fragment in fragments:
        assert fragment in message


def test_not_a_repository(tmp_path, home):
    with pytest.raises(ConfigError, match="not inside a git repository"):
        plan(tmp_path, environ={}, home=home)
    with pytest.raises(ConfigError, match="no such directory"):
        plan(tmp_path / "missing", environ={}, home=home)


def test_linked_worktree_is_refused(tmp_path, home):
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text("gitdir: /somewhere/.git/worktrees/wt\n")
    with pytest.raises(ConfigError, match="linked git worktree"):
        plan(wt, environ={}, home=home, feature="x")


def test_planning_does_not_import_docker():
    import subprocess
    import sys

    code = "import sys, mahabharatha.planning, mahabharatha.cli.dryrun; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


_MISTAKES = [
    ({"feature": "../x"}, None, None),
    ({"workers": -1}, None, None),
    ({"mode": "vm"}, None, None),
    ({}, "resources:\n  container_memory_limit: lots\n", None),
    ({}, "workers:\n  max_concurent: 3\n", None),
    ({}, "workers: [\n", None),
    ({}, None, ""),  # empty .current-feature
]


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=20, max_size=50),
       st.sampled_from(_MISTAKES), st.booleans())
def test_error_messages_never_contain_the_secret(secret, mistake, in_dotenv):
    """Whatever the mistake, the one-line error never shows a credential from the environment or .env."""
    import tempfile

    kwargs, config_text, current_feature = mistake
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "app"
        (root / ".git").mkdir(parents=True)
        (root / ".gsd").mkdir()
        (root / ".gsd" / ".current-feature").write_text("f1\n" if current_feature is None else current_feature)
        if config_text is not None:
            (root / ".mahabharatha").mkdir()
            (root / ".mahabharatha" / "config.yaml").write_text(config_text)
        environ = {"CLAUDE_CODE_OAUTH_TOKEN": secret}
        if in_dotenv:
            (root / ".env").write_text(f"ANTHROPIC_API_KEY={secret}\n")
        else:
            environ["ANTHROPIC_API_KEY"] = secret
        with pytest.raises(ConfigError) as info:
            plan(root, environ=environ, home=Path(tmp), **kwargs)
        assert secret not in str(info.value) and secret not in repr(info.value)
