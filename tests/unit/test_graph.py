"""Task graph model and validation: valid DAGs pass, each defect gives its own GraphError, nothing else."""

from __future__ import annotations

import json
import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.graph import load_graph
from mahabharatha.errors import GraphError

PATH = "/r/.gsd/specs/f/task-graph.json"


@st.composite
def graphs(draw: st.DrawFn) -> dict:
    """A valid graph as the design phase writes it: levels 1..k, deps only on earlier levels, files owned
    by one task per level (files may repeat across levels), plus extra fields the model ignores."""
    n_levels = draw(st.integers(1, 4))
    tasks: list[dict] = []
    for level in range(1, n_levels + 1):
        earlier = [t["id"] for t in tasks]
        n = draw(st.integers(1, 4))
        files = draw(st.lists(st.sampled_from([f"src/f{i}.py" for i in range(12)]), unique=True, max_size=8))
        for i in range(n):
            own = files[i::n]
            tasks.append(
                {
                    "id": f"T{level}-{i}",
                    "title": f"task {level}.{i}",
                    "description": "do it",
                    "level": level,
                    "dependencies": draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else [],
                    "files": {"create": own[:1], "modify": own[1:], "read": ["README.md"]},
                    "verification": {"command": "true && echo ok | cat", "timeout_seconds": 30},
                    "estimate_minutes": 5,  # extra field: ignored
                }
            )
    return {"feature": "f", "tasks": tasks, "levels": {"1": {"name": "foundation"}}}


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_valid_graphs_are_accepted(raw: dict) -> None:
    g = load_graph(PATH, json.dumps(raw))
    assert [t.id for t in g.tasks] == [t["id"] for t in raw["tasks"]]
    assert g.levels == tuple(sorted({t["level"] for t in raw["tasks"]}))


def _defect(raw: dict, kind: str, data: st.DataObject) -> str:
    tasks = raw["tasks"]
    t = data.draw(st.sampled_from(tasks))
    if kind == "unknown":
        t["dependencies"].append("NOPE")
        return "unknown task 'NOPE'"
    if kind == "self-cycle":
        t["dependencies"].append(t["id"])
        return "dependency cycle"
    if kind == "cycle":
        later = [u for u in tasks if u["level"] > t["level"]]
        if not later:
            t["dependencies"].append(t["id"])
            return "dependency cycle"
        u = data.draw(st.sampled_from(later))
        u["dependencies"].append(t["id"])
        t["dependencies"].append(u["id"])
        return "dependency cycle"
    if kind == "same-level":
        u = {**t, "id": t["id"] + "-twin", "dependencies": [t["id"]], "files": {}}
        tasks.append(u)
        return "of the same level"
    if kind == "later-level":
        u = {**t, "id": t["id"] + "-next", "level": t["level"] + 1, "dependencies": [], "files": {}}
        tasks.append(u)
        t["dependencies"].append(u["id"])
        return "of a later level"
    if kind == "shared-file":
        u = {**t, "id": t["id"] + "-rival", "dependencies": [], "files": {"modify": ["./shared/x.py"]}}
        t["files"] = {"create": ["shared/x.py"]}
        tasks.append(u)
        return f"tasks {t['id']!r} and {u['id']!r} of level {t['level']} both create or modify 'shared/x.py'"
    if kind == "duplicate-id":
        tasks.append({**t, "files": {}})
        return "used by two tasks"
    raise AssertionError(kind)


@settings(max_examples=80, deadline=None)
@given(graphs(), st.sampled_from(["unknown", "self-cycle", "cycle", "same-level", "later-level", "shared-file", "duplicate-id"]), st.data())
def test_each_defect_is_one_clear_graph_error(raw: dict, kind: str, data: st.DataObject) -> None:
    expected = _defect(raw, kind, data)
    with pytest.raises(GraphError) as info:
        load_graph(PATH, json.dumps(raw))
    assert expected in str(info.value)
    assert str(info.value).startswith(PATH)
    assert "\n" not in str(info.value)


@settings(max_examples=150, deadline=None)
@given(graphs(), st.data())
def test_mangled_text_is_graph_error_or_valid(raw: dict, data: st.DataObject) -> None:
    text = json.dumps(raw)
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=5))
    mangled = text[:cut] + junk + text[cut + data.draw(st.integers(0, 5)):]
    try:
        load_graph(PATH, mangled)
    except GraphError:
        pass


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{", "not valid JSON"),
        ('{"feature": "f"}', "missing required field `tasks`"),
        ('{"feature": "f", "tasks": [{"id": "a", "level": "one"}]}', "$.tasks[0].level"),
        ('{"feature": "f", "tasks": [{"id": "", "level": 1}]}', "$.tasks[0].id"),
        ('[]', "Expected `object`"),
    ],
)
def test_type_errors_name_the_field(text: str, expected: str) -> None:
    with pytest.raises(GraphError, match=None) as info:
        load_graph(PATH, text)
    assert expected in str(info.value)


def test_cycle_is_spelled_out() -> None:
    raw = {
        "feature": "f",
        "tasks": [
            {"id": "a", "level": 1, "dependencies": ["c"]},
            {"id": "b", "level": 2, "dependencies": ["a"]},
            {"id": "c", "level": 3, "dependencies": ["b"]},
        ],
    }
    with pytest.raises(GraphError, match="dependency cycle: 'a' -> 'c' -> 'b' -> 'a'"):
        load_graph(PATH, json.dumps(raw))


def test_defaults_and_helpers() -> None:
    g = load_graph(PATH, '{"feature": "f", "tasks": [{"id": "a", "level": 2}, {"id": "b", "level": 1}]}')
    assert g.levels == (1, 2)
    assert g.task("a").verification.command == ""
    assert g.tasks_at(1)[0].id == "b"


# ----------------------------------------------------------------------------------------------------------
# `files` paths: relative paths inside the worktree


def _graph_with_path(p: str, kind: str = "create") -> str:
    return json.dumps({"feature": "f", "tasks": [{"id": "T1", "level": 1, "files": {kind: [p]}}]})


@pytest.mark.parametrize("kind", ["create", "modify", "read"])
@pytest.mark.parametrize(
    "bad, expected",
    [
        ("../x", "leaves the worktree"),
        ("src/../../x", "leaves the worktree"),
        ("..", "leaves the worktree"),
        ("/etc/passwd", "is absolute"),
        ("//srv/x", "is absolute"),
        (".git/hooks/pre-commit", ".git"),
        ("src/.git/config", ".git"),
        (".GIT/config", ".git"),
        (".Git", ".git"),
        (".git./config", ".git"),  # NTFS drops trailing dots
        ("git~1/config", ".git"),  # NTFS short name
        (".g\u200cit/config", ".git"),  # HFS+ ignores U+200C
        ("", "is empty"),
        ("   ", "is empty"),
        (".", "the worktree itself"),
        ("./", "the worktree itself"),
        ("a\0b", "NUL byte"),
        ("src\\app.py", "Windows-style"),
        ("C:\\x", "Windows-style"),
        ("C:/x", "Windows-style"),
    ],
)
def test_bad_files_paths_are_one_line_errors_naming_task_and_path(kind: str, bad: str, expected: str) -> None:
    with pytest.raises(GraphError) as info:
        load_graph(PATH, _graph_with_path(bad, kind))
    message = str(info.value)
    assert "\n" not in message and message.startswith(PATH)
    assert f"task 'T1': `files.{kind}` path {bad!r}" in message
    assert expected in message


@pytest.mark.parametrize(
    "good",
    ["a.py", "src/app.py", "./src/app.py", "src/./x", "src/../x", "a/.gitignore", ".github/workflows/ci.yml",
     ".gitmodules", "src/git/x", "weird name.txt", "a:b.txt", "x/..."],
)
def test_good_files_paths_are_accepted(good: str) -> None:
    load_graph(PATH, _graph_with_path(good))


_TOKENS = ["a", "b", ".", "..", "/", "//", ".git", ".GIT", ".gIt", "git", "git~1", "GIT~1", " ", "\\", "\0",
           "C:", "\u200c", "~", "é", "-"]


def _inside_oracle(p: str) -> bool:
    """What validation must accept, spelled differently from the implementation: the path joined onto a root
    and normalised stays strictly below the root, and no component is git's directory."""
    if not p.strip() or "\0" in p or "\\" in p:
        return False
    stripped = p.strip()
    if len(stripped) >= 2 and stripped[1] == ":" and stripped[0].isascii() and stripped[0].isalpha() and stripped[2:3] in ("", "/"):
        return False  # a Windows drive
    if posixpath.isabs(stripped):
        return False
    root = "/root"
    joined = posixpath.normpath(posixpath.join(root, stripped))
    if joined == root or posixpath.commonpath([root, joined]) != root:
        return False
    below = posixpath.relpath(joined, root).split("/")
    ignorable = "".join(chr(c) for c in (0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF))
    for part in below:
        name = "".join(ch for ch in part if ch not in ignorable).rstrip(". ").lower()
        if name in (".git", "git~1"):
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.lists(st.sampled_from(_TOKENS), max_size=8).map("".join), st.text(max_size=12)),
    st.sampled_from(["create", "modify", "read"]),
)
def test_files_paths_accepted_exactly_when_relative_inside_and_outside_git(p: str, kind: str) -> None:
    text = _graph_with_path(p, kind)
    if _inside_oracle(p):
        g = load_graph(PATH, text)
        assert getattr(g.tasks[0].files, kind) == (p,)
    else:
        with pytest.raises(GraphError) as info:
            load_graph(PATH, text)
        assert f"task 'T1': `files.{kind}` path {p!r}" in str(info.value)
        assert "\n" not in str(info.value)


def test_owned_files_of_one_level_are_compared_after_normalising() -> None:
    raw = {"feature": "f", "tasks": [
        {"id": "a", "level": 1, "files": {"create": ["src/./x.py"]}},
        {"id": "b", "level": 1, "files": {"modify": ["src/y/../x.py"]}},
    ]}
    with pytest.raises(GraphError, match="both create or modify 'src/x.py'"):
        load_graph(PATH, json.dumps(raw))
