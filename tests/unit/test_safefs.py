"""Bounded, symlink-refusing file access: FIFOs never hang, devices are never read, links are never followed
where they must not be, and every refusal is one FileAccessError line naming the path."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.safefs import (
    append_line_nofollow,
    ensure_dir_nofollow,
    read_regular,
    remove_tree_nofollow,
    write_nofollow,
)
from mahabharatha.errors import FileAccessError, MahabharathaError

WHAT = "the test file"


def _promptly(fn: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) when it has not returned in ``seconds``.
    Returns what it returned or the exception it raised."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not return within {seconds} s"
    return box[0][1]


def _refused(fn: Callable[[], Any], *expected: str) -> str:
    outcome = _promptly(fn)
    assert isinstance(outcome, FileAccessError), f"expected FileAccessError, got {outcome!r}"
    assert isinstance(outcome, MahabharathaError)
    message = str(outcome)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    return message


def _unblock_fifo(path: Path) -> None:
    """Open the FIFO's other end, so a reader or writer stuck in open() (a broken implementation) returns."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# read_regular


def test_reads_a_regular_file_and_follows_links_by_default(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    (tmp_path / "link").symlink_to(f)
    assert read_regular(f, limit=5, what=WHAT) == b"hello"
    assert read_regular(str(tmp_path / "link"), limit=5, what=WHAT) == b"hello"
    assert read_regular(f, limit=5, what=WHAT, follow_symlinks=False) == b"hello"


def test_missing_file_is_file_not_found_or_none(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "nope", limit=10, what=WHAT)
    assert read_regular(tmp_path / "nope", limit=10, what=WHAT, missing_ok=True) is None


@pytest.mark.parametrize("follow", [True, False])
def test_fifo_is_refused_promptly(tmp_path: Path, follow: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        _refused(lambda: read_regular(fifo, limit=100, what=WHAT, follow_symlinks=follow), str(fifo), "FIFO", WHAT)
    finally:
        _unblock_fifo(fifo)


def test_fifo_is_refused_by_what_was_opened_not_by_an_earlier_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO swapped in between the stat and the open: the fstat of the opened descriptor decides."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if str(p) == str(fifo) else real_stat(p, *a, **k))
    try:
        _refused(lambda: read_regular(fifo, limit=1 << 20, what=WHAT), "FIFO")
    finally:
        _unblock_fifo(fifo)


def test_dev_zero_is_refused_as_a_device() -> None:
    _refused(lambda: read_regular("/dev/zero", limit=4096, what=WHAT), "/dev/zero", "character device", "regular file")


def test_symlink_to_dev_zero_is_refused_either_way(tmp_path: Path) -> None:
    link = tmp_path / "current"
    link.symlink_to("/dev/zero")
    _refused(lambda: read_regular(link, limit=4096, what=WHAT, follow_symlinks=False), str(link), "symbolic link")
    _refused(lambda: read_regular(link, limit=4096, what=WHAT, follow_symlinks=True), str(link), "character device",
             "target of a symbolic link")


def test_symlink_to_a_regular_file_is_refused_without_following(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    _refused(lambda: read_regular(tmp_path / "link", limit=10, what=WHAT, follow_symlinks=False), "symbolic link")


def test_directory_is_refused(tmp_path: Path) -> None:
    _refused(lambda: read_regular(tmp_path, limit=10, what=WHAT), str(tmp_path), "a directory")


def test_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    _refused(lambda: read_regular(tmp_path / "f" / "g", limit=10, what=WHAT), "not a directory")


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 4097)
    _refused(lambda: read_regular(f, limit=4096, what=WHAT), str(f), "4 KiB allowed")
    f.write_bytes(b"x" * 4096)
    assert len(read_regular(f, limit=4096, what=WHAT)) == 4096


def test_sparse_10_gb_file_is_refused_by_its_size_without_reading(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    with open(f, "wb") as fh:
        fh.truncate(10 << 30)
    _refused(lambda: read_regular(f, limit=16 << 20, what=WHAT), "10 GiB", "16 MiB")


def test_a_file_that_lies_about_its_size_is_cut_off_by_reading() -> None:
    """Files under /proc claim size 0; at most limit + 1 bytes are read all the same."""
    assert os.stat("/proc/self/maps").st_size == 0
    _refused(lambda: read_regular("/proc/self/maps", limit=16, what=WHAT), "more than 16 bytes")


def test_unreadable_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    real_open = os.open

    def deny(p: Any, *a: Any, **k: Any) -> int:
        if str(p) == str(f):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    _refused(lambda: read_regular(f, limit=10, what=WHAT), "cannot be read: Permission denied", "fix its permissions")


# ----------------------------------------------------------------------------------------------------------
# write_nofollow


def test_write_creates_and_replaces_atomically_with_exact_mode(tmp_path: Path) -> None:
    f = tmp_path / "out.json"
    write_nofollow(f, b"one", mode=0o600)
    assert f.read_bytes() == b"one" and stat.S_IMODE(f.stat().st_mode) == 0o600
    old = os.open(f, os.O_RDONLY)
    try:
        write_nofollow(f, b"two")
        assert f.read_bytes() == b"two" and stat.S_IMODE(f.stat().st_mode) == 0o644
        assert os.read(old, 10) == b"one"  # replaced (a new inode), not rewritten in place
    finally:
        os.close(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_write_refuses_a_symlink_target_and_leaves_its_target_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "d").mkdir()
    link = tmp_path / "d" / "state.json"
    link.symlink_to(victim)
    _refused(lambda: write_nofollow(link, b"evil"), str(link), "symbolic link")
    assert victim.read_text() == "precious" and link.is_symlink()
    dangling = tmp_path / "d" / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    _refused(lambda: write_nofollow(dangling, b"evil"), "symbolic link")
    assert not (tmp_path / "nowhere").exists()


def test_write_refuses_a_fifo_or_directory_target(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    try:
        _refused(lambda: write_nofollow(tmp_path / "fifo", b"x"), "FIFO")
    finally:
        _unblock_fifo(tmp_path / "fifo")
    _refused(lambda: write_nofollow(tmp_path / "dir", b"x"), "a directory")


def test_write_refuses_a_symlinked_parent(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "state").symlink_to(outside)
    _refused(lambda: write_nofollow(tmp_path / "state" / "f", b"x"), str(tmp_path / "state"), "symbolic link")
    assert list(outside.iterdir()) == []


def test_write_below_a_root_refuses_a_symlink_anywhere_between(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").symlink_to(outside)
    _refused(lambda: write_nofollow(root / "a" / "b" / "f", b"x", root=root), str(root / "a"), "symbolic link")
    _refused(lambda: write_nofollow("a/b/f", b"x", root=root), str(root / "a"), "symbolic link")
    assert list((outside / "b").iterdir()) == []
    _refused(lambda: write_nofollow(tmp_path / "elsewhere", b"x", root=root), "is not inside")
    (root / "real").mkdir()
    write_nofollow("real/f", b"ok", root=root)
    assert (root / "real" / "f").read_bytes() == b"ok"


def test_write_into_a_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_nofollow(tmp_path / "no" / "f", b"x")
    with pytest.raises(FileNotFoundError):
        write_nofollow(tmp_path / "no" / "f", b"x", root=tmp_path)


# ----------------------------------------------------------------------------------------------------------
# append_line_nofollow


def test_append_sanitises_and_cuts_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    append_line_nofollow(log, "first\tline\r\nINJECTED \x1b[31mred\x1b[0m\x00\u2028\u202eend")
    append_line_nofollow(log, "x" * 50, limit_line=10)
    assert log.read_text() == "first\tlineINJECTED [31mred[0mend\n" + "x" * 9 + "…\n"


def test_append_refuses_symlinks_fifos_devices_and_hard_links(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "link").symlink_to(victim)
    _refused(lambda: append_line_nofollow(tmp_path / "link", "evil"), "symbolic link")
    (tmp_path / "null").symlink_to("/dev/null")
    _refused(lambda: append_line_nofollow(tmp_path / "null", "evil"), "symbolic link")
    os.mkfifo(tmp_path / "fifo")
    try:
        _refused(lambda: append_line_nofollow(tmp_path / "fifo", "evil"), "FIFO")
    finally:
        _unblock_fifo(tmp_path / "fifo")
    os.link(victim, tmp_path / "hard")
    _refused(lambda: append_line_nofollow(tmp_path / "hard", "evil"), "hard links")
    assert victim.read_text() == "precious\n"


def test_append_refuses_a_symlinked_parent(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "logs").symlink_to(outside)
    _refused(lambda: append_line_nofollow(tmp_path / "logs" / "w0.log", "x"), str(tmp_path / "logs"), "symbolic link")
    root = tmp_path / "root"
    root.mkdir()
    (root / "logs").symlink_to(outside)
    _refused(lambda: append_line_nofollow("logs/w0.log", "x", root=root), "symbolic link")
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# ensure_dir_nofollow


def test_ensure_dir_creates_below_root_and_accepts_existing(tmp_path: Path) -> None:
    ensure_dir_nofollow(tmp_path / "a" / "b" / "c", root=tmp_path)
    ensure_dir_nofollow(tmp_path / "a" / "b" / "c", root=tmp_path)
    ensure_dir_nofollow("a/x", root=tmp_path)
    ensure_dir_nofollow(tmp_path, root=tmp_path)
    assert (tmp_path / "a" / "b" / "c").is_dir() and (tmp_path / "a" / "x").is_dir()


def test_ensure_dir_refuses_a_symlinked_component_naming_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "state").symlink_to(outside)
    _refused(lambda: ensure_dir_nofollow(root / "a" / "state" / "feat", root=root), str(root / "a" / "state"), "symbolic link")
    assert list(outside.iterdir()) == []
    (root / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    _refused(lambda: ensure_dir_nofollow(root / "a" / "dangling" / "x", root=root), "symbolic link")
    assert not (tmp_path / "nowhere").exists()


def test_ensure_dir_refuses_a_file_component_and_paths_outside_root(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    _refused(lambda: ensure_dir_nofollow(tmp_path / "f" / "x", root=tmp_path), str(tmp_path / "f"), "a regular file")
    _refused(lambda: ensure_dir_nofollow(tmp_path / ".." / "elsewhere", root=tmp_path), "is not inside")


def test_ensure_dir_trusts_the_root_itself(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real")
    ensure_dir_nofollow(tmp_path / "root" / "x", root=tmp_path / "root")
    assert (tmp_path / "real" / "x").is_dir()


# ----------------------------------------------------------------------------------------------------------
# remove_tree_nofollow


def test_rmtree_is_descriptor_based_here() -> None:
    assert shutil.rmtree.avoids_symlink_attacks


def test_remove_tree_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "link").symlink_to(outside)
    (tree / "dev").symlink_to("/dev/null")
    os.mkfifo(tree / "fifo")
    remove_tree_nofollow(tree)
    assert not tree.exists() and (outside / "keep").exists()
    remove_tree_nofollow(tree)  # nothing there: nothing to do


def test_remove_tree_of_a_link_removes_only_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    remove_tree_nofollow(tmp_path / "link")
    assert not (tmp_path / "link").is_symlink() and (tmp_path / "real" / "keep").exists()


def _in_child_as(uid: int, fn: Callable[[], Any]) -> str:
    """Run ``fn`` in a forked child as ``uid`` (we are root); "" on success, else the error line."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()

    def child() -> None:
        os.setgid(uid)
        os.setuid(uid)
        try:
            fn()
            out.put("")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out.put(f"{type(exc).__name__}: {exc}")

    p = ctx.Process(target=child)
    p.start()
    result = out.get(timeout=60)
    p.join(60)
    return result


def _read_only_tree(tree: Path) -> None:
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "b" / "f").chmod(0o444)
    (tree / "a" / "locked").mkdir()
    (tree / "a" / "locked" / "g").write_text("x")
    (tree / "a" / "locked").chmod(0o000)
    (tree / "a" / "b").chmod(0o555)
    (tree / "a").chmod(0o555)


NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Any:
    """A directory an unprivileged child can use (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="safefs-"))
    d.chmod(0o777)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o777)
    shutil.rmtree(d)


def test_remove_tree_handles_directories_made_read_only(shared_tmp: Path) -> None:
    tree = shared_tmp / "tree"
    if os.geteuid() != 0:
        _read_only_tree(tree)
        remove_tree_nofollow(tree)
    else:  # root ignores permissions: do it as an ordinary user, as the host usually runs
        assert _in_child_as(NOBODY, lambda: (_read_only_tree(tree), remove_tree_nofollow(tree))) == ""
    assert not tree.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files another user cannot remove")
def test_remove_tree_reports_what_another_user_owns(shared_tmp: Path) -> None:
    tree = shared_tmp / "tree"
    (tree / "mine").mkdir(parents=True)
    (tree / "mine" / "f").write_text("x")
    (tree / ".git-worktree").mkdir()  # what Docker makes for a nested mount point: root's
    (tree / ".git-worktree" / "commondir").write_text("x")
    os.chown(tree, NOBODY, NOBODY)
    os.chown(tree / "mine", NOBODY, NOBODY)
    os.chown(tree / "mine" / "f", NOBODY, NOBODY)
    error = _in_child_as(NOBODY, lambda: remove_tree_nofollow(tree))
    assert error.startswith("FileAccessError: ") and "\n" not in error
    assert f"{tree}: could not remove 1 entry below it, e.g. {tree}/.git-worktree/commondir" in error
    assert "owned by uid 0" in error and "sudo rm -rf" in error
    assert not (tree / "mine").exists()  # everything else went


def test_remove_tree_reports_left_overs_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for name in ("x", "y", "z"):
        (tree / "d" / name).write_text("x")
    real_unlink = os.unlink

    def unlink(p: Any, *a: Any, **k: Any) -> None:
        if str(p) in ("x", "y"):
            raise PermissionError(1, "Operation not permitted", str(p))
        real_unlink(p, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    message = _refused(lambda: remove_tree_nofollow(tree), f"{tree}: could not remove 2 entries below it, e.g. {tree}/d/x")
    assert "Operation not permitted" in message
    assert sorted(p.name for p in (tree / "d").iterdir()) == ["x", "y"]


def test_errors_name_the_path_first(tmp_path: Path) -> None:
    with pytest.raises(FileAccessError) as info:
        read_regular(tmp_path, limit=1, what=WHAT)
    assert info.value.path == str(tmp_path) and str(info.value).startswith(f"{tmp_path}: {WHAT} is a directory")
