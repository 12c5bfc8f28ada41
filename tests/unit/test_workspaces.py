"""Workspaces are plain directories that repositories side by side share a parent of: which repository's run
took one is recorded host-side (the run's runtime dir), never read from the agent-writable workspace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mahabharatha.core.model import Worktree
from mahabharatha.core.plan import base_branch, private_git_dir, worker_branch, worktree_path
from mahabharatha.edge.worktrees import ensure_worktrees, feature_worktrees
from mahabharatha.errors import WorktreeError


def _repo(path: Path) -> str:
    path.mkdir(parents=True)
    for args in (("init", "-q", "-b", "main"), ("commit", "-q", "--allow-empty", "-m", "init")):
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@e.invalid", *args], check=True)
    return str(path.resolve())


def _wt(repo: str, n: int = 0) -> Worktree:
    return Worktree(n, worktree_path(repo, "feat", n), worker_branch("feat", n), base_branch("feat"), private_git_dir(repo, "feat", n))


def _ensure(repo: str) -> Worktree:
    wt = _wt(repo)
    ensure_worktrees(repo, base_branch("feat"), [wt], host_git=True)
    return wt


def test_an_own_workspace_is_kept_with_its_work(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "a")
    wt = _ensure(repo)
    Path(wt.path, "work.txt").write_text("mine\n")
    assert _ensure(repo) == wt and Path(wt.path, "work.txt").read_text() == "mine\n"
    assert feature_worktrees(repo, "feat") == [(wt.path, wt.branch)]


def test_a_copy_of_a_repository_with_its_runtime_does_not_take_the_original_workspace(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "a")
    wt = _ensure(repo)
    Path(wt.path, "work.txt").write_text("a's\n")
    copy = str(tmp_path / "b")
    shutil.copytree(repo, copy, symlinks=True)  # .mahabharatha/runtime included: its record names repo a
    with pytest.raises(WorktreeError, match=f"workspace of another repository, {repo},") as exc:
        _ensure(copy)
    assert "never delete it by hand" in str(exc.value.hint) and "remove it" not in str(exc.value.hint)
    assert feature_worktrees(copy, "feat") == []
    assert Path(wt.path, "work.txt").read_text() == "a's\n"


def test_a_workspace_deleted_by_hand_and_made_again_by_a_sibling_is_the_siblings(tmp_path: Path) -> None:
    first = _repo(tmp_path / "a")
    wt = _ensure(first)
    shutil.rmtree(wt.path)  # by hand; a's record stays behind
    second = _repo(tmp_path / "b")
    theirs = _ensure(second)
    assert theirs.path == wt.path
    Path(theirs.path, "work.txt").write_text("b's\n")
    with pytest.raises(WorktreeError, match=f"workspace of another repository, {second},"):
        _ensure(first)
    assert Path(theirs.path, "work.txt").read_text() == "b's\n"
    assert feature_worktrees(first, "feat") == [] and feature_worktrees(second, "feat") == [(theirs.path, theirs.branch)]


def test_an_unclaimed_non_empty_directory_is_refused_and_an_empty_one_taken(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "a")
    path = Path(_wt(repo).path)
    path.mkdir(parents=True)
    (path / "stray.txt").write_text("x\n")
    with pytest.raises(WorktreeError, match="is not empty and is not a workspace of this run"):
        _ensure(repo)
    (path / "stray.txt").unlink()
    assert Path(_ensure(repo).path, ".git").is_file()
