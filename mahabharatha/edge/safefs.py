"""Reading and writing files that someone else may have planted: bounded, regular files only, no symlinks.

A worker container can write into the directories it shares with the host (its worktree, the state
directory, the logs). Anything there may be a FIFO (an ``open()`` that never returns), a device (``/dev/zero``
reads forever), a symbolic link to a file of the user's, or a sparse file of terabytes. The functions here
are how the host touches such paths:

- :func:`read_regular` reads at most ``limit`` bytes of a regular file, never blocks on a FIFO, never reads a
  device, optionally never follows a final symlink;
- :func:`write_nofollow` replaces a file atomically without writing through a symlink;
- :func:`append_line_nofollow` appends one sanitised line to a regular file without following a symlink;
- :func:`ensure_dir_nofollow` creates directories below a trusted root without following a symlink;
- :func:`remove_tree_nofollow` removes a tree without following symlinks, including directories a container
  made read-only.

Directories are walked with ``dir_fd``-relative calls: each component below the trusted root is opened with
``O_DIRECTORY | O_NOFOLLOW`` from its parent's descriptor, so a symlink swapped in for a directory is refused
rather than followed, whatever the timing. Every problem is a :class:`~mahabharatha.errors.FileAccessError`
(one line: the path, what is wrong, the fix); a missing file stays a :class:`FileNotFoundError` (or ``None``
with ``missing_ok=True``) so callers can say "run X first".

Standard library only (plus :mod:`mahabharatha.errors`); POSIX (Linux and macOS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any, Literal, overload

from ..errors import FileAccessError

__all__ = ["read_regular", "write_nofollow", "append_line_nofollow", "ensure_dir_nofollow", "remove_tree_nofollow"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


# ----------------------------------------------------------------------------------------------------------
# Reading


@overload
def read_regular(
    path: str | os.PathLike[str], *, limit: int, what: str, follow_symlinks: bool = ..., missing_ok: Literal[False] = ...
) -> bytes: ...
@overload
def read_regular(
    path: str | os.PathLike[str], *, limit: int, what: str, follow_symlinks: bool = ..., missing_ok: bool
) -> bytes | None: ...


def read_regular(
    path: str | os.PathLike[str], *, limit: int, what: str, follow_symlinks: bool = True, missing_ok: bool = False
) -> bytes | None:
    """The content of the regular file ``path``, at most ``limit`` bytes. ``what`` names it in messages
    ("the task graph").

    Raises :class:`FileNotFoundError` when ``path`` does not exist (returns None instead with
    ``missing_ok=True``) and :class:`FileAccessError` when it is a FIFO, a device, a socket or a directory
    (refused without reading; a FIFO never blocks), a symbolic link while ``follow_symlinks`` is False (only
    the last component: the directories above are the caller's to trust), larger than ``limit`` (by its size
    and by what it yields: files under ``/proc`` claim size 0), or unreadable. With ``follow_symlinks`` True
    a link is followed, and its target must be a regular file within the limit all the same.
    """
    name = os.fspath(path)
    # Look before opening: opening a device can have effects of its own (a tape rewinds, a modem hangs up).
    try:
        st = os.stat(name, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    except OSError as exc:
        raise _read_error(name, what, exc, follow_symlinks) from None
    _check_regular(name, what, st, limit, follow_symlinks)
    flags = os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC | _NOCTTY | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:  # removed since the stat
        if missing_ok:
            return None
        raise
    except OSError as exc:
        raise _read_error(name, what, exc, follow_symlinks) from None
    try:
        _check_regular(name, what, os.fstat(fd), limit, follow_symlinks)  # what we opened is what counts
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise _read_error(name, what, exc, follow_symlinks) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileAccessError(
            name, f"{what} holds more than {_size(limit)}, the most that is read", hint=f"shrink it below {_size(limit)}"
        )
    return data


def _check_regular(name: str, what: str, st: os.stat_result, limit: int, follow_symlinks: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise FileAccessError(
            name, f"{what} is a symbolic link, which is not followed here", hint="replace the link with the file itself"
        )
    if not stat.S_ISREG(st.st_mode):
        target = " (the target of a symbolic link)" if follow_symlinks and os.path.islink(name) else ""
        raise FileAccessError(
            name, f"{what} is {_kind(st.st_mode)}{target}, expected a regular file", hint="replace it with a regular file"
        )
    if st.st_size > limit:
        raise FileAccessError(
            name,
            f"{what} is {_size(st.st_size)}, more than the {_size(limit)} allowed",
            hint=f"shrink it below {_size(limit)}",
        )


def _read_error(name: str, what: str, exc: OSError, follow_symlinks: bool) -> FileAccessError:
    if exc.errno == errno.ELOOP and not follow_symlinks:
        return FileAccessError(
            name, f"{what} is a symbolic link, which is not followed here", hint="replace the link with the file itself"
        )
    if exc.errno == errno.ENOTDIR:
        return FileAccessError(name, "part of its path is a file, not a directory", hint="move that file away")
    if isinstance(exc, PermissionError):
        return FileAccessError(name, f"{what} cannot be read: {_why(exc)}", hint="fix its permissions")
    return FileAccessError(name, f"{what} cannot be read: {_why(exc)}", hint="check the file and the disk")


# ----------------------------------------------------------------------------------------------------------
# Directories, walked without following symlinks


def _components(path: str, root: str) -> list[str]:
    """The components of ``path`` below ``root`` (lexically normalised; ``path`` may be relative to ``root``)."""
    root_abs = os.path.abspath(root)
    full = os.path.abspath(os.path.join(root_abs, path))
    rel = os.path.relpath(full, root_abs)
    if rel == ".":
        return []
    parts = rel.split(os.sep)
    if parts[0] == os.pardir:
        raise FileAccessError(path, f"is not inside {root_abs}", hint="use a path below that directory")
    return parts


def _describe_dir_failure(shown: str, exc: OSError, parent_fd: int, name: str) -> FileAccessError:
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            return FileAccessError(
                shown, "is a symbolic link where a directory must be; it is not followed", hint="replace it with a directory"
            )
        kind = _kind(st.st_mode) if st is not None else "not a directory"
        kind = "a regular file" if st is not None and stat.S_ISREG(st.st_mode) else kind
        return FileAccessError(shown, f"is {kind} where a directory must be", hint="move it away")
    if isinstance(exc, PermissionError):
        return FileAccessError(shown, f"cannot be opened: {_why(exc)}", hint="fix its permissions")
    return FileAccessError(shown, f"cannot be opened: {_why(exc)}", hint="check the directory and the disk")


def _open_dir(path: str, *, root: str | None, create: bool = False, mode: int = 0o777) -> int:
    """A descriptor of directory ``path``. With ``root``: ``root`` is opened (and trusted, links and all), then
    every component below it is opened from its parent with ``O_NOFOLLOW`` (and first made, with ``create``).
    Without ``root``: ``path`` itself is opened with ``O_NOFOLLOW`` (its ancestors are trusted)."""
    if root is None:
        try:
            return os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            parent, name = os.path.split(os.path.abspath(path))
            try:
                pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            except OSError:
                raise _describe_dir_failure(path, exc, -1, path) from None
            try:
                raise _describe_dir_failure(path, exc, pfd, name) from None
            finally:
                os.close(pfd)
    parts = _components(path, root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    shown = os.path.abspath(root)
    try:
        for name in parts:
            shown = os.path.join(shown, name)
            if create:
                try:
                    os.mkdir(name, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise _describe_dir_failure(shown, exc, fd, name) from None
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown) from None
            except OSError as exc:
                raise _describe_dir_failure(shown, exc, fd, name) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _parent_dir(path: str | os.PathLike[str], root: str | None) -> Iterator[tuple[int, str, str]]:
    """(descriptor of the parent directory, file name, path as shown) for a file ``path``."""
    shown = os.fspath(path)
    parent, name = os.path.split(shown)
    if not name or name in (os.curdir, os.pardir):
        raise FileAccessError(shown, "names a directory, not a file", hint="give the path of a file")
    if root is not None:
        _components(shown, root)  # inside root, or a clear error
        parent = os.path.join(os.path.abspath(root), parent) if not os.path.isabs(parent) else parent
    fd = _open_dir(parent or os.curdir, root=root)
    try:
        yield fd, name, shown
    finally:
        os.close(fd)


def ensure_dir_nofollow(path: str | os.PathLike[str], *, root: str | os.PathLike[str], mode: int = 0o777) -> None:
    """Make directory ``path`` and its missing parents below the trusted directory ``root`` (``path`` is
    absolute or relative to ``root``). No symlink below ``root`` is followed: a component that is a symbolic
    link, a file or anything but a directory is a :class:`FileAccessError` naming it. ``mode`` is masked by
    the umask, as for :func:`os.makedirs`. ``root`` itself must exist (FileNotFoundError otherwise)."""
    os.close(_open_dir(os.fspath(path), root=os.fspath(root), create=True, mode=mode))


# ----------------------------------------------------------------------------------------------------------
# Writing


def write_nofollow(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, root: str | os.PathLike[str] | None = None
) -> None:
    """Create or atomically replace the file ``path`` with ``data``: a temporary file next to it (created
    with ``O_EXCL | O_NOFOLLOW``), fsynced, renamed over ``path``. Readers see the old or the new content.

    The file ends up with exactly ``mode`` (the umask does not apply). Refused with a
    :class:`FileAccessError`: ``path`` exists and is a symbolic link or not a regular file; the parent
    directory is a symbolic link or not a directory; with ``root`` (a trusted directory ``path`` lies below),
    any directory between ``root`` and the file is a symbolic link. A missing parent directory is a
    FileNotFoundError (make it with :func:`ensure_dir_nofollow`).
    """
    with _parent_dir(path, None if root is None else os.fspath(root)) as (dfd, name, shown):
        _refuse_existing_non_regular(dfd, name, shown, "replace")
        tmp = f".{name[:100]}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600, dir_fd=dfd)
        except OSError as exc:
            raise FileAccessError(shown, f"cannot be written: {_why(exc)}", hint="fix the directory's permissions") from None
        try:
            try:
                os.fchmod(fd, mode)
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            if isinstance(exc, OSError):
                raise FileAccessError(shown, f"cannot be written: {_why(exc)}", hint="check the directory and the disk") from None
            raise
        with contextlib.suppress(OSError):
            os.fsync(dfd)  # the rename itself survives a crash


def _refuse_existing_non_regular(dfd: int, name: str, shown: str, verb: str) -> os.stat_result | None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise FileAccessError(
            shown, f"is a symbolic link; refusing to {verb} it or write through it", hint="remove the link"
        )
    if not stat.S_ISREG(st.st_mode):
        raise FileAccessError(shown, f"is {_kind(st.st_mode)}, expected a regular file", hint="move it away")
    return st


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Beside the control characters (Cc): Unicode line breaks, and the bidi controls that make a log line read
# differently from what it holds.
_DROPPED = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _sanitise(line: str, limit: int) -> str:
    """``line`` without control characters (tab kept), Unicode line breaks or bidi controls, cut to at most
    ``limit`` characters (the last one then is "…")."""
    clean = "".join(ch for ch in line if ch == "\t" or (unicodedata.category(ch) != "Cc" and ch not in _DROPPED))
    if len(clean) <= limit:
        return clean
    return clean[: limit - 1] + "…" if limit > 0 else ""


def append_line_nofollow(
    path: str | os.PathLike[str], line: str, *, limit_line: int = 2000, root: str | os.PathLike[str] | None = None
) -> None:
    """Append ``line`` plus a newline to the regular file ``path`` (created when missing, mode 0644 minus the
    umask), in one ``O_APPEND`` write. Control characters other than tab, Unicode line breaks and bidi
    controls are dropped
    and the line is cut to ``limit_line`` characters, so one call is always one line. Refused with a
    :class:`FileAccessError`: ``path`` is a symbolic link, not a regular file, or has other hard links (it
    could be someone else's file); the parent is a symbolic link; with ``root``, any directory between
    ``root`` and the file is a symbolic link."""
    data = (_sanitise(line, limit_line) + "\n").encode("utf-8", "replace")
    with _parent_dir(path, None if root is None else os.fspath(root)) as (dfd, name, shown):
        _refuse_existing_non_regular(dfd, name, shown, "append to")  # never even open a device or a FIFO
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC | _NOCTTY
        try:
            fd = os.open(name, flags, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileAccessError(shown, "is a symbolic link; refusing to append to it", hint="remove the link") from None
            raise FileAccessError(shown, f"cannot be appended to: {_why(exc)}", hint="fix its permissions") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileAccessError(shown, f"is {_kind(st.st_mode)}, expected a regular file", hint="move it away")
            if st.st_nlink > 1:
                raise FileAccessError(
                    shown, f"has {st.st_nlink} hard links, so it may be another file's; refusing to append to it",
                    hint="move it away",
                )
            _write_all(fd, data)
        except OSError as exc:
            raise FileAccessError(shown, f"cannot be appended to: {_why(exc)}", hint="check the file and the disk") from None
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------------------------------------
# Removing


def remove_tree_nofollow(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything below it without following a symlink (a link is removed, never its
    target; ``path`` itself being a link or a file removes just that). Nothing there: nothing to do.

    Directories a container made read-only (or unreadable) are given back their owner's ``rwx`` and the
    removal retried. What still cannot be removed (typically files a root container created, when the host
    runs as another user) is one :class:`FileAccessError` naming how many entries are left, one of them, why
    and its owner. Relies on :func:`shutil.rmtree`'s descriptor-based walk (``avoids_symlink_attacks``);
    where the platform lacks it this refuses rather than risk following a link swapped in mid-walk.
    """
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(top)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise FileAccessError(top, f"cannot be removed: {_why(exc)}", hint="fix the permissions of its directory") from None
        return
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux and macOS have it
        raise FileAccessError(
            top, "cannot be removed safely here: this platform's shutil.rmtree may follow symbolic links",
            hint="remove it by hand",
        )
    fixed: set[str] = set()
    failures: dict[str, OSError] = {}

    def onerror(func: Callable[..., Any], failed: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if not isinstance(exc, OSError):  # pragma: no cover - rmtree only reports OSErrors
            raise exc
        failures[failed] = exc
        if isinstance(exc, PermissionError):
            # Cannot list or open it: the directory itself needs r-x; cannot unlink or rmdir it: its parent w-x.
            # Only directories of the tree are changed (never the one holding ``top``).
            target = failed if func in (os.open, os.scandir, os.listdir) else os.path.dirname(failed)
            inside = target == top or target.startswith(top.rstrip(os.sep) + os.sep)
            if inside and target not in fixed and _add_owner_rwx(target):
                fixed.add(target)

    for _ in range(1000):  # each pass reaches at least one more level of read-only directories
        failures.clear()
        before = len(fixed)
        _rmtree(top, onerror)
        if not os.path.lexists(top):
            return
        if len(fixed) == before:
            break
    raise _left_over(top, failures)


def _rmtree(top: str, onerror: Callable[[Callable[..., Any], str, BaseException], None]) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(top, onexc=onerror)
    else:
        shutil.rmtree(top, onerror=lambda func, p, info: onerror(func, p, info[1]))


def _add_owner_rwx(directory: str) -> bool:
    """Give ``directory`` its owner's rwx without following a symlink. Whether the mode changed."""
    o_path = getattr(os, "O_PATH", 0)
    try:
        fd = os.open(directory, (o_path or os.O_RDONLY) | os.O_NOFOLLOW | _CLOEXEC | (0 if o_path else os.O_DIRECTORY))
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IRWXU == stat.S_IRWXU:
            return False
        new = stat.S_IMODE(st.st_mode) | stat.S_IRWXU
        try:
            if o_path:  # an O_PATH descriptor cannot fchmod; its /proc link names exactly this inode
                os.chmod(f"/proc/self/fd/{fd}", new)
            else:
                os.fchmod(fd, new)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)


def _left_over(top: str, failures: dict[str, OSError]) -> FileAccessError:
    # "Directory not empty" only follows from the other failures.
    failures = {p: e for p, e in failures.items() if e.errno != errno.ENOTEMPTY} or failures
    if not failures:
        return FileAccessError(top, "could not be removed completely", hint=f"remove it by hand: rm -rf {top}")
    example, exc = sorted(failures.items())[0]
    owner = ""
    with contextlib.suppress(OSError):
        uid = os.lstat(example).st_uid
        if uid != os.geteuid():
            owner = f", owned by uid {uid}"
    if owner:
        hint = f"a container running as another user made them; remove them as that user, e.g. `sudo rm -rf {top}`"
    else:
        hint = f"fix their permissions and remove them: rm -rf {top}"
    return FileAccessError(
        top,
        f"could not remove {len(failures)} entr{'y' if len(failures) == 1 else 'ies'} below it, e.g. {example} "
        f"({_why(exc)}{owner})",
        hint=hint,
    )
