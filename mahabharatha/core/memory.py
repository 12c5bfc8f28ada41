"""Docker memory sizes, parsed exactly the way Docker parses them.

Docker reads ``--memory`` with go-units ``RAMInBytes``: case-insensitive
``^(\\d+(\\.\\d+)*) ?([kmgtp])?i?b?$`` with *binary* multiples (``k`` = 1024), the product truncated to whole
bytes. So ``4g``, ``4gb``, ``4GiB``, ``512m``, ``1.5g``, ``4 g`` and plain byte counts are valid, while
``4x``, ``-1g``, ``""`` and words are not. We accept the forms every go-units version accepts (newer ones
dropped a bare ``i`` suffix and multi-dot numbers), and normalise to the short form users know
(``4GiB`` -> ``4g``) so the dry-run shows one spelling. Docker refuses limits below 6 MiB at container
creation; we refuse them here, before anything starts.
"""

from __future__ import annotations

import re

__all__ = ["parse_memory", "MemoryLimitError", "MIN_MEMORY_BYTES", "MAX_MEMORY_BYTES", "MEMORY_FORMS"]

MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker: "Minimum memory limit allowed is 6MB"
MAX_MEMORY_BYTES = 2**63 - 1  # int64, as Docker stores it

MEMORY_FORMS = "a Docker memory size like 4g, 512m, 1.5g, 4GiB or 1073741824 (bytes), at least 6m"

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}

# number, optional single space, then either a unit letter with optional i/b/ib, or a lone b (bytes).
_MEMORY_RE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kmgtp])(?:i?b?)|b)?", re.IGNORECASE | re.ASCII)


class MemoryLimitError(ValueError):
    """The text is not a memory size Docker would accept; ``str()`` says why in a few words."""


def parse_memory(value: str | int) -> tuple[str, int]:
    """Return ``(normalised, bytes)`` for a Docker memory size, or raise :class:`MemoryLimitError`.

    ``normalised`` is lowercase ``<number><unit>`` with no redundant zeros (``"4GiB"`` -> ``"4g"``,
    ``"1.50g"`` -> ``"1.5g"``, ``"1024b"`` -> ``"1024"``); it parses back to the same byte count.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MemoryLimitError(f"expected text or a whole number, got {type(value).__name__}")
    text = str(value)
    match = _MEMORY_RE.fullmatch(text)
    if match is None:
        raise MemoryLimitError("not a size Docker accepts")
    number, unit = match.group(1), (match.group(2) or "").lower()
    product = float(number) * _UNITS[unit]  # float product, then truncation: exactly what go-units does
    if not product < MAX_MEMORY_BYTES:  # also catches inf from absurdly long numbers
        raise MemoryLimitError("too large")
    size = int(product)
    if size < MIN_MEMORY_BYTES:
        raise MemoryLimitError("below Docker's minimum of 6m")
    return _normalise_number(number) + unit, size


def _normalise_number(number: str) -> str:
    whole, _, frac = number.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole
