"""Host logs of worker output: bounded lines that never split a secret, a bounded file, no symlink followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.edge.logfile import CUT_MARK, HostLog, LineCutter

SECRET = b"sk-ant-api03-SECRETSECRETSECRET"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=0, max_value=400))
def test_lines_are_bounded_and_a_secret_is_never_split(chunks: list[bytes], where: int) -> None:
    data = b"".join(chunks)
    data = data[:where] + SECRET + data[where:]
    cutter = LineCutter([SECRET], max_line=80)
    out = []
    for i in range(0, len(data), 37):
        out.extend(cutter.feed(data[i:i + 37]))
    out.append(cutter.rest())
    limit = 80 + len(CUT_MARK.encode())
    assert all(len(line) <= limit for line in out)
    joined = b"".join(line.removesuffix(CUT_MARK.encode()) for line in out)
    assert joined == data  # nothing lost, nothing added but the marks
    assert sum(line.count(SECRET) for line in out) == data.count(SECRET)  # each secret whole in one line


def test_the_log_stops_at_its_limit_and_says_so(tmp_path: Path) -> None:
    log = HostLog(str(tmp_path / "w.log"), lambda t: t.replace("s3cr3t", "(redacted)"), limit=1000)
    for _ in range(100):
        log.write(b"line with s3cr3t in it\n")
    log.close()
    text = (tmp_path / "w.log").read_text()
    assert len(text) < 1200 and "s3cr3t" not in text and text.count("further output is dropped") == 1


def test_a_symlink_at_the_log_path_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.symlink(victim, tmp_path / "w.log")
    with pytest.raises(OSError):
        HostLog(str(tmp_path / "w.log"), lambda t: t)
    assert victim.read_text() == "keep\n"
