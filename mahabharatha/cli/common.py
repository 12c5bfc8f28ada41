"""What several commands share: which repository and feature a command is about, the feature's state store,
and whether a run of it is in progress. (Kept apart so the command modules import it, not each other.)"""

from __future__ import annotations

import argparse
import fcntl
import os

from ..worker import state as S

__all__ = ["repo_feature", "state_store", "run_in_progress"]


def repo_feature(args: argparse.Namespace) -> tuple[str, str]:
    """The repository root (``--repo``) and feature (``--feature``, else ``.gsd/.current-feature``) a command
    is about, resolved exactly as the planner does (container labels and state paths carry them)."""
    from ..planning import find_repo_root, resolve_feature

    root = find_repo_root(getattr(args, "repo", "."))
    return str(root), resolve_feature(root, getattr(args, "feature", None) or None)


def state_store(repo: str, feature: str) -> S.StateStore:
    from ..core.plan import state_dir

    return S.StateStore(state_dir(repo), feature)


def run_in_progress(repo: str, feature: str) -> bool:
    """True while a ``kurukshetra`` holds the feature's orchestrator lock. Only that process (container mode:
    its log copiers; subprocess mode: its workers) writes the host log files, so following stops with it."""
    path = state_store(repo, feature).run_lock_path
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases our shared lock
    return False
