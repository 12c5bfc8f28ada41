"""The feature's task graph (``.gsd/specs/<feature>/task-graph.json``): model and validation. Pure.

The design phase writes the graph; container mode reads it before anything starts. :func:`load_graph`
decodes the text and checks, in this order, each with one :class:`~mahabharatha.errors.GraphError` line
naming the graph file, the task ids and the fix:

1. the JSON and its types (the path of the bad field, e.g. ``$.tasks[2].level``), no tasks at all, task ids
   that cannot name a git ref or a file, ``files`` paths that are not relative paths inside the worktree
   (see :func:`file_path_problem`), duplicate task ids;
2. a dependency on a task that does not exist;
3. a dependency cycle (the cycle is spelled out);
4. a dependency on a task of the same or a later level (levels run in order, all tasks of a level at once);
5. two tasks of one level owning (``files.create`` / ``files.modify``) the same file: they would run at the
   same time in different worktrees and their merge would conflict.

Fields the model does not know (the design phase adds its own) are ignored, so are the optional ``levels``
descriptions: the level of a task is its ``level`` field.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated

import msgspec
from msgspec import Meta

from ..errors import GraphError
from .config import safe_name_problem

__all__ = [
    "Files",
    "Verification",
    "Task",
    "TaskGraph",
    "load_graph",
    "graph_path",
    "file_path_problem",
    "DEFAULT_VERIFY_TIMEOUT_S",
]

DEFAULT_VERIFY_TIMEOUT_S = 300


def graph_path(repo: str, feature: str) -> str:
    """Where the design phase writes the feature's graph."""
    return f"{repo}/.gsd/specs/{feature}/task-graph.json"


class Files(msgspec.Struct, frozen=True):
    create: tuple[str, ...] = ()
    modify: tuple[str, ...] = ()
    read: tuple[str, ...] = ()

    @property
    def owned(self) -> tuple[str, ...]:
        """Files the task writes (created or modified), normalised."""
        return tuple(_norm(p) for p in (*self.create, *self.modify))


class Verification(msgspec.Struct, frozen=True):
    command: str = ""  # shell syntax; empty means nothing to verify
    timeout_seconds: Annotated[float, Meta(gt=0)] = DEFAULT_VERIFY_TIMEOUT_S


class Task(msgspec.Struct, frozen=True):
    id: Annotated[str, Meta(min_length=1)]
    level: Annotated[int, Meta(ge=0)]
    title: str = ""
    description: str = ""
    dependencies: tuple[str, ...] = ()
    files: Files = Files()
    verification: Verification = Verification()


class TaskGraph(msgspec.Struct, frozen=True):
    feature: Annotated[str, Meta(min_length=1)]
    tasks: tuple[Task, ...]
    # Each task's JSON object as written (extra fields included, e.g. a scripted agent's), in task order: what a
    # worker receives for the task. Filled by load_graph; the odd name keeps it out of any user's graph.
    raw_tasks: tuple[str, ...] = msgspec.field(default=(), name="$mahabharatha-raw-tasks")

    def raw_task(self, task_id: str) -> str:
        """The task's JSON object as written (or its model's fields when the graph was built in code)."""
        for t, raw in zip(self.tasks, self.raw_tasks):
            if t.id == task_id:
                return raw
        return msgspec.json.encode(self.task(task_id)).decode()

    @property
    def levels(self) -> tuple[int, ...]:
        """The distinct levels, ascending (the order they run in)."""
        return tuple(sorted({t.level for t in self.tasks}))

    def tasks_at(self, level: int) -> tuple[Task, ...]:
        return tuple(t for t in self.tasks if t.level == level)

    def task(self, task_id: str) -> Task:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)


def _norm(path: str) -> str:
    p = posixpath.normpath(path.strip())
    return p[2:] if p.startswith("./") else p


# Code points HFS+ ignores in names (git's is_hfs_dotgit): `.g\u200cit` is `.git` on a Mac.
_HFS_IGNORED = dict.fromkeys(map(ord, "\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"))
# The common case, accepted at once: ASCII names not starting with '.', joined by single '/' (so no '..', no
# '.git', no 'git~1', no drive, no backslash). Everything else takes the full check.
_PLAIN_RE = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_DRIVE_RE = re.compile(r"[A-Za-z]:(/|$)")  # `C:/x`, `C:`; backslashes are refused anyway


def _is_dotgit(component: str) -> bool:
    """Whether a path component names git's directory on some filesystem a worktree can live on: ``.git`` in
    any case (case-insensitive filesystems), with trailing dots or spaces (NTFS drops them), with code points
    HFS+ ignores, or as the NTFS short name ``git~1`` (what git's core.protectNTFS/protectHFS refuse)."""
    name = component.translate(_HFS_IGNORED).rstrip(". ").lower()
    return name in (".git", "git~1")


def file_path_problem(path: object) -> str | None:
    """Why ``path`` (an entry of a task's ``files.create``/``modify``/``read``) is not a relative path inside
    the worktree, or None when it is.

    Accepted: non-empty text whose normalised form (:func:`posixpath.normpath`) is relative, is not the worktree
    itself (``.``), does not start with ``..`` and has no ``.git`` component (see :func:`_is_dotgit`), with no
    NUL byte, no backslash and no Windows drive (``C:``). ``a/../b`` is ``b``: the check is lexical, like the
    ownership rule.
    """
    if not isinstance(path, str):
        return "is not text"
    if _PLAIN_RE.fullmatch(path):
        return None
    if not path.strip():
        return "is empty"
    if "\0" in path:
        return "contains a NUL byte"
    if "\\" in path or _DRIVE_RE.match(path.strip()):
        return "is a Windows-style path (backslashes and drive letters like 'C:' are not accepted): use '/' between directories"
    norm = _norm(path)
    if norm.startswith("/"):
        return "is absolute: paths are relative to the repository root"
    if norm == ".":
        return "names the worktree itself, not a file"
    parts = norm.split("/")
    if parts[0] == "..":
        return "leaves the worktree ('..')"
    if any(_is_dotgit(part) for part in parts):
        return "is inside git's own directory (.git), which tasks may not touch"
    return None


def _fail(path: str, message: str, hint: str) -> GraphError:
    return GraphError(f"{path}: {message}", hint=hint)


def load_graph(path: str, text: str | bytes) -> TaskGraph:
    """Decode and validate a task graph. ``path`` is only used in messages. Raises :class:`GraphError`."""
    try:
        graph = msgspec.json.decode(text, type=TaskGraph)
    except msgspec.ValidationError as exc:
        raise _fail(path, f"invalid task graph: {exc}", "fix that field of the task graph") from None
    except msgspec.DecodeError as exc:
        raise _fail(path, f"not valid JSON: {exc}", "fix the JSON syntax of the task graph") from None
    except RecursionError:  # msgspec stops at the interpreter's recursion limit: arrays in arrays in ...
        raise _fail(
            path, "not a task graph: its JSON is nested too deeply", "a task graph nests a few levels: fix or rewrite it"
        ) from None
    validate(path, graph)
    raw = msgspec.json.decode(text, type=_RawGraph)
    return msgspec.structs.replace(graph, raw_tasks=tuple(r.decode() if isinstance(r, bytes) else bytes(r).decode() for r in raw.tasks))


class _RawGraph(msgspec.Struct):
    tasks: list[msgspec.Raw]


def validate(path: str, graph: TaskGraph) -> None:
    """The cross-task rules (see the module docstring). Raises :class:`GraphError` on the first broken rule."""
    if not graph.tasks:
        raise _fail(path, "the task graph has no tasks (`tasks` is empty)", "add the feature's tasks, or run the design phase again")
    by_id: dict[str, Task] = {}
    for i, t in enumerate(graph.tasks):
        problem = safe_name_problem(t.id)
        if problem:  # ids name refs (refs/mahabharatha/failed/<feature>/<id>), temp files and commit subjects
            raise _fail(
                path,
                f"task id {t.id!r} (at `$.tasks[{i}].id`) cannot name a git ref or a file: {problem}",
                "rename the task",
            )
    checked: set[str] = set()  # a graph may name one file many times
    for t in graph.tasks:
        for kind in ("create", "modify", "read"):
            for f in getattr(t.files, kind):
                if f in checked:
                    continue
                checked.add(f)
                problem = file_path_problem(f)
                if problem:
                    raise _fail(
                        path,
                        f"task {t.id!r}: `files.{kind}` path {f!r} {problem}",
                        "task-graph files are paths relative to the repository root inside the worktree, e.g. 'src/app.py'",
                    )
    for t in graph.tasks:
        if t.id in by_id:
            raise _fail(path, f"task id {t.id!r} is used by two tasks", "give every task a unique id")
        by_id[t.id] = t
    for t in graph.tasks:
        for dep in t.dependencies:
            if dep not in by_id:
                raise _fail(
                    path,
                    f"task {t.id!r} depends on unknown task {dep!r}",
                    "fix the dependency id or add the missing task",
                )
    cycle = _find_cycle(graph.tasks)
    if cycle:
        raise _fail(
            path,
            f"dependency cycle: {' -> '.join(repr(c) for c in cycle)}",
            "remove one of these dependencies",
        )
    for t in graph.tasks:
        for dep in t.dependencies:
            d = by_id[dep]
            if d.level >= t.level:
                where = "the same" if d.level == t.level else "a later"
                raise _fail(
                    path,
                    f"task {t.id!r} (level {t.level}) depends on {dep!r} of {where} level ({d.level})",
                    f"move {t.id!r} to a level after {d.level}, or drop the dependency",
                )
    owners: dict[tuple[int, str], str] = {}
    for t in graph.tasks:
        for f in dict.fromkeys(t.files.owned):
            other = owners.setdefault((t.level, f), t.id)
            if other != t.id:
                raise _fail(
                    path,
                    f"tasks {other!r} and {t.id!r} of level {t.level} both create or modify {f!r}",
                    "tasks of one level run at the same time: give the file to one of them or move the other "
                    "to a later level",
                )


def _find_cycle(tasks: tuple[Task, ...]) -> list[str]:
    """One dependency cycle as ``[a, b, ..., a]``, or ``[]``. Iterative DFS (deep graphs do not recurse)."""
    deps = {t.id: t.dependencies for t in tasks}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in deps:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            children = deps.get(node, ())
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                s = state.get(child)
                if s == 1:
                    return path[path.index(child):] + [child]
                if s is None and child in deps:
                    state[child] = 1
                    stack.append((child, 0))
                    path.append(child)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return []
