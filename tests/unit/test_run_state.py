"""A stateful property test of the run's state machine: the orchestrator's in-memory state and indexes, its
exit policy and its store, driven by random claims, finishes, exits, foreign retries and resumes.

Invariants after every step: a claimed task has exactly one owner and that owner's index holds it; the
current level is the lowest one with open (pending or claimed) tasks while the run goes; a blocked task has a
failed or blocked dependency (and a pending task has none once its level is current); the persisted state
equals the memory; a resume (a new orchestrator on the same state) loses no done task.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mahabharatha.edge.orchestrator as orchestrator
from mahabharatha.core.graph import load_graph
from mahabharatha.edge.orchestrator import _Run, init_state
from mahabharatha.planning import plan
from mahabharatha.worker import state as S

WORKERS = 3


class _Launcher:
    def restart(self, wid: int) -> None:
        pass

    def current(self, wid: int) -> Any:
        return wid


def _graph_text(shape: list[tuple[int, list[int]]]) -> str:
    import json

    tasks = [{"id": f"T{i}", "level": level, "dependencies": [f"T{d}" for d in deps]} for i, (level, deps) in enumerate(shape)]
    return json.dumps({"feature": "feat", "tasks": tasks})


@st.composite
def shapes(draw: Any) -> list[tuple[int, list[int]]]:
    n = draw(st.integers(1, 9))
    out: list[tuple[int, list[int]]] = []
    for i in range(n):
        level = draw(st.integers(1, 3))
        earlier = [j for j in range(i) if out[j][0] < level]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        out.append((level, deps))
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("statem") / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    return repo


def test_run_state_machine(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator, "merge_into_base", lambda *a, **k: [])
    monkeypatch.setattr(_Run, "_existing_branches", lambda self: [])
    counter = iter(range(10**6))

    class RunMachine(RuleBasedStateMachine):
        @initialize(shape=shapes())
        def start(self, shape: list[tuple[int, list[int]]]) -> None:
            self.graph = load_graph("graph", _graph_text(shape))
            state_dir = repo / f"s{next(counter)}"
            p = plan(str(repo), feature="feat", workers=WORKERS, mode="subprocess", environ={}, home=str(repo), graph=self.graph)
            self.plan = __import__("msgspec").structs.replace(p, state_dir=str(state_dir))
            self.done: set[str] = set()
            self._new_run()

        def _new_run(self) -> None:
            self.run = _Run(self.plan, self.graph, lambda _line: None, launcher_factory=None)
            self.run.launcher = _Launcher()
            init_state(self.run.store, self.graph)
            self.run._load(self.run.store.read())
            self.run.alive = {w: w for w in range(WORKERS)}
            self.run._finish_level_locked()

        @rule(wid=st.integers(0, WORKERS - 1))
        def claim(self, wid: int) -> None:
            with self.run.lock:
                if self.run._status() == S.RUNNING:
                    tid = self.run._take(wid)
                    if tid is not None:
                        self.run.claims[wid] = orchestrator._Claim(tid, "", self.run.tasks[tid]["level"], 0.0)
                        self.run.last_task[wid] = tid

        @rule(wid=st.integers(0, WORKERS - 1), ok=st.booleans())
        def finish(self, wid: int, ok: bool) -> None:
            with self.run.lock:
                held = sorted(self.run.held.get(wid, ()))
                if not held:
                    return
                self.run._set(held[0], status=S.DONE if ok else S.FAILED, error="" if ok else "boom")
                self.run._save()
                self.run.claims.pop(wid, None)
                if ok:
                    self.done.add(held[0])
                self.run._finish_level_locked()

        @rule(wid=st.integers(0, WORKERS - 1), code=st.sampled_from([1, 2, 3, 137, 130]), lost=st.booleans())
        def exit(self, wid: int, code: int, lost: bool) -> None:
            with self.run.lock:
                self.run._on_exit_locked(wid, code, code == 137, lost)
                self.run.alive[wid] = wid
                self.run._finish_level_locked()

        @rule()
        def retry_from_another_process(self) -> None:
            other = S.StateStore(self.plan.state_dir, "feat")
            with other.transaction() as data:
                for t in data["tasks"].values():
                    if t["status"] in (S.FAILED, S.BLOCKED):
                        t.update(status=S.PENDING, worker=None, attempts=0, error="")
                if data["status"] in S.FINAL:
                    data.update(status=S.RUNNING, message="")
                S.rewind_to_pending(data)
            other.close()
            with self.run.lock:
                self.run._sync()
                self.run._finish_level_locked()

        @rule()
        def resume(self) -> None:
            self.run.store.close()
            self._new_run()

        @invariant()
        def owners_are_unique_and_indexed(self) -> None:
            run = self.run
            for tid, t in run.tasks.items():
                if t["status"] == S.CLAIMED:
                    assert t["worker"] is not None and tid in run.held.get(t["worker"], set())
                    assert sum(tid in h for h in run.held.values()) == 1
            for wid, held in run.held.items():
                assert len(held) <= 1 and all(run.tasks[t]["status"] == S.CLAIMED and run.tasks[t]["worker"] == wid for t in held)

        @invariant()
        def the_level_advances_only_when_settled(self) -> None:
            run = self.run
            if run._status() == S.RUNNING:
                open_levels = [lvl for lvl in sorted(run.counts) if run._open(lvl)]
                assert open_levels and run.run_doc["level"] == open_levels[0]
            else:
                assert all(not run._open(lvl) for lvl in run.counts) or run._status() == "stopped"

        @invariant()
        def blocked_is_the_closure_of_failed(self) -> None:
            run = self.run
            bad = {S.FAILED, S.BLOCKED}
            for t in self.graph.tasks:
                st_ = run.tasks[t.id]["status"]
                dep_bad = any(run.tasks[d]["status"] in bad for d in t.dependencies)
                if st_ == S.BLOCKED:
                    assert dep_bad
                if st_ == S.PENDING and run._status() == S.RUNNING and t.level <= run.run_doc["level"]:
                    assert not dep_bad

        @invariant()
        def memory_is_what_is_stored_and_no_done_task_is_lost(self) -> None:
            stored = self.run.store.read()
            for tid, t in self.run.tasks.items():
                assert {k: v for k, v in stored["tasks"][tid].items()} == t
            assert stored["status"] == self.run._status() and stored["level"] == self.run.run_doc["level"]
            assert {tid for tid, t in stored["tasks"].items() if t["status"] == S.DONE} == self.done

    RunMachine.TestCase.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    RunMachine.TestCase().runTest()
