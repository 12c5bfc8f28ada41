"""Docker memory sizes: accept and normalise exactly what Docker accepts (go-units RAMInBytes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.memory import MIN_MEMORY_BYTES, MemoryLimitError, parse_memory

GIB = 1024**3


@pytest.mark.parametrize(
    ("text", "normalised", "size"),
    [
        ("4g", "4g", 4 * GIB),
        ("4gb", "4g", 4 * GIB),  # valid for Docker (an earlier note said otherwise)
        ("4GiB", "4g", 4 * GIB),
        ("4G", "4g", 4 * GIB),
        ("4 g", "4g", 4 * GIB),
        ("512m", "512m", 512 * 1024**2),
        ("1.5g", "1.5g", int(1.5 * GIB)),
        ("01.50g", "1.5g", int(1.5 * GIB)),
        ("1073741824", "1073741824", GIB),
        ("1073741824b", "1073741824", GIB),
        (1073741824, "1073741824", GIB),
        ("6m", "6m", MIN_MEMORY_BYTES),
        ("1t", "1t", 1024**4),
        ("8p", "8p", 8 * 1024**5),
    ],
)
def test_valid_forms(text, normalised, size):
    assert parse_memory(text) == (normalised, size)


@pytest.mark.parametrize(
    "text",
    ["4x", "-1g", "", " ", "four", "g", "4i", "4gibb", "1.2.3g", " 4g", "4g ", "4  g", ".5g", "5.g", "4\n",
     "٤g", "1e9", "0x10", "4kk", True, 1.5, None, -5],
)
def test_rejected_forms(text):
    with pytest.raises(MemoryLimitError):
        parse_memory(text)


@pytest.mark.parametrize("text", ["0", "5m", "1k", "6291455"])
def test_below_docker_minimum(text):
    with pytest.raises(MemoryLimitError, match="minimum"):
        parse_memory(text)


def test_absurdly_large_is_rejected_not_overflowing():
    for text in ("9" * 400, "16384p", "9223372036854775808"):
        with pytest.raises(MemoryLimitError, match="too large"):
            parse_memory(text)


_UNIT = st.sampled_from(["", "k", "m", "g", "t"])
_SUFFIX = st.sampled_from(["", "b", "i", "ib"])
_MULT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


@st.composite
def valid_memory(draw):
    unit = draw(_UNIT)
    whole = draw(st.integers(min_value=0, max_value=10_000))
    frac = draw(st.one_of(st.just(""), st.from_regex(r"[0-9]{1,3}", fullmatch=True)))
    number = f"{whole}.{frac}" if frac else str(whole)
    suffix = draw(_SUFFIX) if unit else draw(st.sampled_from(["", "b"]))
    space = draw(st.sampled_from(["", " "]))
    text = number + space + unit + suffix
    text = "".join(c.upper() if draw(st.booleans()) else c for c in text)
    expected = int(float(number) * _MULT[unit])
    return text, expected


@settings(max_examples=150, deadline=None)
@given(valid_memory())
def test_roundtrip_valid_forms(case):
    """Every valid spelling gives go-units' byte count, and the normalised form parses back to it."""
    text, expected = case
    if expected < MIN_MEMORY_BYTES:
        with pytest.raises(MemoryLimitError):
            parse_memory(text)
        return
    normalised, size = parse_memory(text)
    assert size == expected
    assert parse_memory(normalised) == (normalised, size)
    assert normalised == normalised.lower() and " " not in normalised


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=0, max_size=12))
def test_random_text_is_valid_or_rejected_cleanly(text):
    """Arbitrary text never crashes: it parses to a size >= the minimum or raises MemoryLimitError."""
    try:
        normalised, size = parse_memory(text)
    except MemoryLimitError:
        return
    assert size >= MIN_MEMORY_BYTES and parse_memory(normalised)[1] == size


@settings(max_examples=100, deadline=None)
@given(valid_memory(), st.sampled_from(["x", "-", "q", "bb", "ii", "  ", "\t", ","]), st.booleans())
def test_generated_invalid_forms_rejected(case, junk, prefix):
    text = junk + case[0] if prefix else case[0] + junk
    with pytest.raises(MemoryLimitError):
        parse_memory(text)
