"""``.env`` files, parsed the way people write them (python-dotenv conventions), from text.

Handles ``export`` prefixes, single quotes (literal, with ``\\'`` and ``\\\\``), double quotes (escapes
``\\n \\t \\r \\" \\\\ \\$``; other backslashes stay as written), inline ``#`` comments after whitespace
outside quotes, blank and comment lines, CRLF, a UTF-8 BOM, and spaces around ``=``. Quoted values may span
lines. Keys match exactly. A line that cannot be parsed is skipped (never echoed: it may hold a secret), and a
later assignment wins, as in a shell.
"""

from __future__ import annotations

import re

__all__ = ["parse_dotenv"]

_KEY_RE = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.\-]*)[ \t]*=")
_COMMENT_RE = re.compile(r"[ \t]#")
_DOUBLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
_SINGLE_ESCAPES = {"'": "'", "\\": "\\"}


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse ``.env`` text into ``{name: value}``. Pure; never raises for malformed lines."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    result: dict[str, str] = {}
    pos, end = 0, len(text)
    while pos < end:
        m = _KEY_RE.match(text, pos)
        if m is None or "\n" in m.group(0):
            pos = _next_line(text, pos)
            continue
        key, pos = m.group(1), m.end()
        value_start = pos
        while pos < end and text[pos] in " \t":
            pos += 1
        quote = text[pos] if pos < end else ""
        if quote in ("'", '"'):
            value, after = _quoted(text, pos + 1, quote)
            if value is None or not _only_comment(text, after):
                pos = _next_line(text, pos)  # unterminated or trailing junk: skip the line
                continue
            result[key] = value
            pos = _next_line(text, after)
        else:
            line_end = _next_line(text, pos)
            raw = text[value_start:line_end].rstrip("\n")
            comment = _COMMENT_RE.search(raw)  # "#" after whitespace starts a comment; "a#b" is a value
            if comment:
                raw = raw[: comment.start()]
            result[key] = raw.strip(" \t")
            pos = line_end
    return result


def _next_line(text: str, pos: int) -> int:
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl + 1


def _quoted(text: str, pos: int, quote: str) -> tuple[str | None, int]:
    """Read a quoted value starting after the opening quote; return (value, index after closing quote)."""
    escapes = _DOUBLE_ESCAPES if quote == '"' else _SINGLE_ESCAPES
    out: list[str] = []
    end = len(text)
    while pos < end:
        ch = text[pos]
        if ch == "\\" and pos + 1 < end and text[pos + 1] in escapes:
            out.append(escapes[text[pos + 1]])
            pos += 2
        elif ch == quote:
            return "".join(out), pos + 1
        else:
            out.append(ch)
            pos += 1
    return None, end


def _only_comment(text: str, pos: int) -> bool:
    """True when the rest of the line after a closing quote is blank or a ``#`` comment."""
    line_end = text.find("\n", pos)
    rest = text[pos : len(text) if line_end < 0 else line_end]
    stripped = rest.lstrip(" \t")
    return stripped == "" or stripped.startswith("#")
