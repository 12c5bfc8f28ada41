"""The project's error types.

Every error a user can cause is a :class:`MahabharathaError` whose ``str()`` is one line naming what went
wrong, where (file and field), and the fix. The CLI prints that line and exits non-zero; it never shows a
traceback for these. Messages must never contain a secret value (see :mod:`mahabharatha.core.secret`).
"""

from __future__ import annotations

import re

__all__ = [
    "MahabharathaError",
    "ConfigError",
    "AuthError",
    "GraphError",
    "WorktreeError",
    "LaunchError",
    "OrchestrationError",
    "FileAccessError",
]


class MahabharathaError(Exception):
    """Base class: a user-facing, one-line, actionable error. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        # Quoted tool output (git, the engine, a build) must not break the one line.
        message, hint = _one_line(self.message), _one_line(self.hint or "")
        return f"{message} ({hint})" if hint else message


def _one_line(text: str) -> str:
    if "\n" not in text and "\r" not in text:
        return text
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


class ConfigError(MahabharathaError):
    """Bad config file, environment override or CLI flag. Exit code 2, like a usage error."""

    exit_code = 2


class AuthError(MahabharathaError):
    """Credentials could not be read (never includes the credential itself)."""

    exit_code = 2


class GraphError(MahabharathaError):
    """The task graph is invalid (unknown dependency, cycle, level order, file ownership)."""

    exit_code = 2


class WorktreeError(MahabharathaError):
    """A git worktree or branch could not be created, or removing it would lose work."""


class LaunchError(MahabharathaError):
    """Containers could not be started, become ready, or their worker did not announce itself."""


class OrchestrationError(MahabharathaError):
    """A level could not be completed (merge conflict, failed or blocked tasks)."""


class FileAccessError(MahabharathaError):
    """A file could not be read, written or removed safely: not a regular file (a FIFO, a device, a directory),
    a symbolic link where none is followed, bigger than allowed, or not permitted. ``path`` and ``problem`` are
    kept so a caller can re-raise it as its own error type (e.g. a :class:`GraphError`) with the same words."""

    def __init__(self, path: str, problem: str, *, hint: str | None = None) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}", hint=hint)
