"""Git inside the worker: check that ``/workspace`` is the worker's worktree, and the few git steps the loop needs.

The host does the setup: read-only overlay files are bind-mounted over the worktree's ``.git`` pointer and
over the metadata's ``commondir`` and ``gitdir`` (see DESIGN.md), so container git finds the shared
repository at ``/repo/.git`` while the host's own files are never rewritten. This module only verifies the
result (and says precisely what is wrong when it is not right), then commits and merges. Identity comes from
``GIT_AUTHOR_*``/``GIT_COMMITTER_*`` in the environment, never from the shared config.

Standard library only.
"""

from __future__ import annotations

import os
import subprocess

__all__ = ["GitSetupError", "git", "check_worktree", "commit_all", "merge_base_branch", "head", "park_failed_work"]


class GitSetupError(Exception):
    """Git in the worker does not see the expected worktree or branch."""


def git(workspace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"})
    try:
        proc = subprocess.run(
            # Worker commits are machine commits: no hooks, and no signing (a user's commit.gpgSign=true would
            # fail every commit, the key is not in the container).
            ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "commit.gpgSign=false", *args],
            cwd=workspace,
            capture_output=True,
            text=True,
            env=env,
        )
    except FileNotFoundError:
        if not os.path.isdir(workspace):
            raise GitSetupError(f"the workspace {workspace} does not exist") from None
        raise GitSetupError(
            "git is not installed in the worker image (not on PATH); every worker image needs python3 and git: "
            "install git in it, or rebuild it from .devcontainer/Dockerfile (`mahabharatha build-image`)"
        ) from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise GitSetupError(f"git {' '.join(args)} failed: {detail[-1] if detail else proc.returncode}")
    return proc


def check_worktree(workspace: str, branch: str, main_git_dir: str | None = None) -> str:
    """Verify git sees ``workspace`` as a worktree on ``branch`` (and, when given, its common dir is
    ``main_git_dir``). Returns the HEAD commit. Raises :class:`GitSetupError` naming the problem."""
    top = git(workspace, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise GitSetupError(
            f"git does not see {workspace} as a worktree ({top.stderr.strip() or 'rev-parse failed'}); "
            "are the overlay files mounted over .git and .git-worktree/commondir?"
        )
    if os.path.realpath(top.stdout.strip()) != os.path.realpath(workspace):
        raise GitSetupError(f"git's worktree is {top.stdout.strip()}, expected {workspace}")
    if main_git_dir:
        common = git(workspace, "rev-parse", "--path-format=absolute", "--git-common-dir").stdout.strip()
        if os.path.realpath(common) != os.path.realpath(main_git_dir):
            raise GitSetupError(f"git's common dir is {common}, expected {main_git_dir}")
    ref = git(workspace, "symbolic-ref", "-q", "HEAD", check=False).stdout.strip()
    if ref != f"refs/heads/{branch}":
        raise GitSetupError(f"{workspace} is on {ref or 'a detached HEAD'}, expected refs/heads/{branch}")
    return head(workspace)


def head(workspace: str) -> str:
    return git(workspace, "rev-parse", "HEAD").stdout.strip()


def commit_all(workspace: str, message: str) -> str | None:
    """Stage everything (the excludes file keeps mount points out) and commit. Returns the commit, or None
    when there was nothing to commit."""
    git(workspace, "add", "-A")
    if git(workspace, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return None
    git(workspace, "commit", "-q", "--no-verify", "-m", message)
    return head(workspace)


def park_failed_work(workspace: str, ref: str, message: str) -> str | None:
    """Commit a failed task's work onto ``ref`` (not the worker branch) and reset the worktree, so the work is
    kept for inspection but never merged. Returns the parked commit, or None when there was no change."""
    before = head(workspace)
    commit = commit_all(workspace, message)
    if commit is None:
        return None
    git(workspace, "update-ref", ref, commit)
    git(workspace, "reset", "-q", "--hard", before)
    return commit


def merge_base_branch(workspace: str, base_branch: str) -> None:
    """Bring the merged base into the worker branch (normally a fast-forward: base contains this branch).
    Nothing happens when the branch already contains the base."""
    if git(workspace, "merge-base", "--is-ancestor", base_branch, "HEAD", check=False).returncode == 0:
        return
    if git(workspace, "merge", "-q", "--ff-only", base_branch, check=False).returncode == 0:
        return
    proc = git(workspace, "merge", "-q", "--no-edit", "--no-verify", base_branch, check=False)
    if proc.returncode != 0:
        conflicts = git(workspace, "diff", "--name-only", "--diff-filter=U", check=False).stdout.split()
        git(workspace, "merge", "--abort", check=False)  # leave the worktree as it was, not mid-merge
        raise GitSetupError(
            f"merging {base_branch} into the worker branch conflicts in: {', '.join(conflicts) or '(unknown)'}"
        )
