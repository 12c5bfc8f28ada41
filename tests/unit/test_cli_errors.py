"""Hostile input to every command, without Docker: one line on stderr naming the file/field/fix, a non-zero exit,
never a traceback. Real git repositories in tmp dirs; the engine is pointed nowhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mahabharatha.cli import main
from mahabharatha.worker import state as S


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hi\n")
    _git(r, "add", "README.md")
    _git(r, "commit", "-q", "-m", "init")
    (r / ".gsd" / "specs" / "feat").mkdir(parents=True)
    (r / ".gsd" / ".current-feature").write_text("feat\n")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return r


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mahabharatha: error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def _state_file(repo: Path) -> Path:
    """An old-format state.json (no state.db yet: the next read imports it, or refuses it naming the field)."""
    store = S.StateStore(str(repo / ".mahabharatha" / "state"), "feat")
    os.makedirs(store.dir, exist_ok=True)
    Path(store.path).write_text(json.dumps(S.new_state("feat", [("A", 1)])))
    return Path(store.path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"version": 1, "feature": "feat", "le', "not valid JSON"),  # truncated
        ("", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 1}', "'status'"),
        ('{"status": "running", "level": 1, "levels": [1], "tasks": {"A": {"level": 1}}}', "task 'A'"),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["retry"], ["kurukshetra", "--mode", "subprocess"]])
def test_corrupt_state_file_is_one_line_naming_it(
    repo: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str, command: list[str]
) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    path = _state_file(repo)
    path.write_text(content)
    assert main([*command, "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(path), "corrupt run state", problem, "move it away")
    assert path.read_text() == content  # never rewritten behind the user's back


def test_state_file_that_is_a_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _state_file(repo)
    path.unlink()
    path.mkdir()
    assert main(["status", "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(path), "is a directory")


def _graph(repo: Path) -> Path:
    return repo / ".gsd" / "specs" / "feat" / "task-graph.json"


@pytest.mark.parametrize(
    "content, needles",
    [
        (None, ("no task graph for feature 'feat'", "design phase")),
        ("", ("not valid JSON",)),
        ("nope", ("not valid JSON",)),
        ("[]", ("invalid task graph", "object")),
        ('{"feature": "feat", "tasks": "x"}', ("$.tasks",)),
        ('{"feature": "feat", "tasks": []}', ("no tasks",)),
        ('{"feature": "other", "tasks": [{"id": "A", "level": 1}]}', ("field `feature` is 'other'", "--feature other")),
    ],
)
@pytest.mark.parametrize("mode", ["subprocess", "container"])
def test_bad_task_graph_fails_before_anything_starts(
    repo: Path, capsys: pytest.CaptureFixture[str], content: str | None, needles: tuple[str, ...], mode: str
) -> None:
    if content is not None:
        _graph(repo).write_text(content)
    assert main(["kurukshetra", "--mode", mode, "--repo", str(repo)]) == 2
    _one_line_error(capsys, str(_graph(repo)), *needles)
    assert not (repo / ".mahabharatha" / "state").exists()  # nothing started, nothing recorded
    assert "mahabharatha/feat/base" not in subprocess.run(
        ["git", "-C", str(repo), "branch"], capture_output=True, text=True, check=True
    ).stdout


def test_task_graph_that_is_a_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _graph(repo).mkdir()
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(repo)]) == 2
    _one_line_error(capsys, str(_graph(repo)), "is a directory")


def _log(repo: Path, worker: int, text: str) -> Path:
    logs = repo / ".mahabharatha" / "logs" / "workers" / "feat"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"worker-{worker}.stdout.log"
    with open(path, "a") as fh:
        fh.write(text)
    return path


def test_logs_follow_returns_when_no_run_is_in_progress(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(repo, 0, "one\ntwo\n")
    assert main(["logs", "0", "-f", "--repo", str(repo)]) == 0  # a finished run: prints and returns
    assert capsys.readouterr().out == "one\ntwo\n"


def test_logs_follow_follows_while_the_orchestrator_lock_is_held(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import os
    import threading

    from mahabharatha.cli import ops

    path = _log(repo, 0, "one\n")
    lock_dir = repo / ".mahabharatha" / "state" / "feat"
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / "orchestrator.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running kurukshetra holds
    asked = threading.Event()
    answers: list[bool] = []
    real = ops.run_in_progress

    def spy(*a: str) -> bool:
        answers.append(real(*a))
        asked.set()
        return answers[-1]

    monkeypatch.setattr(ops, "run_in_progress", spy)

    def run_ends() -> None:
        asked.wait(30)
        _log(repo, 0, "two\n")  # the run's last words: must not be lost
        os.close(fd)  # the run ends, its lock goes

    threading.Thread(target=run_ends, daemon=True).start()
    assert main(["logs", "0", "-f", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out == "one\ntwo\n"
    assert answers[0] is True and answers[-1] is False  # it followed while the run lasted, then returned
    assert path.read_text() == "one\ntwo\n"


@pytest.mark.parametrize("tail", ["-1", "x"])
def test_logs_negative_or_bad_tail_is_a_usage_error(repo: Path, capsys: pytest.CaptureFixture[str], tail: str) -> None:
    _log(repo, 0, "one\n")
    with pytest.raises(SystemExit) as exc:
        main(["logs", "--tail", tail, "--repo", str(repo)])
    assert exc.value.code == 2
    assert "--tail" in capsys.readouterr().err


def test_logs_tail_zero_prints_nothing(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _log(repo, 0, "one\n")
    assert main(["logs", "--tail", "0", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out == ""


def test_errors_are_one_line_even_when_they_quote_multi_line_tool_output() -> None:
    from mahabharatha.errors import LaunchError

    exc = LaunchError("Failed to start container w-0: the engine said\nline two\r\n\n  line three", hint="do\nthis\n")
    assert str(exc) == "Failed to start container w-0: the engine said line two line three (do this)"


def test_demo_dir_that_is_a_file_or_holds_a_repo_is_refused_before_docker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["demo", "--dir", str(a_file)]) == 2
    _one_line_error(capsys, f"--dir {a_file}: not a directory")
    (tmp_path / "old" / "repo").mkdir(parents=True)
    (tmp_path / "old" / "repo" / "keep.txt").write_text("mine")
    assert main(["demo", "--dir", str(tmp_path / "old")]) == 2
    _one_line_error(capsys, "already exists", "new or empty directory")
    assert (tmp_path / "old" / "repo" / "keep.txt").read_text() == "mine"


def test_demo_caps_workers_at_the_widest_level(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # stops right after the cap, at the engine
    assert main(["demo", "--workers", "1000", "--dir", str(tmp_path / "d")]) == 1
    captured = capsys.readouterr()
    assert "tasks per level: using" in captured.out and "not 1000" in captured.out
    assert "cannot reach the Docker engine" in captured.err


def test_a_file_where_a_directory_goes_is_one_line_naming_it(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".claude").write_text("not a dir")
    assert main(["install-commands", "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(repo / ".claude"), "must be a directory", "fix or move that path")


def test_run_with_a_file_where_the_log_dir_goes_stops_resumably(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    logs = repo / ".mahabharatha" / "logs" / "workers"
    logs.mkdir(parents=True)
    (logs / "feat").write_text("in the way")
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]) == 1
    _one_line_error(capsys, str(logs / "feat"), "is a file, but a directory is needed there")
    data = S.StateStore(str(repo / ".mahabharatha" / "state"), "feat").read()
    assert data is not None and data["status"] == "stopped" and data["tasks"]["A"]["status"] == "pending"


def test_state_under_a_file_is_no_state(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".mahabharatha").write_text("a file")
    assert main(["status", "--repo", str(repo)]) == 1
    _one_line_error(capsys, "no run state for feature 'feat'")


def test_a_bug_is_one_line_and_the_traceback_is_on_request(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mahabharatha.cli import ops

    def broken(_args: object) -> int:
        raise KeyError("surprise\nsecond line")

    monkeypatch.setattr(ops, "cmd_status", broken)
    assert main(["status", "--repo", str(repo)]) == 1
    _one_line_error(capsys, "internal error: KeyError", "MAHABHARATHA_DEBUG=1")
    monkeypatch.setenv("MAHABHARATHA_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["status", "--repo", str(repo)])


def test_a_fresh_run_says_uncommitted_changes_are_not_part_of_it(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(
        '{"feature": "feat", "tasks": [{"id": "A", "level": 1, "verification": {"command": "test -f README.md"}}]}'
    )
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: 'true'\n")
    (repo / "README.md").write_text("edited, not committed\n")
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "uncommitted changes to 1 tracked file(s)" in out
    assert (repo / "README.md").read_text() == "edited, not committed\n"  # the user's work is untouched
    assert subprocess.run(["git", "-C", str(repo), "branch", "--show-current"], capture_output=True, text=True, check=False).stdout.strip() == "main"


def test_rerun_over_a_dirty_worktree_keeps_the_work_and_says_where(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: 'true'\n")
    args = ["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]
    assert main(args) == 0
    worktree = repo.parent / ".mahabharatha-worktrees" / "feat" / "worker-0"
    (worktree / "precious.txt").write_text("hand-made\n")
    assert main(["retry", "A", "--repo", str(repo)]) == 0
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"worktree {worktree} has uncommitted changes (precious.txt)" in out
    refs = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/mahabharatha/interrupted/feat/"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert len(refs) == 1 and refs[0].startswith("refs/mahabharatha/interrupted/feat/worker-0-")
    shown = subprocess.run(["git", "-C", str(repo), "show", f"{refs[0]}:precious.txt"], capture_output=True, text=True, check=False)
    assert shown.stdout == "hand-made\n"  # never lost


def test_status_of_a_running_state_without_an_orchestrator_says_to_resume(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _state_file(repo)  # status "running", as a killed orchestrator leaves it
    assert main(["status", "--repo", str(repo)]) == 0
    assert "no `mahabharatha kurukshetra` is running for it: run it again to resume" in capsys.readouterr().out


def test_json_run_with_a_bad_graph_prints_no_document_and_starts_nothing(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `kurukshetra --json` runs the feature and prints the result document (tests/unit/test_live.py); an error
    # before the run is still one line on stderr, with nothing on stdout for a script to mistake for a result.
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(
        '{"feature": "feat", "tasks": [{"id": "A", "level": 1, "dependencies": ["Z"]}]}'
    )
    assert main(["kurukshetra", "--json", "--mode", "subprocess", "--repo", str(repo)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Z" in captured.err
    assert not (repo / ".mahabharatha" / "state").exists()


def test_gsd_that_is_a_file(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.rmtree(repo / ".gsd")
    (repo / ".gsd").write_text("oops")
    assert main(["kurukshetra", "--feature", "feat", "--mode", "subprocess", "--repo", str(repo)]) == 2
    _one_line_error(capsys, "task-graph.json: part of its path is a file")
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(repo)]) == 2
    _one_line_error(capsys, ".gsd/.current-feature")


@pytest.mark.parametrize("task_id", ["a b", "a/b", "../x", "x..y", "-x", "t.lock", "a:b", "é"])
def test_task_ids_that_cannot_name_a_ref_or_file_are_refused_before_launch(
    repo: Path, capsys: pytest.CaptureFixture[str], task_id: str
) -> None:
    import json

    graph = {"feature": "feat", "tasks": [{"id": "ok", "level": 1}, {"id": task_id, "level": 1}]}
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(json.dumps(graph))
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(repo)]) == 2
    _one_line_error(capsys, f"task id {task_id!r}", "$.tasks[1].id", "rename the task")
    assert not (repo / ".mahabharatha").exists()


def test_sibling_repo_with_the_same_feature_never_gets_told_to_delete_the_others_worktree(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    graph = '{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}'
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(graph)
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: 'true'\n")
    sibling = tmp_path / "sibling"
    shutil.copytree(repo, sibling)  # another project next to it, same feature name
    args = ["kurukshetra", "--mode", "subprocess", "--workers", "1"]
    assert main([*args, "--repo", str(repo)]) == 0
    theirs = repo.parent / ".mahabharatha-worktrees" / "feat" / "worker-0"
    (theirs / "precious.txt").write_text("work in progress\n")
    capsys.readouterr()
    assert main([*args, "--repo", str(sibling)]) == 1
    line = _one_line_error(capsys, str(theirs), f"workspace of another repository, {repo}", "never delete it by hand")
    assert "remove it" not in line
    assert (theirs / "precious.txt").read_text() == "work in progress\n"
    # Workspaces are plain directories now (not git worktrees the other repository registers): the sibling's
    # cleanup, even forced, must not take the other repository's workspace for its own either.
    main(["cleanup", "feat", "--force", "--repo", str(sibling)])  # (exits 1 here only for the missing engine)
    assert "Removed 0 worktree(s) of feature feat" in capsys.readouterr().out
    assert (theirs / "precious.txt").read_text() == "work in progress\n"


def test_run_refuses_while_the_checkout_stands_on_the_base_branch(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1, "files": {"create": ["a.txt"]}}]}')
    _git(repo, "switch", "-q", "-c", "mahabharatha/feat/base")  # e.g. to look at the merged result
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(repo)]) == 1
    _one_line_error(capsys, "has mahabharatha/feat/base checked out", "git switch main")
    assert not (repo / ".mahabharatha" / "state").exists()
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=False).stdout
    assert "D " not in status


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "abc", "1e9"])
def test_stop_timeout_must_be_a_sane_number_of_seconds(repo: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stop", "--timeout", value, "--repo", str(repo)])
    assert exc.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_logs_of_a_feature_that_never_ran_does_not_show_another_features_output(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _state_file(repo)  # feature "feat" ran
    _log(repo, 0, "output of feat\n")
    assert main(["logs", "--feature", "nosuch", "--repo", str(repo)]) == 1
    _one_line_error(capsys, "no run of feature 'nosuch'")
    assert main(["logs", "--feature", "feat", "--repo", str(repo)]) == 0
    assert "output of feat" in capsys.readouterr().out


def test_no_git_on_the_host_is_one_line(repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shutil
    import sys

    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    bin_dir = tmp_path / "bin"  # a PATH with python but without git
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    assert shutil.which("git", path=str(bin_dir)) is None
    monkeypatch.setenv("PATH", str(bin_dir))
    assert main(["kurukshetra", "--mode", "container", "--repo", str(repo)]) == 1
    _one_line_error(capsys, "git is not installed on this machine", "install git")


def test_cleanup_refuses_while_a_run_is_in_progress(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl
    import os

    lock_dir = repo / ".mahabharatha" / "state" / "feat"
    lock_dir.mkdir(parents=True)
    fd = os.open(lock_dir / "orchestrator.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running kurukshetra holds
    try:
        assert main(["cleanup", "feat", "--force", "--repo", str(repo)]) == 1
        _one_line_error(capsys, "run of feature feat is in progress", "mahabharatha stop --feature feat")
    finally:
        os.close(fd)


def test_agent_command_not_found_says_so_in_status(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: no-such-agent-xyz --secret=s3cr3t\n")
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]) == 1
    capsys.readouterr()
    assert main(["status", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "agent command exited 127 (command not found: install the program of workers.agent_command" in out
    assert "s3cr3t" not in (repo / ".mahabharatha" / "state" / "feat" / "state.json").read_text()


def test_unborn_head_is_one_line_and_records_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    r = tmp_path / "fresh"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / ".gsd" / "specs" / "feat").mkdir(parents=True)
    (r / ".gsd" / ".current-feature").write_text("feat\n")
    (r / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["kurukshetra", "--mode", "subprocess", "--repo", str(r)]) == 1
    line = _one_line_error(capsys, "HEAD has no commit", "git commit --allow-empty -m init")
    assert "((" not in line and "))" not in line
    assert main(["status", "--repo", str(r)]) == 1  # nothing to resume
    _one_line_error(capsys, "no run state")


def test_subprocess_dry_run_does_not_pass_container_limits_off_as_applying(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kurukshetra", "--dry-run", "--mode", "subprocess", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "Subprocess mode runs workers on the host, without the container limits and mounts above" in out
    assert main(["kurukshetra", "--dry-run", "--mode", "container", "--repo", str(repo)]) == 0
    assert "Equivalent docker run commands (for debugging by hand):" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command, action",
    [(["stop"], "Cannot stop worker containers"), (["cleanup", "feat"], "Cannot remove containers"), (["build-image"], "Cannot build image mahabharatha-worker")],
)
def test_no_engine_message_says_what_the_command_could_not_do(
    repo: Path, capsys: pytest.CaptureFixture[str], command: list[str], action: str
) -> None:
    args = [*command, "--repo", str(repo)] if command[0] != "build-image" else command
    assert main(args) == 1
    line = _one_line_error(capsys, f"{action}: cannot reach the Docker engine at unix:///nonexistent.sock")
    assert "Failed to start container" not in line


def test_a_plain_file_where_the_state_fifo_goes_is_replaced(repo: Path) -> None:
    import stat

    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text('{"feature": "feat", "tasks": [{"id": "A", "level": 1}]}')
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: 'true'\n")
    events = repo / ".mahabharatha" / "state" / "feat" / "events"
    events.parent.mkdir(parents=True)
    events.write_text("stray")  # e.g. restored from a backup that stored the FIFO as a plain file
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]) == 0
    assert stat.S_ISFIFO(events.lstat().st_mode)


def test_git_dir_in_the_environment_never_redirects_the_run_to_another_repository(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _git(other, "init", "-q", "-b", "main")
    _git(other, "commit", "-q", "--allow-empty", "-m", "other")
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(
        '{"feature": "feat", "tasks": [{"id": "A", "level": 1, "verification": {"command": "test -f made.txt"}}]}'
    )
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text("workers:\n  agent_command: 'echo x > made.txt'\n")
    # e.g. mahabharatha started from a git hook, or a shell that exported them
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "1", "--repo", str(repo)]) == 0
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    branches = lambda r: subprocess.run(["git", "-C", str(r), "branch", "--format=%(refname:short)"], capture_output=True, text=True, check=True).stdout.split()  # noqa: E731
    assert branches(other) == ["main"]  # untouched
    assert "mahabharatha/feat/base" in branches(repo)
    files = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", "mahabharatha/feat/base"], capture_output=True, text=True, check=True).stdout.split()
    assert "made.txt" in files


def test_demo_repo_is_created_where_asked_even_with_git_dir_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mahabharatha.demo import create_demo_repo

    other = tmp_path / "other"
    other.mkdir()
    _git(other, "init", "-q", "-b", "main")
    _git(other, "commit", "-q", "--allow-empty", "-m", "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    repo = create_demo_repo(tmp_path / "demo" / "repo", image="img", workers=1)
    monkeypatch.delenv("GIT_DIR")
    log = lambda r: subprocess.run(["git", "-C", str(r), "log", "--format=%s"], capture_output=True, text=True, check=True).stdout.split("\n")[0]  # noqa: E731
    assert log(other) == "other"
    assert log(repo).startswith("demo project")


def test_a_repo_that_signs_commits_still_runs(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """commit.gpgSign=true (with a key the workers cannot have) must not fail every task and merge."""
    _git(repo, "config", "commit.gpgSign", "true")
    _git(repo, "config", "user.signingKey", "DEADBEEF00000000")
    graph = (
        '{"feature": "feat", "tasks": [{"id": "A", "level": 1, "files": {"create": ["a.txt"]}},'
        ' {"id": "B", "level": 1, "files": {"create": ["b.txt"]}}]}'
    )
    (repo / ".gsd" / "specs" / "feat" / "task-graph.json").write_text(graph)
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  agent_command: 'echo \"$MAHABHARATHA_TASK_ID\" > \"$(echo $MAHABHARATHA_TASK_ID | tr AB ab).txt\"'\n"
    )
    assert main(["kurukshetra", "--mode", "subprocess", "--workers", "2", "--repo", str(repo)]) == 0, capsys.readouterr()
    files = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", "mahabharatha/feat/base"], capture_output=True, text=True, check=True).stdout.split()
    assert {"a.txt", "b.txt"} <= set(files)  # two workers' branches: the second merge is a real merge commit


@pytest.mark.parametrize("command", [["status"], ["logs"], ["retry"], ["stop"]])
def test_every_command_resolves_the_current_feature_like_the_planner(
    repo: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # One resolver (planning.resolve_feature) for every command: an undecodable file is the same one-line
    # error everywhere, naming the file, not a decode crash in some commands.
    (repo / ".gsd" / ".current-feature").write_bytes(b"\xff\xfe")
    assert main([*command, "--repo", str(repo)]) == 2
    _one_line_error(capsys, ".gsd/.current-feature: is not UTF-8 text")
