"""The event journal: the writer (no symlinks, regular files only, one line per event) and real subprocess runs
appending to it, stopped and resumed, read back by ``mahabharatha events``."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mahabharatha import events as E
from mahabharatha.cli import main
from mahabharatha.edge.journal import JournalWriter, journal_path, read_entries
from mahabharatha.errors import FileAccessError

AGENT = "python3 -m mahabharatha_worker.scripted_agent"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = (tmp_path / "p" / "repo").resolve()
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hello\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "initial")
    return r


def task(tid: str, level: int, deps: tuple[str, ...] = (), create: tuple[str, ...] = (), **scripted: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "id": tid, "title": f"title {tid}", "description": "", "level": level, "dependencies": list(deps),
        "files": {"create": list(create), "modify": [], "read": []}, "verification": {"command": "", "timeout_seconds": 30},
    }
    if scripted:
        t["scripted"] = scripted
    return t


def make_plan(repo: Path, tasks: list[dict[str, Any]], workers: int = 2) -> Any:
    from mahabharatha.planning import plan

    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".mahabharatha").mkdir(exist_ok=True)
    (repo / ".mahabharatha" / "config.yaml").write_text(
        f"workers:\n  launcher_type: subprocess\n  max_concurrent: {workers}\n  agent_command: {AGENT}\n"
    )
    home = repo.parent / "home"
    home.mkdir(exist_ok=True)
    return plan(str(repo), feature="feat", workers=workers, environ={}, home=home)


GRAPH = [
    task("A", 1, create=("a.txt",)),
    task("B", 1, create=("b.txt",), exit={"1": 5}),
    task("C", 2, ("A",), create=("c.txt",)),
]


# -------------------------------------------------------------------------------------------------------------
# the writer


def test_each_event_is_one_timestamped_line_that_decodes_back(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path), "feat", clock=lambda: 1764580000.25)
    sent = [E.TaskDone("T1", 0, "abc"), E.TaskUsage("T1", 0, input_tokens=5, cost_usd=0.5), E.RunStopping("why")]
    for event in sent:
        writer.append(event)
    writer.close()
    writer.append(E.Notice("after close: dropped"))
    raw = Path(journal_path(str(tmp_path), "feat")).read_bytes().splitlines()
    assert len(raw) == 3 and raw[0].startswith(b'{"ts":"2025-12-01T09:06:40.250Z","event":"task_done"')
    entries = read_entries(str(tmp_path), "feat")
    assert [e.event for e in entries] == sent and entries[0].ts == 1764580000.25
    assert oct(os.stat(journal_path(str(tmp_path), "feat")).st_mode & 0o777) == "0o600"


def test_lines_of_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path), "feat")
    long = "x" * 5000
    threads = [threading.Thread(target=lambda i=i: [writer.append(E.Notice(f"{i}{long}")) for _ in range(200)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    lines = Path(journal_path(str(tmp_path), "feat")).read_bytes().splitlines()
    assert len(lines) == 800 and all(msgspec.json.decode(line)["text"].endswith(long) for line in lines)


def test_an_unknown_or_torn_line_is_skipped_by_readers(tmp_path: Path) -> None:
    writer = JournalWriter(str(tmp_path), "feat")
    writer.append(E.LevelStarted(2, "abc"))
    writer.close()
    with open(journal_path(str(tmp_path), "feat"), "ab") as fh:
        fh.write(b'{"ts":"x","event":"from_the_future","n":1}\n{"ts":"2026-')
    assert [e.event for e in read_entries(str(tmp_path), "feat")] == [E.LevelStarted(2, "abc")]


@pytest.mark.parametrize("kind", ["file-link", "dir-link", "fifo", "hardlink"])
def test_the_writer_never_follows_a_link_nor_writes_a_non_regular_file(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / "repo"
    jdir = repo / ".mahabharatha" / "journal"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if kind == "dir-link":
        jdir.parent.mkdir(parents=True)
        (tmp_path / "elsewhere").mkdir()
        jdir.symlink_to(tmp_path / "elsewhere")
    else:
        jdir.mkdir(parents=True)
        target = jdir / "feat.jsonl"
        if kind == "file-link":
            target.symlink_to(victim)
        elif kind == "fifo":
            os.mkfifo(target)
        else:
            os.link(victim, target)
    with pytest.raises(FileAccessError):
        JournalWriter(str(repo), "feat")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "elsewhere" / "feat.jsonl").exists()


# -------------------------------------------------------------------------------------------------------------
# real runs


def test_a_run_journals_workers_tasks_levels_and_the_result(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mahabharatha.edge.orchestrator import execute

    p = make_plan(repo, GRAPH)
    result = execute(p)
    assert result.status == "failed"
    kinds = [e.event for e in read_entries(str(repo), "feat")]
    tags = [type(k).__name__ for k in kinds]
    assert tags[0] == "RunStarted" and tags[-1] == "RunFinished"
    for wanted in ("WorkersStarting", "WorkerStarted", "WorkerReady", "TaskClaimed", "TaskDone", "TaskFailed",
                   "LevelMerged", "LevelStarted", "WorkerExited"):
        assert wanted in tags, tags
    start = kinds[0]
    assert isinstance(start, E.RunStarted) and start.base == git(repo, "rev-parse", "main") and not start.resumed
    done = {k.task: k for k in kinds if isinstance(k, E.TaskDone)}
    assert git(repo, "cat-file", "-t", done["A"].commit) == "commit"
    failed = next(k for k in kinds if isinstance(k, E.TaskFailed))
    assert failed.task == "B" and "exited 5" in failed.reason
    merged = next(k for k in kinds if isinstance(k, E.LevelMerged))
    level2 = next(k for k in kinds if isinstance(k, E.LevelStarted))
    assert merged.level == 1 and level2.level == 2
    # level 2's base holds level 1's work, not level 2's (these raise when not ancestors)
    git(repo, "merge-base", "--is-ancestor", done["A"].commit, level2.base)
    git(repo, "merge-base", "--is-ancestor", level2.base, done["C"].commit)
    assert level2.base != done["C"].commit
    exited = [k for k in kinds if isinstance(k, E.WorkerExited)]
    assert all(k.meaning for k in exited)

    assert main(["events", "--repo", str(repo), "--feature", "feat"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("run started: feat, 3 tasks in 2 level(s)")
    assert any("task A done by worker" in line for line in text) and any("task B FAILED" in line for line in text)
    assert text[-1].split("] ", 1)[1].startswith("run failed (exit 1)")
    assert main(["events", "--repo", str(repo), "--feature", "feat", "--json"]) == 0
    raw = capsys.readouterr().out.splitlines()
    assert raw == Path(journal_path(str(repo), "feat")).read_text().splitlines()
    assert all(json.loads(line)["ts"].endswith("Z") for line in raw)
    # -f on a finished run prints everything once and ends.
    assert main(["events", "--repo", str(repo), "--feature", "feat", "-f"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(text[-1].split("] ", 1)[1])


def test_a_stopped_run_and_its_resumption_continue_one_journal(repo: Path) -> None:
    from mahabharatha.edge.orchestrator import Run, execute

    p = make_plan(repo, [task("quick", 1, create=("q.txt",)), task("slow", 1, create=("s.txt",), sleep={"1": 60})])
    with Run(p) as run:
        for event in run:
            if isinstance(event, E.TaskDone):
                run.stop("stopped by the test")
    assert run.result is not None and run.result.status == "stopped"
    again = execute(p)
    assert again.status == "done"
    kinds = [e.event for e in read_entries(str(repo), "feat")]
    stops = [i for i, k in enumerate(kinds) if isinstance(k, E.RunStopping)]
    starts = [i for i, k in enumerate(kinds) if isinstance(k, E.RunStarted)]
    assert len(stops) == 1 and kinds[stops[0]].message == "stopped by the test"  # type: ignore[union-attr]
    assert len(starts) == 2 and starts[0] < stops[0] < starts[1]
    resumed = kinds[starts[1]]
    assert isinstance(resumed, E.RunStarted) and resumed.resumed and resumed.done == 1
    finished = [k for k in kinds if isinstance(k, E.RunFinished)]
    assert [f.status for f in finished] == ["stopped", "done"]


def test_events_without_a_journal_is_one_line_error(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--repo", str(repo), "--feature", "feat"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no event journal for feature 'feat'" in err


def test_events_follow_prints_while_the_run_goes_and_ends_with_it(repo: Path) -> None:
    import sys
    import time

    from mahabharatha.edge.orchestrator import execute

    p = make_plan(repo, [task("A", 1, create=("a.txt",), sleep=2), task("B", 2, ("A",), create=("b.txt",))])
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(result=execute(p)))
    runner.start()
    journal = Path(journal_path(str(repo), "feat"))
    deadline = time.monotonic() + 30
    while not journal.exists() or b"task_claimed" not in journal.read_bytes():
        assert time.monotonic() < deadline and runner.is_alive()
        time.sleep(0.05)
    root = Path(__file__).resolve().parents[2]
    follower = subprocess.run(
        [sys.executable, "-m", "mahabharatha", "events", "-f", "--json", "--repo", str(repo), "--feature", "feat"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)},
    )
    runner.join(timeout=60)
    assert box["result"].status == "done"
    kinds = [json.loads(line)["event"] for line in follower.stdout.splitlines()]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and kinds.count("task_done") == 2, kinds
    assert follower.stdout.splitlines() == journal.read_text().splitlines()  # every line, once, in order
