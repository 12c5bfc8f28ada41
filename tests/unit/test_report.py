"""``mahabharatha report``: the picture of a run from its journal (pure), and the HTML of a real subprocess run
rendered in headless Chromium, whose screenshot must show a lane per worker and the outcomes' colours."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from mahabharatha import events as E
from mahabharatha.cli import main
from mahabharatha.cli.report import COLOURS, attempts, render_html

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def test_attempts_outcomes_from_events() -> None:
    entries = [
        (100.0, E.RunStarted("feat", 3, (1,))),
        (100.0, E.WorkersStarting("feat", 2, "container", 3, 1)),
        (101.0, E.TaskClaimed("A", 0, 1, 1)),
        (101.0, E.TaskClaimed("B", 1, 1, 1)),
        (104.0, E.WorkerExited(0, 137, "out of memory", oom=True, task="A")),
        (105.0, E.TaskClaimed("A", 0, 2, 1)),
        (106.0, E.TaskUsage("B", 1, input_tokens=10, output_tokens=5, cost_usd=0.01)),
        (106.0, E.TaskFailed("B", 1, "agent <b>exited</b> 5")),
        (108.0, E.TaskDone("A", 0, "c" * 40)),
        (109.0, E.LevelMerged(1, {"done": 1, "failed": 1}, ("w0",), "base")),
        (110.0, E.RunFinished("failed", 1, "failed: B", 10.0)),
    ]
    pic = attempts(entries)
    assert [(a.task, a.worker, a.outcome) for a in pic.attempts] == [("A", 0, "oom"), ("B", 1, "failed"), ("A", 0, "done")]
    assert pic.tasks["A"].attempts == 2 and pic.tasks["A"].seconds == 6.0 and pic.tasks["A"].status == "done"
    assert (pic.tasks["B"].tokens, pic.tasks["B"].cost, pic.tasks["B"].status) == (15, 0.01, "failed")
    assert pic.merges == [(109.0, 1)]
    page = render_html(pic)
    assert "<b>" not in page and "agent &lt;b&gt;exited&lt;/b&gt; 5" in page  # escaped
    assert "<script" not in page and "http" not in page.replace('http://www.w3.org/2000/svg', "")  # nothing fetched
    assert page.count('class="attempt ') == 3 and "<title>OOM</title>" in page and "level 1 merged" in page


# -------------------------------------------------------------------------------------------------------------
# rendered in a browser


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for j in range(0, stride, 4) for v in line[j:j + 3]))
        prev = line
    return width, height, rows


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing under CI (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def _repo(tmp_path: Path) -> Path:
    repo = (tmp_path / "repo").resolve()
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e.invalid", *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    (repo / "README.md").write_text("hi\n")
    run("add", "-A")
    run("commit", "-qm", "init")
    tasks = [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}, "scripted": {"sleep": 0.5}},
        {"id": "B", "level": 1, "files": {"create": ["b.txt"]}, "scripted": {"exit": {"1": 5}, "sleep": 0.5}},
        {"id": "C", "level": 1, "files": {"create": ["c.txt"]}, "scripted": {"exit": {"1": 2}, "sleep": 0.5}},
        {"id": "D", "level": 2, "dependencies": ["A"], "files": {"create": ["d.txt"]}, "scripted": {"sleep": 0.5}},
    ]
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: 3\n  agent_command: {AGENT}\n"
    )
    return repo


def test_the_report_of_a_real_run_shows_a_lane_per_worker_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    browser = _chromium()
    from mahabharatha.edge.orchestrator import execute
    from mahabharatha.planning import plan

    repo = _repo(tmp_path)
    (tmp_path / "home").mkdir()
    result = execute(plan(str(repo), feature="feat", workers=3, environ={}, home=tmp_path / "home"))
    assert result.status == "failed"
    out = tmp_path / "report.html"
    assert main(["report", "feat", "--repo", str(repo), "--output", str(out)]) == 0
    page = out.read_text()
    assert page.count("worker ") >= 3 and 'class="attempt restarted"' in page and 'class="attempt failed"' in page
    shot = tmp_path / "out.png"
    profile = tempfile.mkdtemp(prefix="mh-chromium-", dir=tmp_path)
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
         "--window-size=1400,900", out.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert shot.exists(), proc.stderr[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 900)

    def rgb(hex_colour: str) -> bytes:
        return bytes.fromhex(hex_colour[1:])

    lane, colours = rgb("#f3f4f6"), {k: rgb(v) for k, v in COLOURS.items()}

    def count(row: bytes, colour: bytes) -> int:
        return sum(1 for i in range(0, len(row), 3) if row[i:i + 3] == colour)

    # A lane is a band of rows, each mostly lane background or attempt bars; there is one band per worker.
    in_lane = [count(r, lane) + sum(count(r, c) for c in colours.values()) > 600 for r in rows]
    bands = sum(1 for y in range(1, height) if in_lane[y] and not in_lane[y - 1])
    assert bands == 3, bands
    seen = {k for k, c in colours.items() if sum(count(r, c) for r in rows[100:400]) > 200}
    assert {"done", "failed", "restarted"} <= seen, seen
