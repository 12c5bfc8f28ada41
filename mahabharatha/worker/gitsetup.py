"""Git inside the worker: a private repository for the workspace, and the steps the loop needs.

The worker never writes the user's repository. Its git directory is private (``/workspace/.git-worktree``
in a container: its own objects, index and refs), with the user's object store (``/repo/.git/objects``,
mounted read-only) as its *alternates*, so nothing is copied and every commit of the run is readable. The
workspace's ``.git`` file (mounted read-only) points at that directory, so an agent's own ``git status``
works as usual. A task's result leaves as a git bundle the orchestrator verifies and imports.

Every call passes ``GIT_DIR``/``GIT_WORK_TREE`` explicitly and disables hooks, fsmonitor and signing: the
private config is writable by the agent, and worker commits are machine commits. Identity comes from
``GIT_AUTHOR_*``/``GIT_COMMITTER_*`` in the environment.

Standard library only.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile

from . import protocol as P

__all__ = ["GitSetupError", "TooBig", "Repo"]

_HARDENING = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false",
)  # (GIT_WORK_TREE in the environment beats a planted core.worktree)
EXCLUDES = "/.git-worktree/\n/.mahabharatha/\n"


class GitSetupError(Exception):
    """Git in the worker cannot do what the loop needs (one line, git's own reason)."""


class TooBig(GitSetupError):
    """A file of the work tree is too big to be part of a task's result."""


class Repo:
    """The worker's private repository: ``git_dir`` for the work tree ``workspace``."""

    def __init__(self, workspace: str, git_dir: str, branch: str, alternates: str | None) -> None:
        self.workspace = workspace
        self.git_dir = git_dir
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self.alternates = alternates
        self.clean_at: str | None = None  # the commit branch, index and work tree are known to equal (no git asked)

    def git(self, *args: str, check: bool = True, input: str | None = None, bare: bool = False) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"})
        if bare:
            env.pop("GIT_DIR", None)
            env.pop("GIT_WORK_TREE", None)
        else:
            env.update({"GIT_DIR": self.git_dir, "GIT_WORK_TREE": self.workspace})
        try:
            proc = subprocess.run(
                ["git", *_HARDENING, *args], cwd=self.workspace, capture_output=True, text=True, env=env, input=input
            )
        except FileNotFoundError:
            if not os.path.isdir(self.workspace):
                raise GitSetupError(f"the workspace {self.workspace} does not exist") from None
            raise GitSetupError(
                "git is not installed in the worker image (not on PATH); every worker image needs python3 and "
                "git: install git in it, or rebuild it from .devcontainer/Dockerfile (`mahabharatha build-image`)"
            ) from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise GitSetupError(f"git {' '.join(args[:3])} failed: {detail[-1] if detail else proc.returncode}")
        return proc

    # -- setup --------------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the private repository when missing; (re)write what the loop relies on every time (the agent
        may have changed it): alternates, excludes, HEAD on the worker branch, a non-bare config."""
        if not os.path.isdir(self.workspace):
            raise GitSetupError(f"the workspace {self.workspace} does not exist")
        os.makedirs(self.git_dir, exist_ok=True)
        if not os.path.isfile(os.path.join(self.git_dir, "HEAD")):
            self.git("init", "-q", "--bare", self.git_dir, bare=True)
        self.git("config", "core.bare", "false")
        for sub in ("objects/info", "info"):
            os.makedirs(os.path.join(self.git_dir, sub), exist_ok=True)
        if self.alternates:
            _write(os.path.join(self.git_dir, "objects", "info", "alternates"), self.alternates + "\n")
        _write(os.path.join(self.git_dir, "info", "exclude"), EXCLUDES)
        self.git("symbolic-ref", "HEAD", self.ref)

    def receive(self, pack: bytes) -> None:
        """Store the objects of a git pack from the orchestrator (remote transport: the history a task starts
        from arrives this way, there are no alternates). A thin pack's bases must be here already."""
        env = {**os.environ, "GIT_DIR": self.git_dir, "LC_ALL": "C"}
        proc = subprocess.run(
            ["git", *_HARDENING, "index-pack", "--stdin", "--fix-thin"], input=pack, capture_output=True,
            env=env, cwd=self.git_dir,
        )
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise GitSetupError(f"git index-pack of the orchestrator's pack failed: {detail[-1] if detail else proc.returncode}")

    def has(self, commit: str) -> bool:
        return self.git("cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0

    # -- states of the work tree --------------------------------------------------------------------------
    def oversized(self) -> list[tuple[str, int]]:
        """Changed or new files (not ignored) over the limit of a file in a task's result, by size alone."""
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames").stdout
        big = []
        for record in out.split("\0"):
            path = record[3:]
            if len(record) < 4:
                continue
            try:
                st = os.lstat(os.path.join(self.workspace, path))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size > P.MAX_RESULT_FILE_BYTES:
                big.append((path, st.st_size))
        return big

    def drop_oversized(self) -> list[str]:
        """Delete the files :meth:`oversized` names (they can never be part of a result); their paths."""
        dropped = []
        for path, _size in self.oversized():
            try:
                os.unlink(os.path.join(self.workspace, path))
                dropped.append(path)
            except OSError:
                pass
        return dropped

    def snapshot(self, parent: str, message: str) -> str | None:
        """A commit of the whole work tree (untracked files included, ignored ones not) on top of ``parent``,
        or None when the tree equals ``parent``'s. Nothing is checked out or moved. Raises :class:`TooBig`
        (before hashing anything) when a file is over the limit of a task's result."""
        big = self.oversized()
        if big:
            path, size = big[0]
            raise TooBig(
                f"{path} is {size >> 20} MiB, over the limit of {P.MAX_RESULT_FILE_BYTES >> 20} MiB for a file of a "
                "task's result (keep it out of the workspace or list it in .gitignore)"
            )
        self.clean_at = None  # from here on the work tree may differ from the branch
        self.git("add", "-A")
        tree = self.git("write-tree").stdout.strip()
        if tree == self.git("rev-parse", f"{parent}^{{tree}}").stdout.strip():
            return None
        return self.git("commit-tree", tree, "-p", parent, "-m", message).stdout.strip()

    def checkout(self, commit: str, *, known_clean: bool = False) -> None:
        """Make the branch, index and work tree ``commit`` (files the commit does not track and the index did
        not know stay, as with ``git reset --hard``). ``known_clean``: they are known to equal it already (the
        work tree was just committed as ``commit``), so only the branch moves."""
        if known_clean:
            self.git("update-ref", self.ref, commit)
        elif self.clean_at != commit:
            self.git("update-ref", self.ref, commit)
            self.git("reset", "-q", "--hard", commit)
            # Untracked files left by a failed task go too (its work was kept on a ref first); ignored ones stay.
            self.git("clean", "-q", "-f", "-d")
        self.clean_at = commit

    def apply(self, commit: str) -> bool:
        """Put ``commit``'s changes (against its parent) into the work tree, uncommitted; False when they do
        not apply (nothing is changed then)."""
        if not self.has(commit):
            return False
        self.clean_at = None
        if self.git("cherry-pick", "--no-commit", commit, check=False).returncode == 0:
            return True
        self.git("cherry-pick", "--abort", check=False)
        self.git("reset", "-q", "--hard", "HEAD", check=False)
        return False

    def bundle(self, ref: str, tip: str, start: str) -> bytes:
        """A bundle of ``ref`` = ``tip`` holding the commits since ``start`` (which the orchestrator has)."""
        self.git("update-ref", ref, tip)
        fd, path = tempfile.mkstemp(prefix="mahabharatha-", suffix=".bundle")
        os.close(fd)
        try:
            self.git("bundle", "create", "-q", path, ref, f"^{start}")
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)


def _write(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (a symlink planted there is replaced, not followed)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
