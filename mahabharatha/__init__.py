"""mahabharatha: parallel coding-agent workers in Docker containers, one git worktree each.

The Python API is the CLI's two steps: :func:`plan` computes an immutable :class:`LaunchPlan` (reads the
config and the task graph, validates both; no Docker), :func:`execute` runs the feature it describes (run
lock, preflight, workers, levels, merges, exit policy, cleanup) and returns a :class:`RunResult`, reporting
typed events (:mod:`mahabharatha.events`) on the way. :class:`Run` is the same as a context manager and an
iterator of events. :func:`start_fleet` only starts the workers, without an orchestrator. Heavy modules are
imported lazily so that planning stays fast and needs no Docker SDK import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "plan",
    "execute",
    "Run",
    "RunResult",
    "start_fleet",
    "orchestrate",
    "load_graph",
    "LaunchPlan",
    "WorkerSpec",
    "Secret",
    "MahabharathaError",
    "ConfigError",
    "LaunchError",
    "__version__",
]

_LAZY = {
    "plan": "mahabharatha.planning",
    "execute": "mahabharatha.edge.orchestrator",
    "Run": "mahabharatha.edge.orchestrator",
    "RunResult": "mahabharatha.edge.orchestrator",
    "start_fleet": "mahabharatha.edge.executor",
    "orchestrate": "mahabharatha.edge.orchestrator",
    "load_graph": "mahabharatha.core.graph",
    "LaunchPlan": "mahabharatha.core.model",
    "WorkerSpec": "mahabharatha.core.model",
    "Secret": "mahabharatha.core.secret",
    "MahabharathaError": "mahabharatha.errors",
    "ConfigError": "mahabharatha.errors",
    "LaunchError": "mahabharatha.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from .core.model import LaunchPlan, WorkerSpec
    from .core.secret import Secret
    from .core.graph import load_graph
    from .edge.executor import start_fleet
    from .edge.orchestrator import Run, RunResult, execute, orchestrate
    from .errors import ConfigError, LaunchError, MahabharathaError
    from .planning import plan


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mahabharatha' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
