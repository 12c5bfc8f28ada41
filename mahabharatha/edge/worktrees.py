"""Git worktrees and branches for workers, created idempotently and removed without losing work.

Every call goes through :func:`mahabharatha.edge.git.git` (hooks and fsmonitor off). Creating is safe to
repeat: an existing worktree is kept as it is (its uncommitted work included), the feature's base branch is
created from ``HEAD`` only when missing (the user's branches never move). Removing refuses a worktree with
uncommitted changes unless forced. The mount points Docker creates inside a worktree while a container runs
(``.git-worktree/``, ``.mahabharatha/``) are empty directories and never count as changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..core.model import Worktree
from ..core.plan import run_branch_prefix, worker_branch_prefix
from ..errors import WorktreeError
from .git import git, git_ok

__all__ = [
    "ensure_base_branch",
    "refuse_checked_out_run_branches",
    "ensure_worktree",
    "ensure_worktrees",
    "worktree_creator",
    "list_worktrees",
    "feature_worktrees",
    "uncommitted_changes",
    "remove_worktree",
    "prune",
]

# Directories created inside a worktree as bind-mount points for a container; never user work.
MOUNT_POINT_DIRS = (".git-worktree/", ".mahabharatha/state/")


def _same(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def ensure_base_branch(repo: str | os.PathLike[str], branch: str, *, start: str = "HEAD") -> str:
    """Create ``branch`` at ``start`` when it does not exist; return the commit it points to.

    An existing branch is left where it is (it may hold merged work of earlier levels).
    """
    ref = f"refs/heads/{branch}"
    if not git_ok(repo, "rev-parse", "--verify", "--quiet", ref):
        if not git_ok(repo, "rev-parse", "--verify", "--quiet", f"{start}^{{commit}}"):
            raise WorktreeError(
                f"Cannot create branch {branch} in {repo}: {start} has no commit",
                hint="commit something first, e.g. `git commit --allow-empty -m init`",
            )
        git(repo, "branch", branch, start)
    return git(repo, "rev-parse", ref)


def refuse_checked_out_run_branches(repo: str | os.PathLike[str], feature: str) -> None:
    """Refuse when the main checkout has one of the feature's run branches checked out.

    The orchestrator moves ``mahabharatha/<feature>/base`` with plumbing as levels merge; moving the branch a
    checkout stands on would leave its index and files behind the branch, so `git status` would show the run's
    work as staged deletions (and a commit would revert it).
    """
    current = git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip()
    prefix = f"refs/heads/{run_branch_prefix(feature)}"
    if current.startswith(prefix):
        branch = current.removeprefix("refs/heads/")
        raise WorktreeError(
            f"{repo} has {branch} checked out; the run moves the feature's branches as it merges levels, which "
            "would leave your checkout's files and index behind",
            hint="switch to your own branch first (e.g. `git switch main`), then run again",
        )


def list_worktrees(repo: str | os.PathLike[str]) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as dicts (keys: worktree, HEAD, branch, and flags like prunable)."""
    out = git(repo, "worktree", "list", "--porcelain")
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in out.splitlines():
        if not line.strip():
            if current:
                entries.append(current)
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key] = value
    if current:
        entries.append(current)
    return entries


def _registered(repo: str | os.PathLike[str], path: str) -> dict[str, str] | None:
    for entry in list_worktrees(repo):
        if _same(entry.get("worktree", ""), path):
            return entry
    return None


def _admin_dir(path: str) -> str:
    """The worktree's git metadata dir, read from its ``.git`` file (no subprocess), else asked from git."""
    dotgit = Path(path) / ".git"
    try:
        text = dotgit.read_text().strip()
    except OSError:
        text = ""
    if text.startswith("gitdir: "):
        return os.path.realpath(os.path.join(path, text[len("gitdir: "):]))
    return git(path, "rev-parse", "--absolute-git-dir")


def _other_repository(path: str) -> str | None:
    """The main checkout of another repository that ``path`` is a linked worktree of, or None."""
    try:
        text = (Path(path) / ".git").read_text().strip()
    except OSError:
        return None
    if not text.startswith("gitdir: "):
        return None
    admin = Path(os.path.realpath(os.path.join(path, text[len("gitdir: "):])))
    # <main>/.git/worktrees/<name>: the main checkout is three levels up.
    if admin.parent.name != "worktrees" or admin.parent.parent.name != ".git":
        return None
    return str(admin.parent.parent.parent)


def _admin_owner(admin_dir: str) -> str:
    """Who uses a worktree metadata dir: the worktree path recorded in its ``gitdir`` file, when readable."""
    try:
        dotgit = Path(admin_dir, "gitdir").read_text().strip()
    except OSError:
        return "another worktree"
    return f"worktree {os.path.dirname(dotgit) if dotgit.endswith('/.git') else dotgit}"


def _branches(repo: str | os.PathLike[str]) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/").splitlines())


def _ensure_one(
    repo: str | os.PathLike[str], wt: Worktree, registered: dict[str, dict[str, str]], branches: set[str]
) -> None:
    path = wt.path
    entry = registered.get(os.path.realpath(path))
    if entry is not None and not Path(path).exists():
        # Registered but its directory is gone (deleted by hand): forget it, then recreate below.
        prune(repo)
        entry = None
    if entry is None:
        if Path(path).exists() and any(Path(path).iterdir()):
            other = _other_repository(path)
            if other is not None:  # a sibling repository ran a feature of the same name: its work lives there
                raise WorktreeError(
                    f"Cannot create worktree {path} for worker {wt.worker_id}: it is a worktree of another "
                    f"repository, {other}, which shares the worktree directory {Path(path).parent.parent}",
                    hint=f"use another feature name here, or finish that run and `mahabharatha cleanup "
                    f"{Path(path).parent.name} --repo {other}`; never delete it by hand, it may hold work",
                )
            raise WorktreeError(
                f"Cannot create worktree {path} for worker {wt.worker_id}: the directory exists, is not empty "
                "and is not a git worktree of this repository",
                hint="move it away or remove it, then launch again",
            )
        if os.path.lexists(wt.admin_dir):
            raise WorktreeError(
                f"Cannot create worktree {path} for worker {wt.worker_id}: its git metadata dir {wt.admin_dir} "
                f"is taken by {_admin_owner(wt.admin_dir)}",
                hint="run `mahabharatha cleanup FEATURE` for the feature that owns it, or `git worktree prune` "
                "when that worktree was deleted by hand",
            )
        # git names a worktree's metadata dir after the directory it is added at: add it at a directory named
        # like the planned metadata dir, then move it to its planned path (the metadata dir keeps its name).
        add_at = str(Path(path).parent / os.path.basename(wt.admin_dir))
        if add_at != path and os.path.lexists(add_at):
            raise WorktreeError(
                f"Cannot create worktree {path} for worker {wt.worker_id}: {add_at} is in the way",
                hint="move it away or remove it, then launch again",
            )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if f"refs/heads/{wt.branch}" in branches:
            git(repo, "worktree", "add", add_at, wt.branch)
        else:
            git(repo, "worktree", "add", "-b", wt.branch, add_at, wt.base)
            branches.add(f"refs/heads/{wt.branch}")
        if add_at != path:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)  # an empty leftover: `worktree move` would move *into* an existing directory
            git(repo, "worktree", "move", add_at, path)
    else:
        branch = entry.get("branch", "")
        if branch != f"refs/heads/{wt.branch}":
            shown = branch.removeprefix("refs/heads/") or "a detached HEAD"
            raise WorktreeError(
                f"Worktree {path} for worker {wt.worker_id} is on {shown}, expected {wt.branch}",
                hint=f"commit its work, then `git -C {path} switch {wt.branch}` or `mahabharatha cleanup`",
            )
    actual = _admin_dir(path)
    if not _same(actual, wt.admin_dir):
        raise WorktreeError(
            f"Worktree {path} uses git metadata dir {actual}, but the plan mounts {wt.admin_dir}",
            hint="another worktree already uses that name; run `mahabharatha cleanup FEATURE` for the feature "
            "that owns it, or `git worktree list` to find it",
        )


def _registry(repo: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    return {os.path.realpath(e["worktree"]): e for e in list_worktrees(repo) if "worktree" in e}


def ensure_worktree(repo: str | os.PathLike[str], wt: Worktree) -> None:
    """Create worktree ``wt`` (and its branch from ``wt.base``) unless it already exists.

    An existing worktree is kept untouched; it must be on ``wt.branch`` and use ``wt.admin_dir`` as its git
    metadata directory (the containers mount that directory), otherwise :class:`WorktreeError` explains.
    """
    _ensure_one(repo, wt, _registry(repo), _branches(repo))


def worktree_creator(repo: str | os.PathLike[str], base_branch: str) -> Callable[[Worktree], None]:
    """Create the base branch now; return ``ensure(wt)`` for the worktrees, to be called one at a time.

    git is asked once for the existing worktrees and branches, not once per worker, and callers may start
    using worktree N (e.g. start its container) while N+1 is still being created.
    """
    ensure_base_branch(repo, base_branch)
    registered, branches = _registry(repo), _branches(repo)

    def ensure(wt: Worktree) -> None:
        _ensure_one(repo, wt, registered, branches)

    return ensure


def ensure_worktrees(repo: str | os.PathLike[str], base_branch: str, worktrees: Iterable[Worktree]) -> None:
    """The base branch, then every worktree (in order; each step idempotent)."""
    ensure = worktree_creator(repo, base_branch)
    for wt in worktrees:
        ensure(wt)


def feature_worktrees(repo: str | os.PathLike[str], feature: str) -> list[tuple[str, str]]:
    """(path, branch) of the feature's worker worktrees (branches ``mahabharatha/<feature>/worker-*``)."""
    prefix = f"refs/heads/{worker_branch_prefix(feature)}"
    return [
        (e["worktree"], e["branch"].removeprefix("refs/heads/"))
        for e in list_worktrees(repo)
        if e.get("branch", "").startswith(prefix)
    ]


def uncommitted_changes(path: str | os.PathLike[str]) -> list[str]:
    """``git status --porcelain`` lines of a worktree, ignoring container mount points."""
    out = git(path, "status", "--porcelain", "--untracked-files=all", "--ignore-submodules=none")
    changes = []
    for line in out.splitlines():
        name = line[3:].strip('"')
        if line.startswith("??") and (name + "/").startswith(MOUNT_POINT_DIRS):
            continue
        changes.append(line)
    return changes


def remove_worktree(repo: str | os.PathLike[str], path: str | os.PathLike[str], *, force: bool = False) -> bool:
    """Remove a worktree (its branch stays). Returns False when it did not exist.

    Refuses with :class:`WorktreeError` naming the changes when the worktree has uncommitted work, unless
    ``force``.
    """
    path = str(path)
    entry = _registered(repo, path)
    if entry is None:
        prune(repo)
        return False
    if Path(path).exists():
        changes = uncommitted_changes(path)
        if changes and not force:
            shown = ", ".join(c[3:] for c in changes[:5]) + (" …" if len(changes) > 5 else "")
            raise WorktreeError(
                f"Worktree {path} has uncommitted changes ({shown}); not removing it",
                hint="commit or copy the work, or pass --force to discard it",
            )
    # Clean (only empty mount-point dirs may remain, which plain `remove` counts as untracked) or forced.
    git(repo, "worktree", "remove", "--force", path)
    prune(repo)
    return True


def prune(repo: str | os.PathLike[str]) -> None:
    """Forget worktrees whose directories are gone."""
    git(repo, "worktree", "prune")
