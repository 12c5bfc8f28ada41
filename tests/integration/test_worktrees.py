"""Worktrees against real git (no Docker): idempotent creation, base branch never moved, no lost work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec
import pytest

from mahabharatha.core.model import Worktree
from mahabharatha.edge import worktrees
from mahabharatha.errors import WorktreeError


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hello\n")
    _git(r, "add", ".")
    _git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return r


def _wt(repo: Path, n: int, feature: str = "feat") -> Worktree:
    root = repo.resolve()
    return Worktree(
        worker_id=n,
        path=str(root.parent / ".mahabharatha-worktrees" / feature / f"worker-{n}"),
        branch=f"mahabharatha/{feature}/worker-{n}",
        base=f"mahabharatha/{feature}/base",
        admin_dir=str(root / ".git" / "worktrees" / f"{feature}-worker-{n}"),
    )


def test_create_is_idempotent_and_keeps_work(repo: Path) -> None:
    wts = [_wt(repo, 0), _wt(repo, 1)]
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", wts)
    (Path(wts[0].path) / "work.txt").write_text("uncommitted\n")
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", wts)  # again: nothing destroyed
    assert (Path(wts[0].path) / "work.txt").read_text() == "uncommitted\n"
    assert _git(Path(wts[1].path), "branch", "--show-current") == "mahabharatha/feat/worker-1"
    assert sorted(p for p, _ in worktrees.feature_worktrees(repo, "feat")) == sorted(w.path for w in wts)


def test_existing_base_branch_never_moves(repo: Path) -> None:
    first = _git(repo, "rev-parse", "HEAD")
    _git(repo, "branch", "mahabharatha/feat/base")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "later")
    assert worktrees.ensure_base_branch(repo, "mahabharatha/feat/base") == first
    assert _git(repo, "branch", "--show-current") == "main"


def test_two_features_worktrees_coexist(repo: Path) -> None:
    # git's metadata dirs are one namespace per repository: worker-0 of two features must not share one.
    worktrees.ensure_worktrees(repo, "mahabharatha/other/base", [_wt(repo, 0, "other")])
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [_wt(repo, 0)])
    for feature in ("other", "feat"):
        wt = _wt(repo, 0, feature)
        assert _git(Path(wt.path), "rev-parse", "--absolute-git-dir") == wt.admin_dir
        assert _git(Path(wt.path), "branch", "--show-current") == wt.branch
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [_wt(repo, 0)])  # idempotent


def test_admin_dir_taken_is_a_clear_error_before_anything_is_created(repo: Path) -> None:
    taken = _wt(repo, 0, "other")
    worktrees.ensure_worktrees(repo, "mahabharatha/other/base", [taken])
    ours = msgspec.structs.replace(_wt(repo, 0), admin_dir=taken.admin_dir)
    with pytest.raises(WorktreeError, match=f"metadata dir .*other-worker-0 is taken by worktree {taken.path}"):
        worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [ours])
    assert not Path(ours.path).exists()


def test_remove_refuses_dirty_unless_forced_and_ignores_mount_points(repo: Path) -> None:
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    path = Path(wt.path)
    (path / ".git-worktree").mkdir()  # what Docker leaves behind as mount points
    (path / ".mahabharatha" / "state").mkdir(parents=True)
    (path / "README.md").write_text("changed\n")
    with pytest.raises(WorktreeError, match="uncommitted changes .*README.md"):
        worktrees.remove_worktree(repo, wt.path)
    assert path.exists()
    _git(path, "checkout", "README.md")
    assert worktrees.remove_worktree(repo, wt.path) is True
    assert not path.exists()
    assert worktrees.remove_worktree(repo, wt.path) is False
    # The branch (and any commits on it) stays.
    assert _git(repo, "rev-parse", "--verify", "mahabharatha/feat/worker-0")


def test_forced_remove_discards(repo: Path) -> None:
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    (Path(wt.path) / "new.txt").write_text("x")
    assert worktrees.remove_worktree(repo, wt.path, force=True)
    assert not os.path.exists(wt.path)


def test_deleted_worktree_dir_is_recreated(repo: Path) -> None:
    import shutil

    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    shutil.rmtree(wt.path)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    assert (Path(wt.path) / "README.md").exists()
