"""The event journal: every run of a feature appends its typed events (:mod:`mahabharatha.events`) to one
append-only JSON-lines file, ``.mahabharatha/journal/<feature>.jsonl``; a resumed run continues the same file.

One line per event, the event's own JSON with a UTC timestamp first::

    {"ts":"2026-12-01T09:12:03.120Z","event":"task_done","task":"T1","worker":0,"commit":"3f2a..."}

The writer never follows a symbolic link: the directories below the repository are opened one by one with
``O_NOFOLLOW``, the file with ``O_NOFOLLOW | O_APPEND`` and kept only when it is a regular file with a single
link; each event is one ``write`` (so lines of concurrent writers never interleave) and the file is fsynced
when the run ends. The reader (:func:`read_entries`, :func:`follow_entries`) opens it the same way and skips
lines it cannot decode (a newer version's event, a torn last line), so ``mahabharatha events``, the live view
and the report work from any journal.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import NamedTuple

import msgspec

from .. import events as E
from ..errors import FileAccessError
from .safefs import ensure_dir_nofollow

__all__ = ["JournalWriter", "Entry", "journal_path", "open_below", "read_entries", "follow_entries", "read_lines"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_MAX_LINE = 1 << 20  # a line longer than this is not ours: skipped by readers


def journal_dir(repo: str) -> str:
    return os.path.join(repo, ".mahabharatha", "journal")


def journal_path(repo: str, feature: str) -> str:
    """``<repo>/.mahabharatha/journal/<feature>.jsonl``."""
    return os.path.join(journal_dir(repo), f"{feature}.jsonl")


class Entry(NamedTuple):
    ts: float  # seconds since the epoch (UTC)
    event: E.Event


class _Stamp(msgspec.Struct):
    ts: str = ""


_decode_event = msgspec.json.Decoder(E.Event).decode
_decode_stamp = msgspec.json.Decoder(_Stamp).decode
_encode = msgspec.json.Encoder().encode


def _stamp(now: float) -> bytes:
    whole = int(now)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((now - whole) * 1000):03d}Z"
    return text.encode()


def _parse_ts(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


def _open_parent(repo: str, path: str) -> tuple[int, str]:
    """A descriptor of ``path``'s directory, opened from ``repo`` component by component without following
    links, and the file name."""
    rel = os.path.relpath(os.path.dirname(path), repo)
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for name in [] if rel == os.curdir else rel.split(os.sep):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise FileAccessError(os.path.join(repo, rel), "has a symbolic link or a file where a directory must be; it is not followed", hint="move it away") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, os.path.basename(path)


def open_below(repo: str, path: str, flags: int, mode: int = 0o600) -> int:
    """A descriptor of the regular file ``path`` below ``repo``, opened without following any link below
    ``repo`` (FileAccessError for a link, a FIFO, a device; FileNotFoundError when missing)."""
    dfd, name = _open_parent(repo, path)
    try:
        try:  # never even open a FIFO or a device (opening one can block or act)
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise FileAccessError(path, "is a symbolic link; the journal is never written or read through one", hint="remove the link")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise FileAccessError(path, "is not a regular file; refusing to use it as the journal", hint="move it away")
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC | _NOCTTY, mode, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileAccessError(path, "is a symbolic link; the journal is never written or read through one", hint="remove the link") from None
            raise
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_nlink > 1 and flags & os.O_WRONLY:
        why = f"has {st.st_nlink} hard links, so it may be another file's"
    if why:
        os.close(fd)
        raise FileAccessError(path, f"{why}; refusing to use it as the journal", hint="move it away")
    os.set_blocking(fd, True)
    return fd


class JournalWriter:
    """Appends events to a feature's journal; thread-safe (the orchestrator emits from several threads)."""

    def __init__(self, repo: str, feature: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = journal_path(repo, feature)
        self._clock = clock
        self._lock = threading.Lock()
        ensure_dir_nofollow(journal_dir(repo), root=repo, mode=0o700)
        self._fd: int | None = open_below(repo, self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def append(self, event: E.Event) -> None:
        body = _encode(event)  # b'{"event":...}'
        with self._lock:
            if self._fd is None:
                return
            line = b'{"ts":"' + _stamp(self._clock()) + b'",' + body[1:] + b"\n"
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """fsync and close (the run's end); later appends are dropped."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _decode(line: bytes) -> Entry | None:
    try:
        event = _decode_event(line)
        return Entry(_parse_ts(_decode_stamp(line).ts), event)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _lines(fd: int, *, whole_only: bool) -> Iterator[bytes]:
    """Complete lines from ``fd``'s current offset on; a last line without its newline (still being
    written) is left for the next call when ``whole_only``."""
    rest = b""
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            if 0 < len(line) <= _MAX_LINE:
                yield line
        if len(rest) > _MAX_LINE:
            rest = b""
    if rest:
        if whole_only:
            os.lseek(fd, -len(rest), os.SEEK_CUR)
        elif len(rest) <= _MAX_LINE:
            yield rest


def read_lines(repo: str, feature: str) -> Iterator[bytes]:
    """The journal's raw lines (none when there is no journal yet)."""
    try:
        fd = open_below(repo, journal_path(repo, feature), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        yield from _lines(fd, whole_only=False)
    finally:
        os.close(fd)


def read_entries(repo: str, feature: str) -> list[Entry]:
    """Every event of the journal that this version understands, in order."""
    return [entry for entry in map(_decode, read_lines(repo, feature)) if entry is not None]


def follow_entries(
    repo: str, feature: str, *, active: Callable[[], bool], raw: bool = False, interval: float = 0.25,
) -> Iterator[bytes | Entry]:
    """The journal's lines (``raw``) or entries, then new ones as they are appended while ``active()``."""
    path = journal_path(repo, feature)
    fd = None
    try:
        while True:
            running = active()  # asked before reading, so the last lines are never missed
            if fd is None:
                try:
                    fd = open_below(repo, path, os.O_RDONLY)
                except FileNotFoundError:
                    fd = None
            got = False
            if fd is not None:
                for line in _lines(fd, whole_only=True):
                    got = True
                    if raw:
                        yield line
                    else:
                        entry = _decode(line)
                        if entry is not None:
                            yield entry
            if not running:
                return
            if not got:
                time.sleep(interval)
    finally:
        if fd is not None:
            os.close(fd)
