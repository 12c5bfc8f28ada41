"""Host logs of worker output: bounded lines, a bounded file, secrets redacted, never through a symlink.

What a worker prints is untrusted input: a line without a newline must not grow without bound in the
orchestrator's memory, and a flood must not fill the disk. :class:`LineCutter` splits a byte stream into lines
of at most :data:`MAX_LINE` bytes (a longer one is cut, marked, and the rest follows as further lines), never
cutting through a secret, so redaction still sees each secret whole. :class:`HostLog` appends them to the
host log up to :data:`MAX_LOG_BYTES` per run of a worker, then notes that further output was dropped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

__all__ = ["LineCutter", "HostLog", "MAX_LINE", "MAX_LOG_BYTES"]

MAX_LINE = 64 << 10
MAX_LOG_BYTES = 256 << 20
CUT_MARK = " …[line cut]\n"


class LineCutter:
    """Feed bytes, get complete lines back (each ending in a newline), none longer than ``max_line``.

    ``secrets`` are the byte strings a cut must not split (the redactor replaces them whole)."""

    def __init__(self, secrets: Iterable[bytes] = (), max_line: int = MAX_LINE) -> None:
        self.secrets = [s for s in secrets if s]
        self.hold = max((len(s) for s in self.secrets), default=0)
        self.max_line = max(max_line, 2 * self.hold + 1)
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self.pending += chunk
        out: list[bytes] = []
        while True:
            end = self.pending.find(b"\n")
            if 0 <= end < self.max_line:
                out.append(bytes(self.pending[: end + 1]))
                del self.pending[: end + 1]
                continue
            if len(self.pending) < self.max_line:
                return out
            cut = self._boundary(self.max_line - self.hold)
            out.append(bytes(self.pending[:cut]) + CUT_MARK.encode())
            del self.pending[:cut]

    def _boundary(self, at: int) -> int:
        """``at``, moved back to the start of any secret that would straddle it."""
        for secret in self.secrets:
            start = self.pending.find(secret, max(0, at - len(secret) + 1), at + len(secret) - 1)
            if 0 <= start < at:
                at = start
        return max(at, 1)

    def rest(self) -> bytes:
        """What is left at the end of the stream (a last line without a newline)."""
        data, self.pending = bytes(self.pending), bytearray()
        return data


class HostLog:
    """Append-only host log of one worker (opened without following a symlink; regular files only)."""

    def __init__(self, path: str, redact: Callable[[str], str], limit: int = MAX_LOG_BYTES) -> None:
        self.path = path
        self.redact = redact
        self.limit = limit
        self.written = 0
        self.full = False
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file")
        self.fh = os.fdopen(fd, "ab")

    def write(self, raw: bytes) -> str:
        """Write one line (redacted); return it as text (for callers that look at lines, e.g. the ready line)."""
        text = self.redact(raw.decode("utf-8", "replace"))
        if self.full:
            return text
        data = text.encode("utf-8")
        if self.written + len(data) > self.limit:
            self.full = True
            data = f"[mahabharatha: this worker's log reached {self.limit >> 20} MiB; further output is dropped]\n".encode()
        self.fh.write(data)
        self.fh.flush()
        self.written += len(data)
        return text

    def close(self) -> None:
        self.fh.close()
