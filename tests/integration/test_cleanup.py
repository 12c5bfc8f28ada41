"""``mahabharatha stop`` / ``cleanup`` / ``build-image`` through the real CLI entry point, real engine and git."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.cli import main
from mahabharatha.core.model import LABEL_REPO, LaunchPlan
from mahabharatha.edge import executor

pytestmark = pytest.mark.docker


def _containers(client: Any, repo: Path) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"})


def _stoppable() -> tuple[str, ...]:
    return ("python3", "-c", (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); "
        "print('MAHABHARATHA_WORKER_READY worker=' + os.environ['ZERG_WORKER_ID'], flush=True); time.sleep(600)"
    ))


def test_stop_then_cleanup(docker_client: Any, make_plan: Callable[..., LaunchPlan], git_repo: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    plan = make_plan(2, command=_stoppable())
    executor.execute(plan, client=docker_client)
    (git_repo / ".gsd").mkdir(exist_ok=True)
    (git_repo / ".gsd" / ".current-feature").write_text(plan.feature + "\n")

    assert main(["stop", "--repo", str(git_repo), "--timeout", "20"]) == 0
    out = capsys.readouterr().out
    assert "worker 0" in out and "exit 130: stopped by signal" in out
    for spec in plan.workers:  # named as users know them (not by container id)
        assert f"worker {spec.worker_id} ({spec.name}): exit 130: stopped by signal" in out, out
    assert all(r["State"] == "exited" for r in _containers(docker_client, git_repo))

    dirty = Path(plan.workers[1].worktree.path)
    (dirty / "unsaved.txt").write_text("work in progress\n")
    assert main(["cleanup", plan.feature, "--repo", str(git_repo)]) == 1
    captured = capsys.readouterr()
    assert f"Kept 1 worktree(s) with uncommitted changes: {dirty}" in captured.err
    assert "--force" in captured.err
    assert _containers(docker_client, git_repo) == []
    assert not Path(plan.workers[0].worktree.path).exists() and dirty.is_dir()

    assert main(["cleanup", plan.feature, "--repo", str(git_repo), "--force"]) == 0
    assert not dirty.exists()
    branches = subprocess.run(["git", "-C", str(git_repo), "branch", "--list", "mahabharatha/*"],
                              capture_output=True, text=True, check=True).stdout
    assert "mahabharatha/feat/worker-1" in branches  # commits are never thrown away with the worktree


def test_cleanup_leaves_other_features_alone(docker_client: Any, make_plan: Callable[..., LaunchPlan],
                                             git_repo: Path, container_prefix: str, ready_command: Any) -> None:
    plan = make_plan(1, command=ready_command())
    launch = executor.execute(plan, client=docker_client)
    assert main(["cleanup", "another-feature", "--repo", str(git_repo)]) == 0
    assert [r["Id"] for r in _containers(docker_client, git_repo)] == [launch.workers[0].container_id]


def test_build_image_reports_missing_base(docker_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A build on a base that is not on the engine fails with one line naming the image (nothing is pulled)."""
    code = main(["build-image", "--tag", "mahabharatha-test-never-built:x", "--base-image",
                 "mahabharatha-no-such-base:missing", "--no-claude"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("mahabharatha: error: Building image mahabharatha-test-never-built:x from ")
    assert "mahabharatha-no-such-base" in err and "Traceback" not in err


def test_cleanup_of_an_unknown_feature_names_the_known_ones(
    docker_client: Any, make_plan: Callable[..., LaunchPlan], git_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_plan(1)
    from mahabharatha.edge.worktrees import ensure_worktrees

    ensure_worktrees(git_repo, plan.base_branch, plan.worktrees)  # feature "feat" has branches now
    assert main(["cleanup", "faet", "--repo", str(git_repo)]) == 0
    assert "Nothing to clean up for feature faet; features with branches here: feat" in capsys.readouterr().out
    assert main(["cleanup", plan.feature, "--repo", str(git_repo)]) == 0
    assert "Nothing" not in capsys.readouterr().out  # it removed the worktree
