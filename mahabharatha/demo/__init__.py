"""The built-in sample feature for ``mahabharatha demo``.

``task-graph.json`` (package data) describes a tiny word-count tool in three levels; each task carries a
``scripted`` field that :mod:`mahabharatha.worker.scripted_agent` (a deterministic stand-in for a coding
agent, shipped in the worker runtime) turns into files. No network, no API key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DEMO_FEATURE", "SCRIPTED_AGENT_COMMAND", "graph_text", "create_demo_repo"]

DEMO_FEATURE = "demo"
SCRIPTED_AGENT_COMMAND = "python3 -m mahabharatha_worker.scripted_agent"


def graph_text() -> str:
    return resources.files(__package__).joinpath("task-graph.json").read_text(encoding="utf-8")


def _git(repo: Path, *args: str) -> None:
    """Host git as everywhere (hooks off, GIT_DIR and friends cannot redirect it), committing as the demo."""
    from ..edge.git import git

    git(repo, "-c", "user.name=mahabharatha demo", "-c", "user.email=demo@mahabharatha.invalid", *args)


def create_demo_repo(repo: Path, *, image: str, workers: int, container_prefix: str = "mahabharatha-demo") -> Path:
    """Create a fresh git repository at ``repo`` holding the sample feature, its config (container mode,
    ``image``, the scripted agent) and one commit. Returns the resolved path."""
    repo = repo.resolve()
    repo.mkdir(parents=True, exist_ok=False)
    (repo / "README.md").write_text("# demo project\n\nCreated by `mahabharatha demo`.\n")
    spec = repo / ".gsd" / "specs" / DEMO_FEATURE
    spec.mkdir(parents=True)
    (spec / "task-graph.json").write_text(graph_text())
    (repo / ".gsd" / ".current-feature").write_text(DEMO_FEATURE + "\n")
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n"
        f"  max_concurrent: {max(workers, 1)}\n"
        "  launcher_type: container\n"
        f"  container_prefix: {container_prefix}\n"
        f"  agent_command: {SCRIPTED_AGENT_COMMAND}\n"
        "resources:\n"
        f"  container_image: {image}\n"
        "  container_memory_limit: 512m\n"
        "  container_cpu_limit: 1.0\n"
    )
    (repo / ".gitignore").write_text(".mahabharatha/state/\n.mahabharatha/logs/\n.mahabharatha/runtime/\n.gsd/specs/*/progress.md\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "demo project with the sample feature's task graph")
    return repo
