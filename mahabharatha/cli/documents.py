"""The JSON documents for scripts: ``status --json`` and ``kurukshetra --json`` (the README documents both).

Both are one JSON object with a ``schema`` field naming its kind and version (``mahabharatha.status/1``,
``mahabharatha.result/1``); fields are only ever added within a version. Pure functions of the state, the
result and the container rows, so the CLI's output is what the tests check.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATUS_SCHEMA", "RESULT_SCHEMA", "task_rows", "status_document", "result_document"]

STATUS_SCHEMA = "mahabharatha.status/1"
RESULT_SCHEMA = "mahabharatha.result/1"


def task_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task, sorted by level then id: id, level, status, worker, attempts, commit, error, usage."""
    rows = []
    for tid, t in sorted(data.get("tasks", {}).items(), key=lambda kv: (kv[1].get("level", 0), kv[0])):
        rows.append({
            "id": tid,
            "level": t.get("level"),
            "status": t.get("status"),
            "worker": t.get("worker"),
            "attempts": t.get("attempts", 0),
            "commit": t.get("commit") or "",
            "error": t.get("error") or "",
            "usage": t.get("usage") or {},
        })
    return rows


def _counts(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    from ..worker.state import summary

    return {str(level): counts for level, counts in summary(data).items()}


def _usage(data: dict[str, Any]) -> dict[str, Any]:
    from ..worker.state import usage_summary

    usage = usage_summary(data)
    return {"levels": {str(k): v for k, v in usage["levels"].items()}, "total": usage["total"]}


def status_document(
    repo: str, feature: str, data: dict[str, Any], containers: list[dict[str, Any]] | None, *, running: bool,
) -> dict[str, Any]:
    """``status --json``. ``state`` is the raw state document (kept for scripts written against it)."""
    return {
        "schema": STATUS_SCHEMA,
        "repo": repo,
        "feature": feature,
        "status": data.get("status"),
        "message": data.get("message") or "",
        "level": data.get("level"),
        "levels": list(data.get("levels") or []),
        "run_in_progress": running,
        "counts": _counts(data),
        "tasks": task_rows(data),
        "usage": _usage(data),
        "containers": containers,
        "state": data,
    }


def result_document(result: Any, *, repo: str, feature: str, data: dict[str, Any] | None) -> dict[str, Any]:
    """``kurukshetra --json``: the run's :class:`~mahabharatha.edge.orchestrator.RunResult` and its tasks."""
    data = data or {"tasks": {}}
    return {
        "schema": RESULT_SCHEMA,
        "repo": repo,
        "feature": feature,
        "status": result.status,
        "exit_code": result.exit_code,
        "message": result.message,
        "seconds": round(result.seconds, 3),
        "counts": {str(level): counts for level, counts in result.levels.items()},
        "base_branch": result.base_branch,
        "worker_branches": list(result.worker_branches),
        "tasks": task_rows(data),
        "usage": _usage(data) if data.get("tasks") else {"levels": {}, "total": {}},
    }
