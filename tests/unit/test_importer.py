"""What the orchestrator admits from a worker: :func:`verdict` property-tested over generated commit DAGs, and
:func:`import_bundle` on real bundles in a temporary repository (made by the worker's own git code)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.edge.importer import Imported, ImportRejected, import_bundle, parse_heads, verdict
from mahabharatha.worker import gitsetup
from mahabharatha.worker import protocol as P

EXPECTED = "refs/heads/mahabharatha/feat/worker-0"

# ------------------------------------------------------------------------------------------------------------
# verdict, on a model


@st.composite
def dags(draw: Any) -> tuple[list[str], dict[str, list[str]]]:
    """Commits (40-hex ids) with parent lists pointing only at earlier commits: any DAG, roots and merges too."""
    n = draw(st.integers(1, 12))
    ids = [f"{i + 1:040x}" for i in range(n)]
    parents = {c: sorted(set(draw(st.lists(st.sampled_from(ids[:i]), max_size=2)))) if i else [] for i, c in enumerate(ids)}
    return ids, parents


def _descends(parents: dict[str, list[str]]) -> Any:
    def descends(a: str, b: str) -> bool:
        seen, todo = set(), [b]
        while todo:
            c = todo.pop()
            if c == a:
                return True
            if c not in seen:
                seen.add(c)
                todo.extend(parents.get(c, ()))
        return False

    return descends


_OTHER_REFS = st.sampled_from([
    "refs/heads/mahabharatha/feat/worker-1", EXPECTED + "x", "refs/heads/main", P.PARK_REF, "HEAD",
    "refs/heads/mahabharatha/feat/worker-0/../worker-1", EXPECTED.upper(), "",
])
_NOT_COMMITS = st.sampled_from(["", "HEAD", "x" * 40, "A" * 40, "0" * 39, "0" * 41, "0" * 40 + "\n", "refs/heads/x"])
# Paths as git prints them with -z: anything but NUL, line breaks included (an agent names its files).
_PATHS = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=8)
# Task ids as the graph allows them.
_TASK_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), dag=dags())
def test_verdict_admits_exactly_what_the_rules_allow(data: Any, dag: tuple[list[str], dict[str, list[str]]]) -> None:
    ids, parents = dag
    descends = _descends(parents)
    commit = data.draw(st.one_of(st.sampled_from(ids), _NOT_COMMITS), label="commit")
    head_sha = st.one_of(st.just(commit), st.sampled_from(ids))
    head = st.tuples(head_sha, st.one_of(st.just(EXPECTED), _OTHER_REFS))
    heads = data.draw(st.one_of(st.lists(head, max_size=3), st.builds(lambda c: [(c, EXPECTED)], st.just(commit))), label="heads")
    start = data.draw(st.one_of(st.none(), st.sampled_from(ids)), label="start")
    changed = data.draw(st.lists(_PATHS, max_size=4), label="changed")
    foreign = data.draw(st.dictionaries(st.one_of(st.sampled_from(changed or ["-"]), _PATHS), _TASK_IDS, max_size=4), label="foreign")

    reason = verdict(heads=heads, expected_ref=EXPECTED, commit=commit, start=start, descends=descends,
                     changed=lambda: iter(changed), foreign=foreign)

    valid_id = commit in ids
    admitted = (
        valid_id and heads == [(commit, EXPECTED)] and (start is None or descends(start, commit))
        and not set(changed) & set(foreign)
    )
    if admitted:
        assert reason is None
    else:
        assert isinstance(reason, str) and reason.strip(), (heads, commit, start, changed, foreign)
        assert len(reason.splitlines()) == 1 and "\n" not in reason, repr(reason)  # one line, always


def test_verdict_says_why_in_words() -> None:
    a, b = "a" * 40, "b" * 40
    never = lambda x, y: False  # noqa: E731
    always = lambda x, y: True  # noqa: E731
    kw: dict[str, Any] = {"expected_ref": EXPECTED, "descends": always, "changed": lambda: ["src/x.py"], "foreign": {}}
    assert verdict(heads=[(a, EXPECTED)], commit=a, start=b, **kw) is None
    assert "not a commit id" in (verdict(heads=[(a, EXPECTED)], commit="HEAD", start=None, **kw) or "")
    assert "exactly one ref" in (verdict(heads=[], commit=a, start=None, **kw) or "")
    assert "carries 2" in (verdict(heads=[(a, EXPECTED), (a, P.PARK_REF)], commit=a, start=None, **kw) or "")
    assert "not refs/heads" in (verdict(heads=[(a, P.PARK_REF)], commit=a, start=None, **kw) or "")
    assert "not the claimed commit" in (verdict(heads=[(b, EXPECTED)], commit=a, start=None, **kw) or "")
    assert "does not descend from" in (verdict(heads=[(a, EXPECTED)], commit=a, start=b, **{**kw, "descends": never}) or "")
    taken = verdict(heads=[(a, EXPECTED)], commit=a, start=b, **{**kw, "foreign": {"src/x.py": "T2"}}) or ""
    assert "other tasks of the level own: src/x.py (task T2)" in taken


def test_parse_heads_reads_list_heads_output() -> None:
    a, b = "a" * 40, "b" * 40
    assert parse_heads(f"{a} {EXPECTED}\n{b} refs/x\n\n") == [(a, EXPECTED), (b, "refs/x")]
    assert parse_heads("") == []


# ------------------------------------------------------------------------------------------------------------
# import_bundle, with real git

INCOMING = "refs/mahabharatha/incoming/feat/worker-0"


def git(repo: str | Path, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, input=input,
    ).stdout
    return out.decode().strip()


class World:
    """The user's repository (base commit ``start``) and a worker's private repository beside it, set up as the
    worker does it (its own objects, the user's as alternates)."""

    def __init__(self, root: Path) -> None:
        self.repo = str(root / "repo")
        os.makedirs(self.repo)
        git(self.repo, "init", "-q", "-b", "main")
        Path(self.repo, "README.md").write_text("hello\n")
        Path(self.repo, "b.txt").write_text("b\n")
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-qm", "initial")
        self.start = git(self.repo, "rev-parse", "HEAD")
        git(self.repo, "branch", "mahabharatha/feat/worker-0")
        workspace = root / "workspace"
        workspace.mkdir()
        self.worker = gitsetup.Repo(str(workspace), str(root / "private"), "mahabharatha/feat/worker-0",
                                    os.path.join(self.repo, ".git", "objects"))
        self.worker.ensure()
        self.worker.checkout(self.start)
        self.workspace = workspace

    def work(self, files: dict[str, str], parent: str | None = None) -> str:
        """A worker commit of the work tree with ``files`` written, on ``parent`` (default: the start)."""
        parent = parent or self.start
        self.worker.checkout(parent)
        for name, text in files.items():
            path = self.workspace / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        commit = self.worker.snapshot(parent, "work")
        assert commit is not None
        return commit

    def bundle(self, ref: str, tip: str, start: str | None = None) -> bytes:
        return self.worker.bundle(ref, tip, start or self.start)

    def refs(self) -> dict[str, str]:
        out = git(self.repo, "for-each-ref", "--format=%(refname) %(objectname)")
        return dict(line.split(" ") for line in out.splitlines())

    def admit(self, blob: bytes, commit: str, **kw: Any) -> Imported:
        args: dict[str, Any] = {"expected_ref": EXPECTED, "commit": commit, "dest_ref": EXPECTED, "incoming_ref": INCOMING,
                                "start": self.start, **kw}
        return import_bundle(self.repo, blob, **args)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    for name, value in (("GIT_AUTHOR_NAME", "w"), ("GIT_AUTHOR_EMAIL", "w@e.invalid"), ("GIT_COMMITTER_NAME", "w"),
                        ("GIT_COMMITTER_EMAIL", "w@e.invalid")):
        monkeypatch.setenv(name, value)
    return World(tmp_path)


def test_a_good_bundle_is_admitted_and_moves_the_destination(world: World) -> None:
    commit = world.work({"src/a.py": "print('a')\n"})
    before = world.refs()
    got = world.admit(world.bundle(EXPECTED, commit), commit, foreign={"b.txt": "B"})
    assert got == Imported(commit=commit, ref=EXPECTED)
    after = world.refs()
    assert after[EXPECTED] == commit and INCOMING not in after
    assert {k: v for k, v in after.items() if k != EXPECTED} == {k: v for k, v in before.items() if k != EXPECTED}
    assert git(world.repo, "show", f"{EXPECTED}:src/a.py") == "print('a')"


def _two_refs(world: World, commit: str) -> bytes:
    world.worker.git("update-ref", P.PARK_REF, commit)
    world.worker.git("update-ref", EXPECTED, commit)
    path = str(world.workspace.parent / "two.bundle")
    world.worker.git("bundle", "create", "-q", path, EXPECTED, P.PARK_REF, f"^{world.start}")
    return Path(path).read_bytes()


def _prerequisite_missing(world: World, commit: str) -> tuple[bytes, str]:
    # On top of a worker commit the user's repository never received: the bundle needs it, git refuses.
    on_top = world.work({"c.txt": "c\n"}, parent=commit)
    return world.bundle(EXPECTED, on_top, start=commit), on_top


def _dotgit_in_a_tree(world: World, commit: str) -> tuple[bytes, str]:
    # A tree holding `.git/config`: git's own commands refuse to write one (mktree, update-index), so craft the
    # objects with hash-object --literally. fsck on the fetch must refuse it (hasDotgit).
    w = world.worker
    blob = w.git("hash-object", "-w", "--stdin", input="[core]\n\thooksPath = /tmp/evil\n").stdout.strip()
    inner = b"100644 config\0" + bytes.fromhex(blob)
    path = world.workspace.parent / "tree.bin"
    path.write_bytes(inner)
    inner_id = w.git("hash-object", "-w", "--literally", "-t", "tree", str(path)).stdout.strip()
    entries = [(b"40000", b".git", inner_id)]
    for line in w.git("ls-tree", world.start).stdout.splitlines():
        meta, name = line.split("\t", 1)
        mode, _, sha = meta.split()
        entries.append((mode.encode(), name.encode(), sha))
    entries.sort(key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
    path.write_bytes(b"".join(m + b" " + n + b"\0" + bytes.fromhex(s) for m, n, s in entries))
    root = w.git("hash-object", "-w", "--literally", "-t", "tree", str(path)).stdout.strip()
    evil = w.git("commit-tree", root, "-p", world.start, "-m", "evil").stdout.strip()
    assert ".git/config" in w.git("ls-tree", "-r", "--name-only", evil).stdout
    return world.bundle(EXPECTED, evil), evil


def _corrupt(bundle: bytes) -> bytes:
    header, _, pack = bundle.partition(b"\n\n")
    return header + b"\n\n" + pack[:12] + bytes(b ^ 0x5A for b in pack[12:])


CASES = {
    "two refs": lambda w, c: (_two_refs(w, c), c),
    "the wrong ref": lambda w, c: (w.bundle(P.PARK_REF, c), c),
    "a commit not descending from the start": "not-descending",
    "a foreign file change": "foreign",
    "garbage": lambda w, c: (b"# v2 git bundle\n\x00\xffnot a bundle at all\n" * 3, c),
    "a claimed commit other than the bundle's": lambda w, c: (w.bundle(EXPECTED, c), w.start),
    "a missing prerequisite": _prerequisite_missing,
    "a corrupt pack": lambda w, c: (_corrupt(w.bundle(EXPECTED, c)), c),
    "a .git path inside a tree": _dotgit_in_a_tree,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_bundle_is_rejected_in_one_line_and_leaves_the_refs_alone(world: World, case: str) -> None:
    commit = world.work({"src/a.py": "a\n"})
    kw: dict[str, Any] = {}
    make = CASES[case]
    if make == "not-descending":
        git(world.repo, "commit", "-q", "--allow-empty", "-m", "base moved on")  # on main: the claimed start
        blob, claimed = world.bundle(EXPECTED, commit), commit
        kw["start"] = git(world.repo, "rev-parse", "HEAD")
    elif make == "foreign":
        commit = world.work({"src/a.py": "a\n", "b.txt": "changed by the wrong task\n"})
        blob, claimed = world.bundle(EXPECTED, commit), commit
        kw["foreign"] = {"b.txt": "B"}
    else:
        blob, claimed = make(world, commit)  # type: ignore[operator]
    before = world.refs()
    with pytest.raises(ImportRejected) as exc:
        world.admit(blob, claimed, **kw)
    message = str(exc.value)
    assert message.strip() and len(message.splitlines()) == 1, repr(message)
    assert world.refs() == before  # nothing moved, the incoming namespace is clean
    assert not any(ref.startswith("refs/mahabharatha/incoming/") for ref in world.refs())


def test_a_rejected_result_is_kept_apart_when_asked(world: World) -> None:
    commit = world.work({"src/a.py": "a\n", "b.txt": "changed by the wrong task\n"})
    kept = "refs/mahabharatha/failed/feat/A"
    with pytest.raises(ImportRejected, match="b.txt \\(task B\\)"):
        world.admit(world.bundle(EXPECTED, commit), commit, foreign={"b.txt": "B"}, keep_rejected_at=kept)
    refs = world.refs()
    assert refs[kept] == commit and refs[EXPECTED] == world.start and INCOMING not in refs


def test_an_oversized_bundle_is_refused_before_git_sees_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import mahabharatha.edge.importer as importer

    commit = world.work({"src/a.py": "a\n"})
    blob = world.bundle(EXPECTED, commit)
    monkeypatch.setattr(importer.P, "MAX_BUNDLE_BYTES", len(blob) - 1)
    with pytest.raises(ImportRejected, match="over the limit"):
        world.admit(blob, commit)
    assert world.refs()[EXPECTED] == world.start
