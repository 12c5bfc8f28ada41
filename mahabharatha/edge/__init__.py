"""Effects at the edge: the Docker executor, git worktrees, the shared state store, the orchestrator.

Each function takes its dependencies (Docker client, repo path, home) as arguments so tests can hand it a
real engine, a temp repo and a temp home.
"""
