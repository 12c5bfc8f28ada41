"""Import a worker's result (a git bundle it sent over its channel) into the user's repository, verified.

The worker never writes the user's ``.git``; what it produced arrives as data. :func:`import_bundle` takes
the bytes, never a path a container could have replaced, and admits them only when every rule holds:

1. the bundle names exactly one ref, the one this kind of result must carry (the worker's own branch for a
   finished task, :data:`~mahabharatha.worker.protocol.PARK_REF` for work to keep), pointing at the commit
   the worker claims;
2. git indexes its pack with fsck, strictly (``index-pack --strict``: malformed objects, ``.git`` paths and
   the like are refused; ``git fetch`` from a bundle skips fsck before git 2.4x whatever the config says),
   and a ref of the run's own incoming namespace is set to it;
3. the commit descends from the commit the orchestrator told the worker to start from (for finished work);
4. it changes no file that another task of the same level owns (``files.create``/``files.modify``), so one
   worker's result cannot make the level's merge conflict.

Then the destination ref (always under the run's namespaces) moves, compare-and-swap. The rules are the pure
:func:`verdict`, property-tested; git answers the questions it needs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable

import msgspec

from ..errors import MahabharathaError
from ..worker import protocol as P
from .git import HARDENING, _run, git, git_ok

__all__ = ["ImportRejected", "Imported", "verdict", "parse_heads", "import_bundle", "adopt", "discard"]

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_INDEX_TIMEOUT_S = 120
_BUNDLE_SIGNATURES = (b"# v2 git bundle\n", b"# v3 git bundle\n")


class ImportRejected(MahabharathaError):
    """A worker's result that the orchestrator does not admit (one line: why)."""


class Imported(msgspec.Struct, frozen=True):
    commit: str
    ref: str


def parse_heads(text: str) -> list[tuple[str, str]]:
    """``git bundle list-heads`` output as (commit, ref) pairs."""
    heads = []
    for line in text.splitlines():
        sha, _, ref = line.strip().partition(" ")
        if sha:
            heads.append((sha, ref))
    return heads


def verdict(
    *,
    heads: list[tuple[str, str]],
    expected_ref: str,
    commit: str,
    start: str | None,
    descends: Callable[[str, str], bool],
    changed: Callable[[], Iterable[str]],
    foreign: dict[str, str],
) -> str | None:
    """Why the result must be rejected (one line), or None to admit it.

    ``descends(a, b)``: whether commit ``b`` descends from (or is) ``a``; ``changed()``: the paths the result
    changes against ``start``; ``foreign``: path -> task id of the files other tasks of the level own.
    """
    reason = _verdict(heads, expected_ref, commit, start, descends, changed, foreign)
    # Paths and refs may hold line breaks and control characters (an agent names its files): escaped.
    return None if reason is None else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in reason)


def _verdict(
    heads: list[tuple[str, str]],
    expected_ref: str,
    commit: str,
    start: str | None,
    descends: Callable[[str, str], bool],
    changed: Callable[[], Iterable[str]],
    foreign: dict[str, str],
) -> str | None:
    if not _SHA.fullmatch(commit):  # (match() would take a trailing newline: `$` matches before one)
        return f"the claimed commit {commit[:50]!r} is not a commit id"
    if len(heads) != 1:
        shown = ", ".join(ref[:80] for _, ref in heads[:3]) or "none"
        return f"the bundle must carry exactly one ref ({expected_ref}), it carries {len(heads)}: {shown}"
    (sha, ref), = heads
    if ref != expected_ref:
        return f"the bundle carries {ref[:80]!r}, not {expected_ref}"
    if sha != commit:
        return f"the bundle's {ref} is {sha[:12]}, not the claimed commit {commit[:12]}"
    if start is not None and not descends(start, commit):
        return f"commit {commit[:12]} does not descend from {start[:12]}, the commit the task started from"
    if foreign:
        taken = sorted({path for path in changed() if path in foreign})
        if taken:
            shown = ", ".join(f"{p} (task {foreign[p]})" for p in taken[:5])
            return f"it changes files other tasks of the level own: {shown}"
    return None


def import_bundle(
    repo: str,
    bundle: bytes,
    *,
    expected_ref: str,
    commit: str,
    dest_ref: str | None,
    incoming_ref: str,
    start: str | None = None,
    foreign: dict[str, str] | None = None,
    keep_rejected_at: str | None = None,
) -> Imported:
    """Verify and import ``bundle``; move ``dest_ref`` to its commit. Raises :class:`ImportRejected`.

    A bundle git accepted but a rule refused is kept at ``keep_rejected_at`` when given (for inspection,
    never merged). ``dest_ref``, ``incoming_ref`` and ``keep_rejected_at`` must lie in the run's namespaces.
    """
    if len(bundle) > P.MAX_BUNDLE_BYTES:
        raise ImportRejected(f"a bundle of {len(bundle)} bytes, over the limit of {P.MAX_BUNDLE_BYTES}")
    prerequisites, heads, pack = _parse_bundle(bundle)
    early = verdict(
        heads=heads, expected_ref=expected_ref, commit=commit, start=None,
        descends=lambda a, b: True, changed=lambda: (), foreign={},
    )
    if early:
        raise ImportRejected(early)
    _index_strictly(repo, prerequisites, pack)
    try:
        git(repo, "update-ref", incoming_ref, commit)
    except MahabharathaError as exc:
        raise ImportRejected(f"git refused the bundle: {str(exc).rsplit(': ', 1)[-1][:200]}") from None
    adopted = False
    try:
        _check_sizes(repo, commit)
        reason = verdict(
            heads=heads, expected_ref=expected_ref, commit=commit, start=start,
            descends=lambda a, b: git_ok(repo, "merge-base", "--is-ancestor", a, b),
            changed=lambda: git(repo, "diff-tree", "-r", "-z", "--name-only", "--no-renames", str(start), commit).split("\0"),
            foreign=foreign or {},
        )
        if reason:
            if keep_rejected_at:
                git(repo, "update-ref", keep_rejected_at, commit)
            raise ImportRejected(reason)
        if dest_ref is None:  # the caller adopts it (adopt()), e.g. once it checked it still owns the task
            adopted = True
            return Imported(commit=commit, ref=incoming_ref)
        adopt(repo, incoming_ref, dest_ref, commit)
        adopted = True
        return Imported(commit=commit, ref=dest_ref)
    finally:
        if not adopted:
            git(repo, "update-ref", "-d", incoming_ref, check=False)


def adopt(repo: str, incoming_ref: str, dest_ref: str, commit: str) -> None:
    """Move ``dest_ref`` to a verified result waiting at ``incoming_ref`` and drop the latter, in one ref
    transaction."""
    git(repo, "update-ref", "--stdin", input=f"update {dest_ref} {commit}\ndelete {incoming_ref}\n")


def discard(repo: str, incoming_ref: str) -> None:
    """Drop a verified result that will not be adopted (its objects stay unreachable until git's gc)."""
    git(repo, "update-ref", "-d", incoming_ref, check=False)


def _parse_bundle(bundle: bytes) -> tuple[list[str], list[tuple[str, str]], bytes]:
    """A bundle's prerequisites, heads and pack, read in Python (git is never handed a malformed header)."""
    header, sep, pack = bundle.partition(b"\n\n")
    if not sep or not bundle.startswith(_BUNDLE_SIGNATURES):
        raise ImportRejected("git refused the bundle: not a git bundle (v2 or v3)")
    try:
        lines = header.decode("utf-8").split("\n")[1:]
    except UnicodeDecodeError:
        raise ImportRejected("not a git bundle (its header is not text)") from None
    prerequisites: list[str] = []
    heads: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith("@"):  # v3 capabilities
            if line.startswith("@filter"):
                raise ImportRejected("git refused the bundle: a filtered (partial) bundle")
            continue
        if line.startswith("-"):
            need = line[1:].split(" ", 1)[0]
            if not _SHA.fullmatch(need):
                raise ImportRejected(f"git refused the bundle: a prerequisite {need[:50]!r} that is not a commit id")
            prerequisites.append(need)
            continue
        sha, _, ref = line.partition(" ")
        heads.append((sha, ref))
    return prerequisites, heads, pack


def _check_sizes(repo: str, commit: str) -> None:
    """Refuse a result whose new files are too big once inflated (a bundle compresses a 10 GiB sparse file to
    a few MB): no blob over :data:`protocol.MAX_RESULT_FILE_BYTES`, none of them together over
    :data:`protocol.MAX_RESULT_BYTES`. Only the objects the result adds are looked at."""
    new = git(repo, "rev-list", "--objects", "--no-object-names", commit, "--not",
              "--exclude=refs/mahabharatha/incoming/*", "--all", check=False)
    if not new:
        return
    sizes = git(repo, "cat-file", "--batch-check=%(objecttype) %(objectsize) %(objectname)", input=new + "\n")
    total = 0
    for line in sizes.splitlines():
        kind, _, rest = line.partition(" ")
        size_text, _, name = rest.partition(" ")
        if kind != "blob" or not size_text.isdigit():
            continue
        size = int(size_text)
        total += size
        if size > P.MAX_RESULT_FILE_BYTES:
            raise ImportRejected(
                f"it adds a file of {size >> 20} MiB ({name[:12]}), over the limit of {P.MAX_RESULT_FILE_BYTES >> 20} MiB per file"
            )
    if total > P.MAX_RESULT_BYTES:
        raise ImportRejected(f"it adds {total >> 20} MiB of files, over the limit of {P.MAX_RESULT_BYTES >> 20} MiB")


def _index_strictly(repo: str, prerequisites: list[str], pack: bytes) -> None:
    """Add the pack's objects to ``repo`` through ``git index-pack --strict`` (fsck of every object, links
    included), after checking that ``repo`` has the commits the bundle needs. Raises :class:`ImportRejected`."""
    if prerequisites:
        found = git(repo, "cat-file", "--batch-check=%(objecttype)", input="".join(f"{p}\n" for p in prerequisites))
        for need, kind in zip(prerequisites, found.splitlines()):
            if kind.strip() != "commit":
                raise ImportRejected(f"git refused the bundle: it needs commit {need[:12]!r}, which the repository does not have")
    try:
        proc = _run(["git", "-C", repo, *HARDENING, "index-pack", "--stdin", "--fix-thin", "--strict"], input=pack,
                    timeout=_INDEX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ImportRejected(f"git took over {_INDEX_TIMEOUT_S} s to check the bundle's objects") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        detail = next((line for line in lines if line.startswith("error: ")), lines[-1] if lines else f"exit {proc.returncode}")
        raise ImportRejected(f"git refused the bundle: {detail.removeprefix('error: ')[:200]}")
