"""Workspaces against real git (no Docker): idempotent creation, base branch never moved, no lost work, and
a workspace's contents (written by an untrusted agent) never followed, executed or read without bound."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from mahabharatha.core.model import Worktree
from mahabharatha.core.plan import DOTGIT_CONTENT
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
    (r / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(r / "run.sh", 0o755)
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
        git_dir=str(root / ".mahabharatha" / "runtime" / feature / f"worker-{n}" / "git"),
    )


def _populate(repo: Path, wt: Worktree) -> None:
    """What a worker does first: check its branch out into the workspace (here with host git, for the test)."""
    for line in _git(repo, "ls-tree", "-r", "--name-only", wt.branch).splitlines():
        target = Path(wt.path) / line
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(repo), "show", f"{wt.branch}:{line}"], capture_output=True, check=True).stdout)
    os.chmod(Path(wt.path) / "run.sh", 0o755)


def _tip(repo: Path, wt: Worktree) -> str:
    return _git(repo, "rev-parse", wt.branch)


def test_create_is_idempotent_and_keeps_work(repo: Path) -> None:
    wts = [_wt(repo, 0), _wt(repo, 1)]
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", wts)
    (Path(wts[0].path) / "work.txt").write_text("uncommitted\n")
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", wts)  # again: nothing destroyed
    assert (Path(wts[0].path) / "work.txt").read_text() == "uncommitted\n"
    for wt in wts:
        assert _tip(repo, wt) == _git(repo, "rev-parse", "main")  # the branch starts at the base
        assert (Path(wt.path) / ".git").read_text() == DOTGIT_CONTENT  # the overlay's mount point, ours
        assert (Path(wt.path) / ".git-worktree").is_dir() and Path(wt.git_dir).is_dir()
    assert sorted(p for p, _ in worktrees.feature_worktrees(repo, "feat")) == sorted(w.path for w in wts)
    # Nothing was registered in the user's repository: no .git/worktrees, only the run's branches.
    assert not (repo / ".git" / "worktrees").exists()
    assert _git(repo, "branch", "--show-current") == "main"


def test_existing_base_branch_never_moves(repo: Path) -> None:
    first = _git(repo, "rev-parse", "HEAD")
    _git(repo, "branch", "mahabharatha/feat/base")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "later")
    assert worktrees.ensure_base_branch(repo, "mahabharatha/feat/base") == first
    assert _git(repo, "branch", "--show-current") == "main"


def test_two_features_workspaces_coexist(repo: Path) -> None:
    worktrees.ensure_worktrees(repo, "mahabharatha/other/base", [_wt(repo, 0, "other")])
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [_wt(repo, 0)])
    for feature in ("other", "feat"):
        wt = _wt(repo, 0, feature)
        assert Path(wt.path).is_dir() and Path(wt.git_dir).is_dir()
    assert _wt(repo, 0, "other").git_dir != _wt(repo, 0).git_dir
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [_wt(repo, 0)])  # idempotent


def test_a_directory_in_the_way_is_a_clear_error(repo: Path) -> None:
    wt = _wt(repo, 0)
    Path(wt.path).mkdir(parents=True)
    (Path(wt.path) / "something.txt").write_text("not ours\n")
    with pytest.raises(WorktreeError, match="exists, is not empty and is not a workspace of this run"):
        worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    os.unlink(Path(wt.path) / "something.txt")
    os.rmdir(wt.path)
    os.symlink("/etc", wt.path)
    with pytest.raises(WorktreeError, match="it is a symlink"):
        worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])


def test_a_symlink_planted_at_a_mount_point_is_never_written_through(repo: Path, tmp_path: Path) -> None:
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.unlink(Path(wt.path) / ".git")
    os.symlink(victim, Path(wt.path) / ".git")
    with pytest.raises(WorktreeError, match=r"\.git is not a regular file \(a symlink\)"):
        worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    assert victim.read_text() == "precious\n"


def test_remove_refuses_changed_unless_forced_and_ignores_mount_points(repo: Path) -> None:
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    _populate(repo, wt)
    path = Path(wt.path)
    (path / ".mahabharatha" / "state").mkdir(parents=True)  # a mount point
    assert worktrees.uncommitted_changes(repo, wt.path, _tip(repo, wt)) == []
    (path / "README.md").write_text("changed\n")
    with pytest.raises(WorktreeError, match="uncommitted changes .*README.md"):
        worktrees.remove_worktree(repo, wt.path, branch=wt.branch, git_dir=wt.git_dir)
    assert path.exists()
    (path / "README.md").write_text("hello\n")
    assert worktrees.remove_worktree(repo, wt.path, branch=wt.branch, git_dir=wt.git_dir) is True
    assert not path.exists() and not Path(wt.git_dir).exists()
    assert worktrees.remove_worktree(repo, wt.path, branch=wt.branch) is False
    # The branch (and any commits on it) stays.
    assert _git(repo, "rev-parse", "--verify", "mahabharatha/feat/worker-0")


def test_changes_are_seen_as_git_would_name_them(repo: Path) -> None:
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    _populate(repo, wt)
    path = Path(wt.path)
    (repo / ".gitignore").write_text("*.log\n")
    (path / ".gitignore").write_text("*.log\n")
    (path / "build.log").write_text("ignored\n")
    os.chmod(path / "run.sh", 0o644)  # mode change
    (path / "new.txt").write_text("new\n")
    os.unlink(path / "README.md")
    changes = worktrees.uncommitted_changes(repo, wt.path, _tip(repo, wt))
    assert changes == [" M run.sh", " D README.md", "?? .gitignore", "?? new.txt"]


def test_hostile_contents_are_never_followed_or_read_without_bound(repo: Path, tmp_path: Path) -> None:
    """Symlinks to host paths, a FIFO, a 10 GB sparse file and a .gitignore symlinked to /dev/zero: the check
    answers quickly, follows nothing and reads nothing big."""
    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    _populate(repo, wt)
    path = Path(wt.path)
    os.unlink(path / "README.md")
    os.symlink("/etc/passwd", path / "README.md")  # a tracked file replaced by a link to a host file
    os.symlink("/", path / "root-link")
    os.mkfifo(path / "fifo")
    with open(path / "run.sh", "r+b") as fh:  # the same size on disk as tracked? no: 10 GB, sparse
        fh.truncate(10 << 30)
    os.symlink("/dev/zero", path / ".gitignore")
    started = time.monotonic()
    changes = worktrees.uncommitted_changes(repo, wt.path, _tip(repo, wt))
    assert time.monotonic() - started < 10
    assert " M README.md" in changes and " M run.sh" in changes
    assert {"?? root-link", "?? fifo", "?? .gitignore"} <= set(changes)
    # Removing it removes the links, never what they point at.
    assert worktrees.remove_worktree(repo, wt.path, branch=wt.branch, force=True)
    assert Path("/etc/passwd").exists()


def test_remove_tree_clears_read_only_directories(tmp_path: Path) -> None:
    top = tmp_path / "ws"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").write_text("x")
    os.chmod(top / "a" / "b", 0o500)
    os.chmod(top / "a", 0o500)
    worktrees.remove_tree(top)
    assert not top.exists()


def test_deleted_workspace_dir_is_recreated(repo: Path) -> None:
    import shutil

    wt = _wt(repo, 0)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    shutil.rmtree(wt.path)
    worktrees.ensure_worktrees(repo, "mahabharatha/feat/base", [wt])
    assert (Path(wt.path) / ".git").read_text() == DOTGIT_CONTENT
