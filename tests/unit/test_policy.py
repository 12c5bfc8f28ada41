"""The exit policy as a pure function: (facts of one exit) -> (task changes, restart, stop)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mahabharatha.core.policy import Decision, ExitFacts, HeldTask, TaskChange, decide


def facts(**kw) -> ExitFacts:
    base = dict(worker=0, code=1, meaning="error", held=(HeldTask("T1", 1),), last_task="T1", pending=True, mem_limit="4g")
    return ExitFacts(**{**base, **kw})


def test_error_fails_the_held_task_and_restarts_while_work_remains() -> None:
    d = decide(facts())
    assert d.changes == (TaskChange("T1", "failed", "worker exited 1 (error); see its log"),)
    assert d.restart == "error" and d.count == "error"
    assert decide(facts(pending=False)).restart == ""
    assert decide(facts(error_restarts=3, retry_attempts=2)).restart == ""  # retry_attempts + 1 restarts at most


def test_context_limit_gives_the_task_back_and_restarts() -> None:
    d = decide(facts(code=2, meaning="context limit"))
    assert d.changes == (TaskChange("T1", "pending"),) and d.count == "context"
    assert d.restart == "context limit reached on T1 (exit 2)"


def test_a_task_that_always_hits_the_context_limit_fails_naming_the_fix() -> None:
    d = decide(facts(code=2, held=(), last_task_pending=True, context_restarts=10, max_context_restarts=10, pending=False))
    assert [(c.task, c.status) for c in d.changes] == [("T1", "failed")]
    assert "split it in the task graph" in d.changes[0].error and "mahabharatha retry" in d.changes[0].error
    assert d.note.startswith("task T1 failed: context limit reached on 11 attempts") and d.restart == ""


def test_oom_retries_then_fails_with_memory_advice() -> None:
    d = decide(facts(code=137, meaning="out of memory", oom=True, oom_known=True, held=(HeldTask("T1", 2),), retry_attempts=2))
    assert d.changes == (TaskChange("T1", "pending", "killed (out of memory) on attempt 2"),) and d.restart == "killed"
    d = decide(facts(code=137, meaning="out of memory", oom=True, held=(HeldTask("T1", 3),), retry_attempts=2, pending=False))
    assert d.changes[0].status == "failed" and "raise resources.container_memory_limit (now 4g)" in d.changes[0].error
    assert d.restart == ""


def test_a_137_the_engine_says_was_not_oom_is_never_blamed_on_memory() -> None:
    d = decide(facts(code=137, meaning="killed", oom=False, oom_known=True, held=(HeldTask("T1", 3),), retry_attempts=2))
    assert d.changes[0].status == "failed" and "memory_limit" not in d.changes[0].error
    # Where the engine cannot tell (subprocess mode), a 137 is treated as the memory limit, as before.
    d = decide(facts(code=137, meaning="killed", oom=False, oom_known=False, held=(HeldTask("T1", 3),), retry_attempts=2))
    assert "memory_limit" in d.changes[0].error


def test_a_lost_worker_gives_its_task_back_and_restarts() -> None:
    d = decide(facts(code=137, meaning="killed", lost=True, held=(HeldTask("T1", 1),), pending=False))
    assert d.changes == (TaskChange("T1", "pending", "worker lost (its container was removed)"),)
    assert d.restart == "lost" and "memory" not in d.note


def test_130_stops_the_run_and_gives_the_task_back() -> None:
    d = decide(facts(code=130, meaning="stopped by signal"))
    assert d.stop_run and d.stopped_by_user and d.changes == (TaskChange("T1", "pending"),) and d.restart == ""


def test_blocked_and_ending_change_nothing() -> None:
    assert decide(facts(code=3)).changes == () and decide(facts(code=3)).restart == ""
    assert decide(facts(ending=True)) == Decision()


def test_after_a_timeout_restart_only_while_work_remains() -> None:
    assert decide(facts(timed_out=True, held=())).restart == "timed out"
    assert decide(facts(timed_out=True, held=(), pending=False)).restart == ""
    assert decide(facts(timed_out=True, held=(), ending=True)).restart == ""


@given(
    code=st.one_of(st.none(), st.integers(-1, 255)), oom=st.booleans(), oom_known=st.booleans(), lost=st.booleans(),
    timed_out=st.booleans(), ending=st.booleans(), pending=st.booleans(),
    held=st.lists(st.integers(1, 5), max_size=3), restarts=st.integers(0, 12), errors=st.integers(0, 5),
)
def test_every_decision_touches_only_held_tasks_and_never_restarts_an_ending_run(
    code, oom, oom_known, lost, timed_out, ending, pending, held, restarts, errors
) -> None:
    hs = tuple(HeldTask(f"T{i}", a) for i, a in enumerate(held))
    f = facts(code=code, oom=oom, oom_known=oom_known, lost=lost, timed_out=timed_out, ending=ending, pending=pending,
              held=hs, last_task=hs[0].task if hs else "", context_restarts=restarts, error_restarts=errors)
    d = decide(f)
    assert {c.task for c in d.changes} <= {h.task for h in hs} | {f.last_task} - {""}
    assert len({c.task for c in d.changes}) == len(d.changes)  # one change per task
    if ending:
        assert d.restart == "" and d.changes == ()
