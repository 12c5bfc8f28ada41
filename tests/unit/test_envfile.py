"""``.env`` parsing: the forms people write, and a round trip against generated files."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.envfile import parse_dotenv


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1", {"A": "1"}),
        ("export A=1\n", {"A": "1"}),
        ("  export   A  =  spaced value  \n", {"A": "spaced value"}),
        ("A='single # not a comment'", {"A": "single # not a comment"}),
        ("A='it\\'s'", {"A": "it's"}),
        ('A="line\\nbreak \\"q\\" \\\\ \\t"', {"A": 'line\nbreak "q" \\ \t'}),
        ('A="kept \\x backslash"', {"A": "kept \\x backslash"}),
        ("A=value # comment", {"A": "value"}),
        ("A=abc#def", {"A": "abc#def"}),
        ("A=#hash", {"A": "#hash"}),
        ("A= # only a comment", {"A": ""}),
        ('A="quoted" # comment', {"A": "quoted"}),
        ("A=", {"A": ""}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("\ufeffA=1", {"A": "1"}),
        ("# comment\n\n   \nA=1\n", {"A": "1"}),
        ('A="multi\nline"\nB=2', {"A": "multi\nline", "B": "2"}),
        ('A="unterminated\nB=2', {"B": "2"}),
        ("A='x' junk\nB=2", {"B": "2"}),
        ("not a line\nB=2", {"B": "2"}),
        ("A=1\nA=2", {"A": "2"}),
        ("export=1", {"export": "1"}),
    ],
)
def test_forms(text, expected):
    assert parse_dotenv(text) == expected


def test_key_match_is_exact():
    env = parse_dotenv("ANTHROPIC_API_KEY_OLD=old\nMY_ANTHROPIC_API_KEY=x\n")
    assert "ANTHROPIC_API_KEY" not in env


_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
_VALUE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\\\"'# \t\n$"),
    max_size=30,
)


def _serialise(key: str, value: str, style: str, export: bool, spacing: str, comment: bool) -> str | None:
    if style == "bare":
        if value != value.strip(" \t") or "\n" in value or " #" in value or "\t#" in value:
            return None
        if value[:1] in ("'", '"', "#"):  # "A = #x" is a comment by design
            return None
        body = value
    elif style == "single":
        body = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    else:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        body = '"' + escaped + '"'
    line = f"{'export ' if export else ''}{key}{spacing}={spacing}{body}"
    if comment:
        line += " # a comment"
    return line


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(_KEY, _VALUE, max_size=6),
    st.data(),
    st.sampled_from(["\n", "\r\n"]),
)
def test_roundtrip_generated_files(pairs, data, newline):
    """Serialise generated pairs in varied styles (quotes, export, spaces, comments, CRLF) and parse back."""
    lines = ["# generated"]
    for key, value in pairs.items():
        style = data.draw(st.sampled_from(["bare", "single", "double"]))
        line = _serialise(
            key, value, style, data.draw(st.booleans()), data.draw(st.sampled_from(["", " ", "  "])),
            data.draw(st.booleans()),
        )
        if line is None:
            line = _serialise(key, value, "double", False, "", False)
        lines.append(line)
        if data.draw(st.booleans()):
            lines.append("")
    text = newline.join(lines) + newline
    parsed = parse_dotenv(text)
    if newline == "\r\n":  # CR inside values cannot survive CRLF normalisation; none are generated
        assert all("\r" not in v for v in parsed.values())
    assert parsed == pairs


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_never_raises(text):
    assert isinstance(parse_dotenv(text), dict)
