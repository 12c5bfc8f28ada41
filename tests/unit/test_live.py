"""The live view's model and screen without a terminal, its log tail, and the JSON documents of ``status --json``
and ``kurukshetra --json`` (a real subprocess run: progress on stderr, one document on stdout)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mahabharatha import events as E
from mahabharatha.cli.live import ViewModel, last_line, render, use_live_view

ROOT = Path(__file__).resolve().parents[2]


def _screen(model: ViewModel, width: int = 160) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)
    console.print(render(model))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_the_model_follows_the_events() -> None:
    now = [1000.0]
    model = ViewModel("feat", {1: ["A", "B"], 2: ["C"]}, [(0, "w-0", 256 * 2**20), (1, "w-1", 256 * 2**20)], clock=lambda: now[0])
    for event in (E.RunStarted("feat", 3, (1, 2)), E.WorkerStarted(0), E.WorkerReady(0), E.WorkerStarted(1),
                  E.TaskClaimed("A", 0, 1, 1), E.TaskClaimed("B", 1, 1, 1)):
        model.apply(event)
    assert model.level_counts()[1] == {"done": 0, "failed": 0, "running": 2, "pending": 0, "blocked": 0}
    now[0] += 75
    model.apply(E.TaskUsage("A", 0, input_tokens=1000, output_tokens=200, cost_usd=0.25))
    model.apply(E.TaskDone("A", 0, "abc"))
    model.apply(E.WorkerExited(1, 137, "out of memory", oom=True, task="B"))
    assert model.task_status == {"A": "done", "B": "pending", "C": "pending"}
    assert model.workers[0].state == "idle" and (model.workers[0].tokens, model.workers[0].cost) == (1200, 0.25)
    assert model.workers[1].state == "exited 137 (out of memory) OOM" and model.workers[1].task == ""
    model.apply(E.TaskClaimed("B", 0, 2, 1))
    model.workers[0].cpu, model.workers[0].mem, model.workers[0].action = 12.5, 100 * 2**20, "tool Write file_path=[x]"
    model.line("task A done by worker 0 (abc)")
    screen = _screen(model)
    assert "level 1" in screen and "1 done, 0 failed, 1 running, 0 pending" in screen
    assert "0 done, 0 failed, 0 running, 1 pending" in screen  # level 2
    row = next(line for line in screen.splitlines() if line.startswith("0 "))
    assert " B " in row and "0:00" in row and "12%" in row and "100/256" in row and "1200 $0.25" in row
    assert "tool Write file_path=[x]" in row  # shown as text, never as markup
    assert "task A done by worker 0 (abc)" in screen and "1:15" in screen  # the run's elapsed time
    model.apply(E.ReviewRequested(1, " a.txt | 1 +", ("A",)))
    assert model.status.startswith("waiting for review of level 1")
    model.apply(E.LevelMerged(1, {"done": 1}, (), "base"))
    assert model.status == "running"
    model.apply(E.RunFinished("done", 0, "", 80.0))
    assert model.status == "done"


def test_resumed_tasks_come_from_the_state() -> None:
    model = ViewModel("feat", {1: ["A"]}, [])
    model.load_state({"tasks": {"A": {"level": 1, "status": "done"}, "X": {"level": 2, "status": "blocked"}}})
    assert model.level_counts() == {
        1: {"done": 1, "failed": 0, "running": 0, "pending": 0, "blocked": 0},
        2: {"done": 0, "failed": 0, "running": 0, "pending": 0, "blocked": 1},
    }


def test_last_line_reads_only_the_end_and_never_a_link(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes(b"x" * 100_000 + b"\nfirst\nthe \x1b[31mlast\x07 line\n\n")
    assert last_line(str(tmp_path), str(log)) == "the [31mlast line"  # control characters dropped
    secret = tmp_path / "secret"
    secret.write_text("do not show\n")
    (tmp_path / "link.log").symlink_to(secret)
    assert last_line(str(tmp_path), str(tmp_path / "link.log")) == ""
    os.mkfifo(tmp_path / "fifo.log")
    assert last_line(str(tmp_path), str(tmp_path / "fifo.log")) == ""  # refused without opening (no hang)
    assert last_line(str(tmp_path), str(tmp_path / "missing.log")) == ""
    one = tmp_path / "long.log"
    one.write_text("y" * 10_000)  # one line longer than the bounded read: its end, cut
    assert 0 < len(last_line(str(tmp_path), str(one))) <= 160


def test_no_live_view_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not use_live_view(io.StringIO())
    r, w = os.pipe()
    with os.fdopen(w, "w") as pipe:
        assert not use_live_view(pipe)
    os.close(r)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setenv("TERM", "xterm")
        assert use_live_view(tty)
        monkeypatch.setenv("MAHABHARATHA_NO_LIVE", "1")
        assert not use_live_view(tty)
    os.close(master)


# -------------------------------------------------------------------------------------------------------------
# the JSON documents


def _repo(tmp_path: Path) -> Path:
    repo = (tmp_path / "p" / "repo").resolve()
    repo.mkdir(parents=True)
    run = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e.invalid", *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    (repo / "README.md").write_text("hi\n")
    run("add", "-A")
    run("commit", "-qm", "init")
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True)
    tasks = [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}},
        {"id": "B", "level": 1, "files": {"create": ["b.txt"]}, "scripted": {"exit": {"1": 5}}},
        {"id": "C", "level": 2, "dependencies": ["B"], "files": {"create": ["c.txt"]}},
    ]
    (spec / "task-graph.json").write_text(json.dumps({"feature": "feat", "tasks": tasks}))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  launcher_type: subprocess\n  max_concurrent: 2\n  retry_attempts: 0\n"
        "  agent_command: python3 -m mahabharatha_worker.scripted_agent\n"
    )
    return repo


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE"))}
    env.update(PYTHONPATH=str(ROOT), HOME=str(repo.parent / "home"), DOCKER_HOST="unix:///nonexistent.sock")
    (repo.parent / "home").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "mahabharatha", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def test_kurukshetra_json_prints_one_result_document_and_status_json_one_status_document(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    proc = _cli(repo, "kurukshetra", "--json")
    assert proc.returncode == 3, proc.stderr  # blocked: B failed, C depends on it
    doc: dict[str, Any] = json.loads(proc.stdout)  # the whole of stdout is one document
    assert doc["schema"] == "mahabharatha.result/1" and doc["feature"] == "feat"
    assert (doc["status"], doc["exit_code"]) == ("blocked", 3) and "failed: B" in doc["message"]
    assert doc["counts"] == {"1": {"done": 1, "failed": 1}, "2": {"blocked": 1}}
    assert doc["base_branch"] == "mahabharatha/feat/base" and len(doc["worker_branches"]) == 2
    rows = {t["id"]: t for t in doc["tasks"]}
    assert [t["id"] for t in doc["tasks"]] == ["A", "B", "C"]
    assert rows["A"]["status"] == "done" and len(rows["A"]["commit"]) == 40
    assert rows["B"]["status"] == "failed" and "exited 5" in rows["B"]["error"]
    assert rows["C"] == {**rows["C"], "status": "blocked", "error": "blocked by B"}
    assert "task B FAILED" in proc.stderr and "Run blocked" in proc.stderr  # progress and summary on stderr

    status = _cli(repo, "status", "--json")
    assert status.returncode == 0, status.stderr
    sdoc = json.loads(status.stdout)
    assert sdoc["schema"] == "mahabharatha.status/1" and sdoc["run_in_progress"] is False
    assert (sdoc["status"], sdoc["level"], sdoc["levels"]) == ("blocked", 1, [1, 2])
    assert sdoc["tasks"] == doc["tasks"] and sdoc["counts"] == doc["counts"]
    assert sdoc["containers"] is None  # no engine reachable
    assert sdoc["state"]["tasks"]["A"]["status"] == "done"  # the raw state, as before

    events = _cli(repo, "events", "--json")
    kinds = [json.loads(line)["event"] for line in events.stdout.splitlines()]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished" and "task_failed" in kinds
