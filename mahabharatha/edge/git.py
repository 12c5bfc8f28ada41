"""Host-side git, hardened.

Containers can write to the repository's object store and to their worktrees, so every host-side git
command that touches what they wrote runs with hooks and fsmonitor disabled: a worker must not be able to
plant code that the host then executes. Use :func:`git` for all host git calls.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import WorktreeError

__all__ = ["git", "git_ok", "pack_objects", "HARDENING", "REPO_LOCATION_VARS"]

# -c options prepended to every host git command.
HARDENING = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "protocol.file.allow=user",
)


# Variables that point git at another repository, work tree, index or object store (`git rev-parse
# --local-env-vars`, without the config ones). Set in a user's shell or a git hook that runs mahabharatha, they
# would make every `git -C <repo>` act on that other repository instead.
REPO_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_GRAFT_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_NAMESPACE",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REPO_LOCATION_VARS}
    # Never let the user's global/system config inject hooks or pagers into our automation.
    env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "LC_ALL": "C"})
    return env


def git(repo: str | os.PathLike[str], *args: str, check: bool = True, input: str | None = None) -> str:
    """Run ``git -C repo <hardening> args`` and return stdout (stripped of the trailing newline).

    Raises :class:`WorktreeError` with git's own message on failure when ``check`` is true.
    """
    proc = _run(["git", "-C", str(repo), *HARDENING, *args], text=True, input=input)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise WorktreeError(f"git {' '.join(args)} failed in {Path(repo)}: {detail[-1] if detail else proc.returncode}")
    return proc.stdout.rstrip("\n")


def git_ok(repo: str | os.PathLike[str], *args: str) -> bool:
    """True when the git command succeeds (for existence checks such as ``rev-parse --verify``)."""
    return _run(["git", "-C", str(repo), *HARDENING, *args]).returncode == 0


def pack_objects(repo: str | os.PathLike[str], wants: Iterable[str], haves: Iterable[str] = ()) -> bytes:
    """A thin git pack of everything reachable from ``wants`` that is not reachable from ``haves`` (commits
    the receiver has): what a remote worker, which has no alternates, needs to check out a commit."""
    lines = [*wants, *(f"^{h}" for h in haves)]
    proc = _run(
        ["git", "-C", str(repo), *HARDENING, "pack-objects", "--revs", "--stdout", "--thin", "--delta-base-offset", "-q"],
        input=("\n".join(lines) + "\n").encode("ascii"),
    )
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise WorktreeError(f"git pack-objects failed in {Path(repo)}: {detail[-1] if detail else proc.returncode}")
    return bytes(proc.stdout)


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    try:
        return subprocess.run(argv, capture_output=True, env=_env(), **kwargs)
    except FileNotFoundError:  # the git binary itself (`-C repo` problems are git's own errors)
        raise WorktreeError("git is not installed on this machine (not on PATH)", hint="install git, then run again") from None
