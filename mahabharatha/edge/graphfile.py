"""Reading the feature's task graph from disk: bounded, regular files only, every problem one GraphError.

:func:`read_task_graph` is the one place the host reads ``.gsd/specs/<feature>/task-graph.json``. It reads
through :func:`mahabharatha.edge.safefs.read_regular` (a FIFO, a device, a directory or a file over
:data:`GRAPH_LIMIT` is refused before or instead of being read), insists on UTF-8, and hands the bytes to the
pure :func:`mahabharatha.core.graph.load_graph` (JSON, types, the cross-task rules, nesting depth).
"""

from __future__ import annotations

from ..core.graph import TaskGraph, graph_path, load_graph
from ..errors import FileAccessError, GraphError
from .safefs import read_regular

__all__ = ["GRAPH_LIMIT", "read_task_graph"]

GRAPH_LIMIT = 16 << 20  # 16 MiB: a graph of thousands of tasks is a few hundred KiB


def read_task_graph(repo: str, feature: str) -> TaskGraph:
    """Load and validate ``.gsd/specs/<feature>/task-graph.json`` of ``repo``.

    Raises :class:`GraphError` (one line naming the file) when it is missing, not a regular file, larger than
    :data:`GRAPH_LIMIT`, unreadable, not UTF-8, not valid JSON (including nested too deeply), invalid, or
    written for another feature. A symbolic link is followed (users may link their specs), but its target
    must be a regular file within the limit all the same.
    """
    path = graph_path(repo, feature)
    try:
        data = read_regular(path, limit=GRAPH_LIMIT, what="the task graph")
    except FileNotFoundError:
        raise GraphError(
            f"{path}: no task graph for feature {feature!r}",
            hint="run the design phase first, it writes the task graph; or pass --feature",
        ) from None
    except FileAccessError as exc:
        raise GraphError(exc.message, hint=exc.hint) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GraphError(
            f"{path}: the task graph is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
            hint="save it as UTF-8",
        ) from None
    graph = load_graph(path, data)
    if graph.feature != feature:
        raise GraphError(
            f"{path}: field `feature` is {graph.feature!r}, but this run is for feature {feature!r}",
            hint=f"set `feature` to {feature!r} in the task graph, or pass --feature {graph.feature}",
        )
    return graph
