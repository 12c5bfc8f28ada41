"""Worker workspaces and branches: created idempotently, compared and removed without trusting their contents.

A workspace (``../.mahabharatha-worktrees/<feature>/worker-N``) is a plain directory, not a git worktree of
the user's repository: the worker's git lives in its private git directory, and the worker branch
``mahabharatha/<feature>/worker-N`` in the user's repository moves only when the orchestrator imports a
verified result. Everything in a workspace was written by an untrusted agent, so host code here never runs
git in it, never follows a symlink in it, and reads it with bounds: :func:`uncommitted_changes` compares its
files with the worker branch in Python (sizes first, contents hashed only up to a limit).

Creating is safe to repeat: an existing workspace is kept (its uncommitted work included), the base branch is
created from ``HEAD`` only when missing (the user's branches never move). Removing refuses a workspace with
uncommitted changes unless forced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from ..core.model import Worktree
from ..core.plan import DOTGIT_CONTENT, run_branch_prefix, runtime_dir, worker_branch_prefix
from ..errors import FileAccessError, WorktreeError
from .git import git, git_ok
from .safefs import read_regular, remove_tree_nofollow

__all__ = [
    "ensure_base_branch",
    "ensure_worker_branch",
    "refuse_checked_out_run_branches",
    "ensure_worktree",
    "ensure_worktrees",
    "worktree_creator",
    "feature_worktrees",
    "uncommitted_changes",
    "remove_worktree",
    "remove_tree",
    "write_small",
    "prune",
    "MOUNT_POINTS",
]

# Names at a workspace's top that are container mount points or ours, never user work.
MOUNT_POINTS = frozenset({".git", ".git-worktree", ".mahabharatha"})
_HASH_LIMIT = 64 << 20  # files larger than this are "changed" unless their size alone tells
_MAX_ENTRIES = 200_000
_MAX_IGNORE_BYTES = 1 << 20


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
        git(repo, "update-ref", ref, git(repo, "rev-parse", f"{start}^{{commit}}"), "")
    return git(repo, "rev-parse", ref)


def ensure_worker_branch(repo: str | os.PathLike[str], branch: str, base: str) -> str:
    """The worker branch's commit, creating the branch at ``base`` when missing."""
    ref = f"refs/heads/{branch}"
    tip = git(repo, "rev-parse", "--verify", "--quiet", ref, check=False)
    if tip:
        return tip
    commit = git(repo, "rev-parse", f"{base}^{{commit}}")
    git(repo, "update-ref", ref, commit, "")
    return commit


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


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def write_small(path: str, content: str) -> None:
    """Create or replace a small host file without following a symlink planted at ``path``."""
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise WorktreeError(f"{path} is not a regular file (a {_kind(st)})", hint="move it away, then launch again")
    tmp = f"{path}.mahabharatha-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.replace(tmp, path)


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "special file"


def _mkdir(path: str) -> None:
    """``mkdir -p`` that refuses a symlink or a non-directory in the way."""
    st = _lstat(path)
    if st is None:
        os.makedirs(path, exist_ok=True)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise WorktreeError(f"{path} is a {_kind(st)}, expected a directory", hint="move it away, then launch again")


def _dotgit_content(wt: Worktree, host_git: bool) -> str:
    return f"gitdir: {wt.git_dir}\n" if host_git else DOTGIT_CONTENT


# Which workspace directory a worker's runtime dir (host-only, never mounted into a container) belongs to: the
# repository, the workspace path and the directory's identity (device:inode) when it was taken. Workspaces of
# repositories side by side share one directory (``../.mahabharatha-worktrees/<feature>``), and a workspace's own
# files are the agent's to write: ownership is read from here, never from the workspace.
_WORKSPACE_MARKER = "workspace"


def _marker(runtime: str) -> tuple[str, str, str] | None:
    """(repository, workspace path, identity) recorded in ``runtime``, or None."""
    lines = _read_small(os.path.join(runtime, _WORKSPACE_MARKER)).splitlines()
    return (lines[0], lines[1], lines[2]) if len(lines) >= 3 else None


def _identity(path: str) -> str:
    st = _lstat(path)
    return f"{st.st_dev}:{st.st_ino}" if st is not None else ""


def _foreign_owner(repo: str | os.PathLike[str], path: str, runtime: str) -> str | None:
    """Another repository beside ``repo`` whose run took workspace ``path`` (its runtime dir for the same worker
    names it), unless our own claim is the one that matches the directory (a claim left behind when a workspace
    was deleted by hand does not count against the one who made the directory now there). None: ours or nobody's."""
    repo = os.fspath(repo)
    rel = os.path.relpath(runtime, repo)
    others: list[tuple[str, str]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(os.path.dirname(repo)):
            if entry.path == repo or not entry.is_dir(follow_symlinks=False):
                continue
            claim = _marker(os.path.join(entry.path, rel))
            if claim is not None and claim[0] == entry.path and claim[1] == path:
                others.append((entry.path, claim[2]))
    if not others:
        return None
    ident = _identity(path)
    mine = _marker(runtime)
    if mine is not None and mine[:2] == (repo, path) and mine[2] == ident:
        return None
    return next((other for other, theirs in others if theirs == ident), others[0][0])


def _ensure_one(repo: str | os.PathLike[str], wt: Worktree, host_git: bool) -> None:
    path = wt.path
    st = _lstat(path)
    dotgit = os.path.join(path, ".git")
    runtime = os.path.dirname(wt.git_dir)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise WorktreeError(
                f"Cannot create workspace {path} for worker {wt.worker_id}: it is a {_kind(st)}",
                hint="move it away or remove it, then launch again",
            )
        other = _foreign_owner(repo, path, runtime)
        if other is not None:  # a sibling repository ran a feature of the same name: its work lives there
            feature = Path(path).parent.name
            raise WorktreeError(
                f"Cannot create workspace {path} for worker {wt.worker_id}: it is the workspace of another "
                f"repository, {other}, which shares the workspace directory {Path(path).parent.parent}",
                hint=f"use another feature name here, or finish that run and `mahabharatha cleanup {feature} --repo "
                f"{other}`; never delete it by hand, it may hold work",
            )
        mine = _marker(runtime)
        ours = mine is not None and mine[:2] == (os.fspath(repo), path)
        dst = _lstat(dotgit)
        if dst is not None and stat.S_ISDIR(dst.st_mode):
            raise WorktreeError(
                f"Cannot create workspace {path} for worker {wt.worker_id}: it holds a git repository of its own",
                hint="move it away or remove it, then launch again",
            )
        if dst is not None and stat.S_ISREG(dst.st_mode):
            text = _read_small(dotgit)
            if text.startswith("gitdir: ") and "/.git/worktrees/" in text:
                raise WorktreeError(
                    f"{path} is a git worktree made by an older mahabharatha (workers now keep their git private)",
                    hint=f"commit or copy its work, then `mahabharatha cleanup {Path(path).parent.name}`, then run again",
                )
        if not ours and any(os.scandir(path)):
            raise WorktreeError(
                f"Cannot create workspace {path} for worker {wt.worker_id}: the directory exists, is not empty "
                "and is not a workspace of this run",
                hint="move it away or remove it, then launch again",
            )
    ensure_worker_branch(repo, wt.branch, wt.base)
    _mkdir(str(Path(path).parent))
    _mkdir(path)
    _mkdir(wt.git_dir)
    write_small(os.path.join(runtime, _WORKSPACE_MARKER), f"{os.fspath(repo)}\n{path}\n{_identity(path)}\n")
    # The mount points of the container's overlays, made by us (as the caller), so Docker does not create them
    # as root in a directory the caller must later be able to remove.
    write_small(dotgit, _dotgit_content(wt, host_git))
    if not host_git:
        _mkdir(os.path.join(path, ".git-worktree"))


def _read_small(path: str, limit: int = 4096) -> str:
    """A small regular file's text ("" when missing, a link, not a regular file or too big)."""
    try:
        data = read_regular(path, limit=limit, what="workspace file", follow_symlinks=False, missing_ok=True)
    except (FileAccessError, OSError):
        return ""
    return (data or b"").decode("utf-8", "replace")


def ensure_worktree(repo: str | os.PathLike[str], wt: Worktree, *, host_git: bool = False) -> None:
    """Create workspace ``wt`` (and its branch from ``wt.base``) unless it exists; an existing one is kept.

    ``host_git``: the worker runs on the host (subprocess mode), so the workspace's ``.git`` names the host
    path of its private git directory instead of the container's.
    """
    _ensure_one(repo, wt, host_git)


def worktree_creator(repo: str | os.PathLike[str], base_branch: str, *, host_git: bool = False) -> Callable[[Worktree], None]:
    """Create the base branch now; return ``ensure(wt)`` for the workspaces, to be called one at a time."""
    ensure_base_branch(repo, base_branch)

    def ensure(wt: Worktree) -> None:
        _ensure_one(repo, wt, host_git)

    return ensure


def ensure_worktrees(repo: str | os.PathLike[str], base_branch: str, worktrees: Iterable[Worktree], *, host_git: bool = False) -> None:
    """The base branch, then every workspace (in order; each step idempotent)."""
    ensure = worktree_creator(repo, base_branch, host_git=host_git)
    for wt in worktrees:
        ensure(wt)


def feature_worktrees(repo: str | os.PathLike[str], feature: str) -> list[tuple[str, str]]:
    """(path, branch) of the feature's worker workspaces that exist (``worker-N`` beside the repository), except
    those a sibling repository's run of a feature of the same name took (they share the directory)."""
    root = Path(os.fspath(repo)).parent / ".mahabharatha-worktrees" / feature
    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            suffix = entry.name.removeprefix("worker-")
            if entry.name.startswith("worker-") and suffix.isdigit() and entry.is_dir(follow_symlinks=False):
                if _foreign_owner(repo, entry.path, runtime_dir(os.fspath(repo), feature, int(suffix))) is None:
                    out.append((entry.path, f"{worker_branch_prefix(feature)}{suffix}"))
    return out


def _blob_id(data_or_path: bytes | str, size: int) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode())
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
        return h.hexdigest()
    fd = os.open(data_or_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return ""
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_entries(repo: str | os.PathLike[str], commit: str) -> dict[str, tuple[str, str, int]]:
    """path -> (mode, blob id, size) of every file in ``commit``."""
    out = git(repo, "ls-tree", "-r", "-z", "--long", "--full-tree", commit)
    entries: dict[str, tuple[str, str, int]] = {}
    for record in out.split("\0"):
        if not record:
            continue
        meta, _, name = record.partition("\t")
        mode, kind, sha, size = meta.split()
        if kind == "blob":
            entries[name] = (mode, sha, int(size) if size.isdigit() else -1)
    return entries


def _walk(top: str) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """Every non-directory entry under ``top`` as (relative path, lstat), never following symlinks, skipping
    the mount points at the top. Second value: False when the walk was cut at the entry limit."""
    found: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(top, rel) if rel else top))
        except OSError:
            continue
        for entry in entries:
            if not rel and entry.name in MOUNT_POINTS:
                continue
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name == ".git":
                    found.append((sub, st))  # a nested repository: never user work to drop silently
                else:
                    stack.append(sub)
                continue
            found.append((sub, st))
            if len(found) > _MAX_ENTRIES:
                return found, False
    return found, True


def _ignored(repo: str | os.PathLike[str], top: str, paths: list[str], found: list[tuple[str, os.stat_result]]) -> set[str]:
    """Which of ``paths`` the repository's ignore rules ignore. Only when every ``.gitignore`` in the workspace
    is a small regular file (git reads them whole); otherwise nothing counts as ignored."""
    if not paths:
        return set()
    for rel, st in found:
        if os.path.basename(rel) == ".gitignore" and (not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_IGNORE_BYTES):
            return set()
    git_dir = git(repo, "rev-parse", "--absolute-git-dir")
    out = git(
        top, f"--git-dir={git_dir}", f"--work-tree={top}", "check-ignore", "--no-index", "-z", "--stdin",
        check=False, input="\0".join(paths) + "\0",
    )
    return {p for p in out.split("\0") if p}


def uncommitted_changes(repo: str | os.PathLike[str], path: str | os.PathLike[str], commit: str) -> list[str]:
    """Differences between workspace ``path`` and ``commit`` (the worker branch), as ``git status``-like lines
    (`` M file``, `` D file``, ``?? file``). Never runs git in the workspace, never follows its symlinks, reads
    no file larger than 64 MiB (a larger file is changed unless its size differs anyway)."""
    top = os.fspath(path)
    found, complete = _walk(top)
    if not found and complete:
        return []  # never populated (or emptied): nothing in it could be lost
    tree = _tree_entries(repo, commit)
    changes: list[str] = []
    untracked: list[str] = []
    seen: set[str] = set()
    for rel, st in found:
        seen.add(rel)
        entry = tree.get(rel)
        if entry is None:
            untracked.append(rel)
            continue
        mode, sha, size = entry
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(os.path.join(top, rel)))
            if mode != "120000" or _blob_id(target, len(target)) != sha:
                changes.append(f" M {rel}")
            continue
        if not stat.S_ISREG(st.st_mode) or mode not in ("100644", "100755"):
            changes.append(f" M {rel}")
            continue
        if (mode == "100755") != bool(st.st_mode & 0o100) or st.st_size != size or st.st_size > _HASH_LIMIT:
            changes.append(f" M {rel}")
            continue
        try:
            same = _blob_id(os.path.join(top, rel), st.st_size) == sha
        except OSError:
            same = False
        if not same:
            changes.append(f" M {rel}")
    if complete:
        changes.extend(f" D {rel}" for rel in sorted(set(tree) - seen))
    else:
        changes.append("?? (more than 200000 files)")
    ignored = _ignored(repo, top, untracked, found)
    changes.extend(f"?? {rel}" for rel in sorted(untracked) if rel not in ignored)
    return changes


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a directory tree a container wrote, never following its symlinks; read-only directories are made
    writable first (:func:`~mahabharatha.edge.safefs.remove_tree_nofollow`). Raises :class:`WorktreeError`
    naming what could not be removed (e.g. files of another user)."""
    try:
        remove_tree_nofollow(path)
    except FileAccessError as exc:
        raise WorktreeError(exc.message, hint=exc.hint) from None


def remove_worktree(
    repo: str | os.PathLike[str], path: str | os.PathLike[str], *, branch: str, force: bool = False,
    git_dir: str | None = None,
) -> bool:
    """Remove a workspace (and the worker's private git directory); its branch stays. False when it did not
    exist. Refuses with :class:`WorktreeError` naming the changes when it differs from its branch, unless
    ``force``."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        if git_dir:
            remove_tree(git_dir)
        return False
    if not force:
        tip = git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}", check=False)
        changes = uncommitted_changes(repo, path, tip) if tip else ["?? (its branch is gone)"]
        if changes:
            shown = ", ".join(c[3:] for c in changes[:5]) + (" …" if len(changes) > 5 else "")
            raise WorktreeError(
                f"Workspace {path} has uncommitted changes ({shown}); not removing it",
                hint="commit or copy the work, or pass --force to discard it",
            )
    remove_tree(path)
    if git_dir:
        remove_tree(git_dir)
    return True


def prune(repo: str | os.PathLike[str]) -> None:
    """Forget git worktrees (made by older versions) whose directories are gone."""
    git(repo, "worktree", "prune", check=False)
