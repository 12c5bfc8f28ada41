"""The LaunchPlan: an immutable, complete description of what container mode will do.

Everything is a frozen msgspec Struct with tuple fields, so a plan is hashable, comparable, and encodes to
byte-identical JSON for the same inputs. Renderers (text, JSON, ``docker run`` lines) and the executor are
all functions of this one value: what users read is what runs.

Secrets live only in ``WorkerSpec.secret_environment`` as :class:`~mahabharatha.core.secret.Secret` values;
encoding a plan without :func:`~mahabharatha.core.secret.redacting_enc_hook` raises instead of leaking.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from .graph import TaskGraph
from .secret import Secret

__all__ = [
    "Mount",
    "Tmpfs",
    "EnvVar",
    "SecretEnvVar",
    "Label",
    "PlannedFile",
    "Worktree",
    "AuthSummary",
    "ChannelEndpoint",
    "WorkerSpec",
    "LaunchPlan",
    "LABEL_PREFIX",
    "LABEL_MANAGED",
    "LABEL_REPO",
    "LABEL_FEATURE",
    "LABEL_WORKER",
    "LABEL_PLAN",
    "WORKSPACE",
    "READY_TIMEOUT_S",
    "WORKER_START_TIMEOUT_S",
]

# Label keys put on every container we create. Ownership (repo + feature) decides what may be replaced
# or removed; the plan id tells which plan made a container.
LABEL_PREFIX = "io.mahabharatha"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"  # always "true"
LABEL_REPO = f"{LABEL_PREFIX}.repo"  # absolute path of the repository root on the host
LABEL_FEATURE = f"{LABEL_PREFIX}.feature"
LABEL_WORKER = f"{LABEL_PREFIX}.worker"  # worker id, decimal
LABEL_PLAN = f"{LABEL_PREFIX}.plan"  # LaunchPlan.plan_id

WORKSPACE = "/workspace"
READY_TIMEOUT_S = 30.0
WORKER_START_TIMEOUT_S = 120.0


class Mount(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bind mount: host ``source`` at container ``target``."""

    source: str
    target: str
    read_only: bool = False


class Tmpfs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tmpfs mount (used for writable scratch space on a read-only root filesystem)."""

    target: str
    options: str = "rw,nosuid,nodev,size=256m"


class EnvVar(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    value: str


class SecretEnvVar(msgspec.Struct, frozen=True):
    """An environment variable whose value is a credential. Rendered redacted everywhere."""

    name: str
    value: Secret
    source: str  # where it came from, e.g. "environment" or "/repo/.env"; never the value


class Label(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    value: str


class PlannedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A small host file the executor writes before starting containers (e.g. git overlay files that are
    bind-mounted read-only inside the container so container git sees the worktree without the host's
    own files being rewritten)."""

    path: str
    content: str


class Worktree(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A worker's workspace + branch, created (idempotently) before it starts.

    The workspace is a plain directory (not a git worktree of the user's repository): the worker's git lives
    in ``git_dir``, private to the worker (objects, index, refs; the user's objects as alternates). The branch
    is in the user's repository and moves only when the orchestrator imports a verified result."""

    worker_id: int
    path: str  # <repo>/../.mahabharatha-worktrees/<feature>/worker-N
    branch: str  # mahabharatha/<feature>/worker-N
    base: str  # branch or commit the worker branch starts from (mahabharatha/<feature>/base)
    git_dir: str  # <repo>/.mahabharatha/runtime/<feature>/worker-N/git : the worker's private git directory


class AuthSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What auth discovery found, without any secret value."""

    api_key_source: str | None = None  # "environment", "<repo>/.env", or None
    oauth_token_source: str | None = None  # CLAUDE_CODE_OAUTH_TOKEN source, or None
    claude_dir: str | None = None  # ~/.claude when present (never mounted)
    claude_json: str | None = None  # ~/.claude.json when present (never mounted)
    claude_login_copied: str | None = None  # ~/.claude/.credentials.json, when its login is copied to workers

    @property
    def oauth(self) -> bool:
        return self.claude_login_copied is not None


class ChannelEndpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where workers reach the orchestrator. ``unix``: one socket per worker, its directory bind-mounted
    (local transport). ``tcp``: one listener at ``host:port`` on this machine for all workers, each proving
    which worker it is with a token of its own made when the run starts (remote transport: nothing mounted).
    Port 0 means a free port chosen when the run starts."""

    kind: Literal["unix", "tcp"] = "unix"
    host: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}" if self.kind == "tcp" else ""


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything needed to start one worker container."""

    worker_id: int
    name: str  # <prefix>-N, default mahabharatha-worker-N
    image: str
    command: tuple[str, ...]
    mounts: tuple[Mount, ...]
    tmpfs: tuple[Tmpfs, ...]
    environment: tuple[EnvVar, ...]  # sorted by name; no secrets here
    secret_environment: tuple[SecretEnvVar, ...]  # sorted by name
    mem_limit: str  # Docker memory string as the user wrote it, normalised (e.g. "4g")
    mem_limit_bytes: int
    cpus: float
    pids_limit: int | None
    read_only: bool  # root filesystem
    user: str  # "uid:gid"
    working_dir: str
    labels: tuple[Label, ...]  # sorted by key
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    init: bool
    worktree: Worktree
    files: tuple[PlannedFile, ...]  # host files the executor writes before start
    log_path: str  # host path of the worker's stdout log
    # Local transport: host path of the orchestrator's socket for this worker (its directory is mounted).
    # Remote transport: "" (the plan's ChannelEndpoint; the token is made when the run starts).
    channel_socket: str
    ready_timeout_s: float = READY_TIMEOUT_S
    start_timeout_s: float = WORKER_START_TIMEOUT_S
    # Container paths of anonymous volumes: scratch space on the engine's disk that goes with the container
    # (remote transport: the workspace, exec allowed, not counted against the memory limit).
    volumes: tuple[str, ...] = ()

    @property
    def remote(self) -> bool:
        """Planned for the remote transport: nothing mounted, the channel is the plan's TCP endpoint."""
        return not self.channel_socket

    def env_dict(self) -> dict[str, str]:
        """Plain (non-secret) environment as a dict."""
        return {e.name: e.value for e in self.environment}

    def label_dict(self) -> dict[str, str]:
        return {lbl.key: lbl.value for lbl in self.labels}


class LaunchPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole launch: computed before anything happens, then rendered or executed."""

    plan_id: str  # stable hash of everything below (same inputs, same id)
    repo: str  # absolute repository root
    feature: str
    mode: Literal["container", "subprocess", "swarm", "kubernetes"]
    image: str
    container_prefix: str
    base_branch: str  # mahabharatha/<feature>/base
    state_dir: str  # <repo>/.mahabharatha/state
    log_dir: str  # <repo>/.mahabharatha/logs/workers
    config_path: str  # the config file that was read (may not exist)
    requested_workers: int  # what the user asked for, before capping
    workers: tuple[WorkerSpec, ...]
    worktrees: tuple[Worktree, ...]
    auth: AuthSummary
    notices: tuple[str, ...] = ()  # human notes, e.g. "Capped 8 workers to workers.max_concurrent=5"
    retry_attempts: int = 2
    timeout_minutes: int = 60
    agent_command: str = ""
    max_cost_usd: float | None = None  # workers.max_cost_usd: the run stops when its agents' cost reaches it
    # The feature's task graph, validated: what the run will do (None when the repository has none yet:
    # such a plan can be rendered and its fleet started, but not executed).
    graph: TaskGraph | None = None
    review: bool = False  # workers.review: each level waits for `mahabharatha approve` before its merge
    # Where the containers run and how work reaches them. "local": the engine shares this machine's files
    # (bind mounts, a Unix socket per worker). "remote": it does not (tcp://, ssh://, a Swarm): nothing is
    # mounted, the workspace and the runtime arrive over the TCP channel, results return the same way.
    transport: Literal["local", "remote"] = "local"
    engine: str = ""  # the Docker engine's address, as found (DOCKER_HOST, a context's endpoint, the socket)
    engine_source: str = ""  # where that address came from: "DOCKER_HOST", "context NAME" or "default"
    channel: ChannelEndpoint = ChannelEndpoint()
    namespace: str = ""  # mode kubernetes: the namespace its Jobs and Secret go into

    @property
    def containers(self) -> bool:
        """Workers run in containers (a Docker engine or a Swarm), not as host processes."""
        return self.mode != "subprocess"
