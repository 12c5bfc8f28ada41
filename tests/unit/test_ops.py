"""``status``, ``logs``, ``retry`` and ``install-commands`` against a real state directory (no Docker needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mahabharatha.cli import main
from mahabharatha.worker import state as S


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    subprocess.run(["git", "init", "-q", str(r)], check=True)
    (r / ".gsd").mkdir()
    (r / ".gsd" / ".current-feature").write_text("feat\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")  # status must work without an engine
    return r


def _state(repo: Path) -> S.StateStore:
    store = S.StateStore(str(repo / ".mahabharatha" / "state"), "feat")
    data = S.new_state("feat", [("a", 1), ("b", 1), ("c", 2)])
    S.claim_next(data, 0)
    S.finish_task(data, "a", S.DONE, commit="abc")
    S.claim_next(data, 1)
    S.finish_task(data, "b", S.FAILED, error="verification failed (exit 1): false")
    data["tasks"]["c"].update(status=S.BLOCKED, error="blocked by b")
    data.update(status="blocked", level=2, message="failed: b; blocked: c")
    store.create(data)
    return store


def test_status_shows_levels_failures_and_workers(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _state(repo)
    assert main(["status", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "Feature feat: blocked, level 2" in out
    assert "level 1: 1 done, 1 failed" in out
    assert "b: failed (worker 1) - verification failed (exit 1): false" in out
    assert "c: blocked - blocked by b" in out
    assert "worker 0: a:done" in out


def test_status_without_a_run_is_one_line_error(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--repo", str(repo)]) == 1
    assert "no run state for feature 'feat'" in capsys.readouterr().err


def test_retry_puts_failed_and_blocked_back_and_reopens_the_run(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _state(repo)
    assert main(["retry", "--repo", str(repo)]) == 0
    data = store.read()
    assert data is not None
    assert (data["status"], data["level"]) == ("running", 1)
    assert data["tasks"]["b"] == {**data["tasks"]["b"], "status": "pending", "attempts": 0, "error": "", "worker": None}
    assert data["tasks"]["c"]["status"] == "pending" and data["tasks"]["a"]["status"] == "done"
    assert "Back to pending: b, c" in capsys.readouterr().out
    assert main(["retry", "--repo", str(repo), "nope"]) == 1


def test_logs_tail_and_prefix(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = repo / ".mahabharatha" / "logs" / "workers" / "feat"
    logs.mkdir(parents=True)
    (logs / "worker-0.stdout.log").write_text("one\ntwo\nthree\n")
    (logs / "worker-1.stdout.log").write_text("x\n")
    assert main(["logs", "--repo", str(repo), "0", "--tail", "2"]) == 0
    assert capsys.readouterr().out == "two\nthree\n"
    assert main(["logs", "--repo", str(repo), "--tail", "1"]) == 0
    assert capsys.readouterr().out == "[worker-0] three\n[worker-1] x\n"
    assert main(["logs", "--repo", str(repo), "7"]) == 1


def test_install_commands(repo: Path) -> None:
    assert main(["install-commands", "--repo", str(repo)]) == 0
    target = repo / ".claude" / "commands" / "mahabharatha"
    names = sorted(p.name for p in target.iterdir())
    assert names == ["cleanup.md", "kurukshetra.md", "logs.md", "retry.md", "status.md", "stop.md"]
    for name in names:
        text = (target / name).read_text()
        assert text.startswith("---\ndescription: ") and "mahabharatha " in text


def test_status_asks_the_engine_for_every_running_container_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stats sample takes the engine about a second: three containers must be sampled concurrently (a
    barrier that only opens for three simultaneous callers proves it without timing anything)."""
    import threading

    from mahabharatha.cli import ops
    from mahabharatha.edge import executor

    barrier = threading.Barrier(3, timeout=10)

    class Api:
        def stats(self, cid: str, stream: bool) -> dict:
            assert stream is False
            barrier.wait()  # raises BrokenBarrierError (-> no figures) when called one at a time
            return {"cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
                    "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
                    "memory_stats": {"usage": 5 * 2**20, "limit": 256 * 2**20}}

    class Client:
        api = Api()

    rows = [{"Id": f"id{n}", "Names": [f"/w-{n}"], "Labels": {"io.mahabharatha.worker": str(n)}, "State": "running",
             "Status": "Up 1 second"} for n in (2, 0, 1)]
    rows.append({"Id": "id3", "Names": ["/w-3"], "Labels": {"io.mahabharatha.worker": "3"}, "State": "exited", "Status": "Exited (0)"})
    monkeypatch.setattr(executor, "make_client", lambda **kw: Client())
    monkeypatch.setattr(executor, "feature_containers", lambda client, repo, feature: rows)
    got = ops.container_rows("/r", "feat")
    assert [r["name"] for r in got] == ["w-0", "w-1", "w-2", "w-3"]
    for r in got[:3]:
        assert (r["cpu_percent"], r["memory_bytes"], r["memory_limit_bytes"]) == (40.0, 5 * 2**20, 256 * 2**20)
    assert "cpu_percent" not in got[3]
