"""``mahabharatha demo`` end to end: a throwaway repo, the sample feature, real containers, the merged result."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.model import LABEL_REPO

pytestmark = pytest.mark.docker


def test_demo_runs_the_sample_feature_and_shows_the_merged_result(
    tmp_path: Path, worker_image: str, docker_client: Any, capsys: Any
) -> None:
    from mahabharatha.cli import main

    repo = (tmp_path / "demo" / "repo").resolve()
    try:
        code = main(["demo", "--dir", str(tmp_path / "demo"), "--image", worker_image, "--workers", "3"])
    finally:
        for row in docker_client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"}):
            docker_client.api.remove_container(row["Id"], force=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Run done" in out and "level 3: 1 done" in out
    assert "$ git log --oneline --graph mahabharatha/demo/base" in out and "wordcount/__main__.py" in out
    # The merged base branch is a working program.
    archive = subprocess.run(["git", "-C", str(repo), "archive", "mahabharatha/demo/base"], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp_path / "result")
    run = subprocess.run(["python3", "-m", "wordcount"], cwd=tmp_path / "result", input="b a b\n", capture_output=True, text=True)
    assert run.stdout.splitlines() == ["b  2", "a  1"], run.stderr
    assert subprocess.run(["python3", "tests/test_core.py"], cwd=tmp_path / "result").returncode == 0
    assert "L3-readme" in (tmp_path / "result" / "README.md").read_text()
    # The user's branch did not move.
    assert subprocess.run(["git", "-C", str(repo), "rev-list", "--count", "main"], capture_output=True, text=True).stdout.strip() == "1"


def _feature_repo(repo: Path) -> None:
    """``repo`` with a current feature ``feat`` whose task graph is the demo's."""
    import json
    from importlib import resources

    graph = json.loads(resources.files("mahabharatha.demo").joinpath("task-graph.json").read_text())
    graph["feature"] = "feat"
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps(graph))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")


def _kurukshetra_twice(repo: Path, capsys: Any) -> list[str]:
    """Run ``kurukshetra --mode container`` twice; both must fail cleanly with nothing left behind."""
    from mahabharatha.cli import main

    errors = []
    for _ in range(2):
        code = main(["kurukshetra", "--repo", str(repo), "--workers", "2", "--mode", "container"])
        captured = capsys.readouterr()
        assert code == 1, captured
        assert "resuming" not in captured.out and "starting" not in captured.out, captured.out
        assert "Traceback" not in captured.err
        errors.append(captured.err.strip())
        # Preflight comes before any effect: no base branch, no run state, no worktree.
        refs = subprocess.run(["git", "-C", str(repo), "for-each-ref", "refs/heads/mahabharatha/"], capture_output=True, text=True, check=True)
        assert refs.stdout == ""
        assert not (repo / ".mahabharatha").exists()
        assert not (repo.parent / ".mahabharatha-worktrees").exists()
    assert errors[0] == errors[1]
    return errors


def test_a_missing_image_is_found_before_the_base_branch_or_state_exist(
    git_repo: Path, temp_home: Path, docker_client: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _feature_repo(git_repo)
    monkeypatch.setenv("MAHABHARATHA_CONTAINER_IMAGE", "mahabharatha-no-such-image:missing")
    err = _kurukshetra_twice(git_repo, capsys)[0]
    assert err == (
        "mahabharatha: error: Failed to start container: image mahabharatha-no-such-image:missing not found on the "
        "Docker engine (build it with `docker build -t mahabharatha-worker -f .devcontainer/Dockerfile .` or "
        "`mahabharatha build-image`)"
    )
    assert docker_client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={git_repo}"}) == []


def test_an_unreachable_engine_is_found_before_the_base_branch_or_state_exist(
    git_repo: Path, temp_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    _feature_repo(git_repo)
    dead = f"unix://{tmp_path}/no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", dead)
    err = _kurukshetra_twice(git_repo, capsys)[0]
    assert err.startswith(
        f"mahabharatha: error: Failed to start container: cannot reach the Docker engine at {dead}; start Docker or "
        "point DOCKER_HOST at a running engine ("
    ), err
