"""The contract between the host and a worker container (stdlib only).

A worker talks to the host only through: its stdout (the host log), its channel to the orchestrator (a
Unix socket in a read-only mounted directory of its own: claims, finishes, progress, and its commits as git
bundles the orchestrator verifies and imports), and its exit code. It never writes the user's repository,
the run state or the user's checkout: those belong to the orchestrator.
"""

from __future__ import annotations

# Exit codes, as users are told.
EXIT_DONE = 0  # all tasks done
EXIT_ERROR = 1  # unrecoverable error
EXIT_CONTEXT_LIMIT = 2  # context limit reached: start the worker again for the same work
EXIT_BLOCKED = 3  # all remaining tasks blocked
EXIT_STOPPED = 130  # stop signal (SIGINT/SIGTERM)
EXIT_OOM = 137  # killed (SIGKILL), typically the memory limit

EXIT_MEANINGS = {
    EXIT_DONE: "done: all tasks completed",
    EXIT_ERROR: "error: unrecoverable failure",
    EXIT_CONTEXT_LIMIT: "context limit reached: restart for the same work",
    EXIT_BLOCKED: "blocked: all remaining tasks are blocked",
    EXIT_STOPPED: "stopped by signal",
    EXIT_OOM: "killed (out of memory or SIGKILL)",
    # Not the worker's own codes: the command could not run at all (`python3 -m mahabharatha_worker`).
    126: "command not executable: the worker image's python3 cannot run",
    127: "command not found: the worker image has no python3 on PATH; every worker image needs python3 and git",
}


def exit_meaning(code: int | None) -> str:
    if code is None:
        return "still running"
    return EXIT_MEANINGS.get(code, f"unexpected exit code {code}")


# The line a worker prints on stdout once its git setup works and it is about to take tasks. The executor's
# "worker process started" check waits for it (by following the container's log stream, not by sleeping).
READY_MARKER = "MAHABHARATHA_WORKER_READY"


def ready_line(worker_id: int) -> str:
    return f"{READY_MARKER} worker={worker_id}"


# Refs where work that must not be merged is kept (never lost): a failed task's work, and uncommitted
# leftovers a worker finds when it starts again after being stopped or killed mid-task.
def failed_ref(feature: str, task_id: str) -> str:
    return f"refs/mahabharatha/failed/{feature}/{task_id}"


def interrupted_ref_prefix(feature: str, worker_id: int) -> str:
    """Leftovers are kept at this prefix plus the time they were found (``...-<unix seconds>``)."""
    return f"refs/mahabharatha/interrupted/{feature}/worker-{worker_id}-"


# Paths inside the container.
WORKSPACE = "/workspace"
CHANNEL_DIR = "/opt/mahabharatha/channel"  # <repo>/.mahabharatha/state/<feature>/channel/worker-N, read-only
CHANNEL_SOCKET = "worker.sock"  # the orchestrator listens on CHANNEL_DIR/CHANNEL_SOCKET
RUNTIME_LIB = "/opt/mahabharatha/lib"  # parent of the mounted runtime package
RUNTIME_PACKAGE = "mahabharatha_worker"  # this directory, mounted at RUNTIME_LIB/RUNTIME_PACKAGE
# The worker's private git directory (objects, index, refs; the user's objects are its alternates):
# <repo>/.mahabharatha/runtime/<feature>/worker-N/git on the host, never read or run by host git.
GIT_WORKTREE_DIR = "/workspace/.git-worktree"
GIT_MAIN_DIR = "/repo/.git"  # <repo>/.git, read-only
WORKER_HOME = "/home/worker"

# Environment variable names the plan sets for every worker.
ENV_WORKER_ID = "ZERG_WORKER_ID"
ENV_FEATURE = "ZERG_FEATURE"
ENV_BRANCH = "ZERG_BRANCH"
ENV_BASE_BRANCH = "MAHABHARATHA_BASE_BRANCH"
ENV_GIT_WORKTREE_DIR = "ZERG_GIT_WORKTREE_DIR"
ENV_GIT_MAIN_DIR = "ZERG_GIT_MAIN_DIR"
ENV_CHANNEL = "MAHABHARATHA_CHANNEL"  # path of the orchestrator's socket for this worker
ENV_AGENT_COMMAND = "MAHABHARATHA_AGENT_COMMAND"
# A copy of the user's Claude login for the container's own home (a secret; see core.auth). The worker
# writes it into $HOME and takes it out of the agent's environment.
ENV_CLAUDE_SEED = "MAHABHARATHA_CLAUDE_SEED"
# "1" in a container the plan started (never on the host): the worker may end stray processes there.
ENV_IN_CONTAINER = "MAHABHARATHA_IN_CONTAINER"
# Agent settings (from workers.*), read by the worker.
ENV_MODEL = "MAHABHARATHA_MODEL"
ENV_MAX_COST_PER_TASK = "MAHABHARATHA_MAX_COST_USD_PER_TASK"
ENV_CONTEXT_THRESHOLD = "MAHABHARATHA_CONTEXT_THRESHOLD_PERCENT"
ENV_CONTEXT_WINDOW = "MAHABHARATHA_CONTEXT_WINDOW_TOKENS"
# Given to the agent command for each task.
ENV_TASK_ID = "MAHABHARATHA_TASK_ID"
ENV_TASK_JSON = "MAHABHARATHA_TASK_JSON"
ENV_TASK_PROMPT = "MAHABHARATHA_TASK_PROMPT"  # set only when the prompt is under PROMPT_ENV_LIMIT bytes
ENV_TASK_PROMPT_FILE = "MAHABHARATHA_TASK_PROMPT_FILE"  # always; the prompt is also the agent's stdin
PROMPT_ENV_LIMIT = 64 << 10
ENV_TASK_ATTEMPT = "MAHABHARATHA_TASK_ATTEMPT"  # 1 for the first try of a task, 2 after one restart, ...
# Where the feature's graph and progress log live (/repo/.gsd/specs/<feature> in a container).
ENV_SPEC_DIR = "MAHABHARATHA_SPEC_DIR"
# The worktree the worker works in: /workspace in a container; subprocess mode sets the host path.
ENV_WORKSPACE = "MAHABHARATHA_WORKSPACE"
# Seconds between state checks while a worker waits for its level to finish (backoff ceiling).
ENV_POLL_MAX = "MAHABHARATHA_POLL_MAX"
# Seconds a stopped worker gives its agent after SIGTERM before it kills the agent's process group.
ENV_STOP_GRACE = "MAHABHARATHA_STOP_GRACE"
GRAPH_FILE = "task-graph.json"
SPEC_FILES = ("requirements.md", "design.md")  # the feature's spec, named in each prompt (and sent to remote workers)
PROGRESS_FILE = "progress.md"

# The ref a worker's bundle carries: its branch for finished work, PARK_REF for work to keep but not merge
# (a failed task's, or leftovers of an interrupted one).
PARK_REF = "refs/mahabharatha/park"

# Channel limits (the orchestrator enforces them; a worker stays below them).
MAX_MESSAGE_BYTES = 1 << 20  # one JSON message
MAX_BUNDLE_BYTES = 256 << 20  # one bundle (a task's commits)
MAX_PROGRESS_CHARS = 500
MAX_RESULT_FILE_BYTES = 100 << 20  # one file of a task's result, as git stores it (inflated)
MAX_RESULT_BYTES = 1 << 30  # all files a task's result adds
CHANNEL_OPS = frozenset({"hello", "claim", "finish", "park", "checkpoint", "release", "progress", "runtime", "secrets"})
# What the orchestrator may send a remote worker in one reply (the base commit's history, as a git pack).
MAX_SYNC_BYTES = 4 << 30
# Remote transport (no bind mounts): the channel is tcp://HOST:PORT and every connection first proves which
# worker it is with that worker's token ({"op": "auth", "token": ...}).
ENV_CHANNEL_TOKEN = "MAHABHARATHA_CHANNEL_TOKEN"
# The channel is TLS with a certificate made for the run; a worker checks its sha256 against this pin before it
# sends its token (no CA is trusted, the pin is the trust).
ENV_CHANNEL_PIN = "MAHABHARATHA_CHANNEL_PIN"
ENV_SECRETS_DIR = "MAHABHARATHA_SECRETS_DIR"  # Swarm: credentials as files, read into the environment
AUTH_TIMEOUT_S = 10.0  # a TCP connection that has not authenticated by then is closed
REMOTE_SPEC_DIR = "/home/worker/.mahabharatha-spec"  # the feature's spec files, sent in the hello reply
MAX_SPEC_BYTES = 512 << 10


def checkpoint_ref(feature: str, task_id: str) -> str:
    """Where a task's work so far is kept when its agent reached the context threshold (the next attempt
    continues from it)."""
    return f"refs/mahabharatha/checkpoint/{feature}/{task_id}"


def format_money(amount: float) -> str:
    """US dollars as people read them: cents, or more digits for amounts under a cent (a budget of 1e-06)."""
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}".rstrip("0")
