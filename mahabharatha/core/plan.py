"""Build the :class:`~mahabharatha.core.model.LaunchPlan`: pure, deterministic, complete before anything runs.

For worker N of feature F in repository R: the workspace ``R/../.mahabharatha-worktrees/F/worker-N`` is
mounted at ``/workspace``; the worker's private git directory ``R/.mahabharatha/runtime/F/worker-N/git`` at
``/workspace/.git-worktree`` (its objects, index and refs; the workspace's ``.git`` file, a read-only overlay,
points at it); the user's ``R/.git`` read-only at ``/repo/.git`` (the private repository's alternates: nothing
is copied) and ``R/.gsd`` read-only at ``/repo/.gsd``; the worker's own channel directory (one socket of the
orchestrator's) read-only at ``/opt/mahabharatha/channel``. Nothing of the user's repository, checkout or
run state is writable from a container: results come back as bundles the orchestrator verifies.

Everything is computed from parameters (no I/O). Values shared by all workers are built once and reused,
so a 1000-worker plan costs a few milliseconds. ``plan_id`` is a short sha256 of the plan's canonical JSON
(secrets redacted, computed with an empty id), so the same inputs give the same id and byte-identical JSON.
"""

from __future__ import annotations

import hashlib
import posixpath

import msgspec

from ..errors import ConfigError, GraphError
from ..worker import bootstrap
from ..worker import protocol as P
from .config import Config, validate_feature
from .engine import EngineTarget, engine_target, loopback, parse_channel_address
from .graph import TaskGraph
from .memory import MEMORY_FORMS, MemoryLimitError, parse_memory
from .model import (
    LABEL_FEATURE,
    LABEL_MANAGED,
    LABEL_PLAN,
    LABEL_REPO,
    LABEL_WORKER,
    AuthSummary,
    ChannelEndpoint,
    EnvVar,
    Label,
    LaunchPlan,
    Mount,
    PlannedFile,
    SecretEnvVar,
    Tmpfs,
    WorkerSpec,
    Worktree,
)
from .secret import redacting_enc_hook

__all__ = [
    "build_plan",
    "plan_json",
    "worktree_path",
    "worker_branch",
    "base_branch",
    "run_branch_prefix",
    "worker_branch_prefix",
    "overlay_dir",
    "runtime_dir",
    "private_git_dir",
    "channel_socket",
    "state_dir",
    "log_dir",
    "WORKER_COMMAND",
    "SUBPROCESS_NOTICE",
    "PLAN_ID_LENGTH",
]

WORKER_COMMAND = ("python3", "-m", P.RUNTIME_PACKAGE)
SUBPROCESS_NOTICE = (
    "Subprocess mode: agents run on this machine as you, with permissions skipped, and nothing isolates "
    "them from your files; --mode container gives each its own container (see Hardening in the README)"
)
PLAN_ID_LENGTH = 12
OVERLAY_MOUNT = "/opt/mahabharatha/overlay"
SWARM_SECRETS_DIR = "/run/secrets"
REPO_GSD = "/repo/.gsd"

# Contents of the overlay files: the workspace's .git file names the private git directory.
DOTGIT_CONTENT = f"gitdir: {P.GIT_WORKTREE_DIR}\n"
EXCLUDE_CONTENT = "/.git-worktree/\n/.mahabharatha/\n"

_TMPFS_OPTIONS = "rw,nosuid,nodev,exec"
_ENCODER = msgspec.json.Encoder(enc_hook=redacting_enc_hook, order="sorted")


def worktree_path(repo: str, feature: str, worker_id: int) -> str:
    return f"{_worktree_root(repo, feature)}/worker-{worker_id}"


def _worktree_root(repo: str, feature: str) -> str:
    return posixpath.join(posixpath.dirname(repo), ".mahabharatha-worktrees", feature)


def run_branch_prefix(feature: str) -> str:
    """Every branch a run of ``feature`` creates starts with this (the base and the worker branches)."""
    return f"mahabharatha/{feature}/"


def worker_branch_prefix(feature: str) -> str:
    return f"{run_branch_prefix(feature)}worker-"


def worker_branch(feature: str, worker_id: int) -> str:
    return f"{worker_branch_prefix(feature)}{worker_id}"


def base_branch(feature: str) -> str:
    return f"{run_branch_prefix(feature)}base"


def state_dir(repo: str) -> str:
    """Host directory of the shared run state (every feature's, one subdirectory each)."""
    return f"{repo}/.mahabharatha/state"


def log_dir(repo: str, feature: str) -> str:
    """Host directory of one feature's worker stdout logs (two features' runs never share a log file)."""
    return f"{repo}/.mahabharatha/logs/workers/{feature}"


def runtime_dir(repo: str, feature: str, worker_id: int) -> str:
    """Host directory of worker N's own files: ``overlay/`` (host-written, read-only in the container) and
    ``git/`` (the worker's private git directory, written only by the worker, never read by host git)."""
    return f"{repo}/.mahabharatha/runtime/{feature}/worker-{worker_id}"


def overlay_dir(repo: str, feature: str, worker_id: int) -> str:
    return f"{runtime_dir(repo, feature, worker_id)}/overlay"


def private_git_dir(repo: str, feature: str, worker_id: int) -> str:
    return f"{runtime_dir(repo, feature, worker_id)}/git"


def channel_socket(repo: str, feature: str, worker_id: int) -> str:
    """Host path of the orchestrator's socket for worker N (its directory is mounted into that worker only)."""
    return f"{state_dir(repo)}/{feature}/channel/worker-{worker_id}/{P.CHANNEL_SOCKET}"


def plan_json(plan: LaunchPlan) -> bytes:
    """Canonical JSON of a plan: sorted keys, secrets redacted. Same plan, same bytes."""
    return _ENCODER.encode(plan)


def build_plan(
    *,
    repo: str,
    feature: str,
    config: Config,
    auth: AuthSummary,
    secrets: tuple[SecretEnvVar, ...] = (),
    uid: int,
    gid: int,
    worker_runtime_dir: str,
    requested_workers: int | None = None,
    config_path: str = "",
    notices: tuple[str, ...] = (),
    graph: TaskGraph | None = None,
    engine: EngineTarget | None = None,
    channel_host: str = "",
) -> LaunchPlan:
    """Compute the whole launch from already-gathered inputs. Pure and deterministic.

    ``graph`` is the feature's validated task graph (carried by the plan, part of its id); it must be for
    ``feature``.

    ``engine`` is the Docker engine the plan targets (default: the local socket, or a remote target when
    ``workers.transport`` says so); ``channel_host`` is the address of this machine the engine's containers
    reach it at, used for remote workers when ``workers.channel_address`` names none (the caller finds it).

    ``repo`` and ``worker_runtime_dir`` must be absolute, resolved paths. ``requested_workers`` defaults to
    ``workers.max_concurrent`` and is capped by it (with a notice). Raises ConfigError for bad inputs.
    """
    if not posixpath.isabs(repo) or not posixpath.isabs(worker_runtime_dir):
        raise ConfigError(f"repository and worker runtime paths must be absolute, got {repo!r}, {worker_runtime_dir!r}")
    repo = posixpath.normpath(repo)
    if repo == "/":
        raise ConfigError("the repository root cannot be / (worktrees are created next to the repository)")
    validate_feature(feature, "feature")
    if graph is not None and graph.feature != feature:
        raise GraphError(
            f"the task graph is for feature {graph.feature!r}, the plan for {feature!r}",
            hint="fix `feature` in the task graph or pass --feature",
        )
    w, r, s = config.workers, config.resources, config.security
    if requested_workers is None:
        requested_workers = w.max_concurrent
    if isinstance(requested_workers, bool) or not isinstance(requested_workers, int) or requested_workers < 1:
        raise ConfigError(f"--workers: expected a whole number >= 1, found {requested_workers!r}")
    try:
        mem_limit, mem_bytes = parse_memory(r.container_memory_limit)
    except MemoryLimitError as exc:
        raise ConfigError(
            f"resources.container_memory_limit: expected {MEMORY_FORMS}, found {r.container_memory_limit!r} ({exc})"
        ) from None

    if engine is None:
        engine = engine_target(None, None, w.transport)
    cluster = w.launcher_type in ("swarm", "kubernetes")
    transport = "remote" if cluster else engine.transport
    if cluster and w.transport == "local":
        raise ConfigError(
            f"workers.transport: 'local' cannot work with workers.launcher_type: {w.launcher_type} (its nodes do "
            "not share this machine's files); use 'remote' or 'auto'"
        )
    if w.launcher_type == "kubernetes":
        engine = EngineTarget(host="kubernetes (kubeconfig's current context)", source="kubeconfig", transport="remote")
    if w.launcher_type == "subprocess":
        transport = "local"
    channel = _channel(w.channel_address, channel_host, engine) if transport == "remote" else ChannelEndpoint()

    all_notices = list(notices)
    count = min(requested_workers, w.max_concurrent)
    if count < requested_workers:
        all_notices.append(f"Capped {requested_workers} workers to workers.max_concurrent={w.max_concurrent}")
    all_notices.extend(_auth_notices(auth, secrets, count, repo))
    if w.launcher_type == "subprocess":
        all_notices.append(SUBPROCESS_NOTICE)
    if transport == "remote":
        all_notices.append(
            f"Remote transport: nothing is mounted; workers fetch the runtime and the workspace from "
            f"{channel.url}" + (" (port 0: a free port, chosen when the run starts)" if channel.port == 0 else "")
            + " over TLS pinned to a certificate made for the run, each with a token of its own"
        )
        if w.launcher_type == "swarm" and s.no_new_privileges:
            all_notices.append(
                "Swarm cannot apply security.no_new_privileges (services have no such field at API 1.41); "
                "the other hardening (read-only root, dropped capabilities, non-root user, limits) applies"
            )

    base = base_branch(feature)
    shared_state_dir = state_dir(repo)
    workers_log_dir = log_dir(repo, feature)
    git_dir = f"{repo}/.git"
    spec_dir = f"{REPO_GSD}/specs/{feature}"

    # Built once, shared by every worker.
    shared_mounts_mid = (
        Mount(source=git_dir, target=P.GIT_MAIN_DIR, read_only=True),
        Mount(source=f"{repo}/.gsd", target=REPO_GSD, read_only=True),
    )
    shared_mounts_tail: list[Mount] = [
        Mount(source=worker_runtime_dir, target=f"{P.RUNTIME_LIB}/{P.RUNTIME_PACKAGE}", read_only=True)
    ]
    tail = tuple(shared_mounts_tail)
    tmpfs = (
        (
            Tmpfs(target="/tmp", options=f"{_TMPFS_OPTIONS},size=512m,mode=1777"),
            Tmpfs(target=P.WORKER_HOME, options=f"{_TMPFS_OPTIONS},size=256m,mode=1777"),
            Tmpfs(target="/run", options="rw,nosuid,nodev,size=16m"),
        )
        if s.container_readonly
        else ()
    )
    shared_env = {
        "HOME": P.WORKER_HOME,
        P.ENV_FEATURE: feature,
        P.ENV_BASE_BRANCH: base,
        P.ENV_GIT_WORKTREE_DIR: P.GIT_WORKTREE_DIR,
        P.ENV_GIT_MAIN_DIR: P.GIT_MAIN_DIR,
        P.ENV_CHANNEL: f"{P.CHANNEL_DIR}/{P.CHANNEL_SOCKET}",
        P.ENV_IN_CONTAINER: "1",
        # The container is the sandbox: Claude Code refuses --dangerously-skip-permissions as uid 0 unless told so.
        "IS_SANDBOX": "1",
        "MAHABHARATHA_SPEC_DIR": spec_dir,
        P.ENV_AGENT_COMMAND: w.agent_command,
        P.ENV_CONTEXT_THRESHOLD: str(w.context_threshold_percent),
        P.ENV_CONTEXT_WINDOW: str(w.context_window_tokens),
        **({P.ENV_MODEL: w.model} if w.model else {}),
        **({P.ENV_MAX_COST_PER_TASK: repr(float(w.max_cost_usd_per_task))} if w.max_cost_usd_per_task else {}),
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "core.excludesFile",
        "GIT_CONFIG_VALUE_0": f"{OVERLAY_MOUNT}/exclude",
        "GIT_CONFIG_KEY_1": "safe.directory",
        "GIT_CONFIG_VALUE_1": "*",
        "PYTHONPATH": P.RUNTIME_LIB,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    per_worker_names = (
        P.ENV_WORKER_ID, P.ENV_BRANCH, "GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_EMAIL",
    )
    # The sorted env layout: a shared EnvVar, or None for a per-worker slot filled below.
    env_layout = [
        (name, EnvVar(name=name, value=shared_env[name]) if name in shared_env else None)
        for name in sorted((*shared_env, *per_worker_names))
    ]
    secret_env = tuple(sorted(secrets, key=lambda e: e.name))
    label_feature = Label(key=LABEL_FEATURE, value=feature)
    label_managed = Label(key=LABEL_MANAGED, value="true")
    label_repo = Label(key=LABEL_REPO, value=repo)
    placeholder_plan = Label(key=LABEL_PLAN, value="")
    user = f"{uid}:{gid}"
    cap_drop = ("ALL",) if s.drop_capabilities else ()
    security_opt = ("no-new-privileges:true",) if s.no_new_privileges else ()
    cpus = float(r.container_cpu_limit)
    wt_root = _worktree_root(repo, feature)

    remote = transport == "remote"
    if remote:
        env_layout, tmpfs = _remote_layout(env_layout, shared_env, channel, tmpfs, w.launcher_type)
    specs: list[WorkerSpec] = []
    worker_labels: list[Label] = []
    for n in range(count):
        wt_path = f"{wt_root}/worker-{n}"
        branch = worker_branch(feature, n)
        private = private_git_dir(repo, feature, n)
        overlay = overlay_dir(repo, feature, n)
        socket_path = channel_socket(repo, feature, n)
        who = f"mahabharatha worker {n}"
        email = f"worker-{n}@mahabharatha.invalid"
        per = {
            P.ENV_WORKER_ID: str(n), P.ENV_BRANCH: branch, "GIT_AUTHOR_NAME": who, "GIT_COMMITTER_NAME": who,
            "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_EMAIL": email,
        }
        environment = tuple(var if var is not None else EnvVar(name=name, value=per[name]) for name, var in env_layout)
        dotgit = f"{overlay}/dotgit"
        mounts = () if remote else (
            Mount(source=wt_path, target=P.WORKSPACE, read_only=False),
            Mount(source=dotgit, target=f"{P.WORKSPACE}/.git", read_only=True),
            Mount(source=private, target=P.GIT_WORKTREE_DIR, read_only=False),
            *shared_mounts_mid,
            Mount(source=overlay, target=OVERLAY_MOUNT, read_only=True),
            Mount(source=posixpath.dirname(socket_path), target=P.CHANNEL_DIR, read_only=True),
            *tail,
        )
        worker_label = Label(key=LABEL_WORKER, value=str(n))
        worker_labels.append(worker_label)
        specs.append(
            WorkerSpec(
                worker_id=n,
                name=f"{w.container_prefix}-{n}",
                image=r.container_image,
                command=bootstrap.COMMAND if remote else WORKER_COMMAND,
                volumes=(P.WORKSPACE,) if remote else (),
                mounts=mounts,
                tmpfs=tmpfs,
                environment=environment,
                secret_environment=secret_env,
                mem_limit=mem_limit,
                mem_limit_bytes=mem_bytes,
                cpus=cpus,
                pids_limit=r.pids_limit,
                read_only=s.container_readonly,
                user=user,
                working_dir=P.WORKSPACE,
                labels=(label_feature, label_managed, placeholder_plan, label_repo, worker_label),
                cap_drop=cap_drop,
                security_opt=security_opt,
                init=True,
                worktree=Worktree(worker_id=n, path=wt_path, branch=branch, base=base, git_dir=private),
                files=() if remote else (
                    PlannedFile(path=dotgit, content=DOTGIT_CONTENT),
                    PlannedFile(path=f"{overlay}/exclude", content=EXCLUDE_CONTENT),
                ),
                log_path=f"{workers_log_dir}/worker-{n}.stdout.log",
                channel_socket="" if remote else socket_path,
            )
        )

    draft = LaunchPlan(
        plan_id="",
        repo=repo,
        feature=feature,
        mode=w.launcher_type,
        image=r.container_image,
        container_prefix=w.container_prefix,
        base_branch=base,
        state_dir=shared_state_dir,
        log_dir=workers_log_dir,
        config_path=config_path,
        requested_workers=requested_workers,
        workers=tuple(specs),
        worktrees=tuple(spec.worktree for spec in specs),
        auth=auth,
        notices=tuple(all_notices),
        retry_attempts=w.retry_attempts,
        timeout_minutes=w.timeout_minutes,
        agent_command=w.agent_command,
        max_cost_usd=w.max_cost_usd,
        graph=graph,
        review=w.review,
        transport=transport,
        engine=engine.host if w.launcher_type != "subprocess" else "",
        engine_source=engine.source if w.launcher_type != "subprocess" else "",
        channel=channel,
        namespace=w.kubernetes_namespace if w.launcher_type == "kubernetes" else "",
    )
    plan_id = hashlib.sha256(plan_json(draft)).hexdigest()[:PLAN_ID_LENGTH]
    label_plan = Label(key=LABEL_PLAN, value=plan_id)
    replace = msgspec.structs.replace
    workers = tuple(
        replace(spec, labels=(label_feature, label_managed, label_plan, label_repo, wl))
        for spec, wl in zip(specs, worker_labels)
    )
    return replace(draft, plan_id=plan_id, workers=workers)


def _channel(address: str, found_host: str, engine: EngineTarget) -> ChannelEndpoint:
    """The endpoint remote workers dial: ``workers.channel_address``, else ``found_host`` (this machine's
    address on the route to the engine). A loopback address cannot be reached from the engine's containers."""
    host, port = parse_channel_address(address, "workers.channel_address") if address else (found_host, 0)
    if not host:
        raise ConfigError(
            f"workers.channel_address: no address of this machine towards the engine {engine.host} was found; "
            "set it to HOST or HOST:PORT that the engine's containers can reach"
        )
    if loopback(host):
        raise ConfigError(
            f"workers.channel_address: {host} is this machine's loopback, which containers of the engine "
            f"{engine.host} cannot reach; set it (or MAHABHARATHA_CHANNEL_ADDRESS) to HOST[:PORT] they can reach"
        )
    return ChannelEndpoint(kind="tcp", host=host, port=port)


def _remote_layout(
    layout: list[tuple[str, EnvVar | None]], shared: dict[str, str], channel: ChannelEndpoint, tmpfs: tuple[Tmpfs, ...],
    launcher: str,
) -> tuple[list[tuple[str, EnvVar | None]], tuple[Tmpfs, ...]]:
    """The environment layout and tmpfs mounts of a worker nothing is mounted into: no /repo/.git (no
    alternates: the history arrives as a pack), no overlay, the channel a TCP address, the spec in the home,
    the workspace an anonymous volume (on the engine's disk, removed with the container)."""
    drop = {P.ENV_GIT_MAIN_DIR, "GIT_CONFIG_KEY_1", "GIT_CONFIG_VALUE_1"}
    values = {
        **shared,
        P.ENV_CHANNEL: channel.url,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        P.ENV_SPEC_DIR: P.REMOTE_SPEC_DIR,
        "PYTHONPATH": bootstrap.RUNTIME_DIR,
    }
    if launcher == "swarm":
        values[P.ENV_SECRETS_DIR] = SWARM_SECRETS_DIR
    names = sorted({name for name, _ in layout if name not in drop} | ({P.ENV_SECRETS_DIR} if launcher == "swarm" else set()))
    per_worker = {name for name, var in layout if var is None}
    out = [(name, None if name in per_worker else EnvVar(name=name, value=values[name])) for name in names]
    # The local worker's tmpfs mounts, but on Swarm none at /run (Swarm puts its secrets under /run/secrets).
    return out, tuple(t for t in tmpfs if not (launcher == "swarm" and t.target == "/run"))


def _auth_notices(auth: AuthSummary, secrets: tuple[SecretEnvVar, ...], count: int, repo: str) -> list[str]:
    names = {e.name for e in secrets}
    if not names:
        login = (
            f"{auth.claude_dir} has no .credentials.json (a login kept in a keychain cannot be copied); "
            if auth.claude_dir else ""
        )
        return [
            f"No Claude credentials found: {login}set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN (environment "
            f"or {repo}/.env), or log in with `claude`; agents that call the API will fail"
        ]
    if auth.oauth:
        return [
            f"{count} worker(s) get a copy of your Claude login ({auth.claude_login_copied}); your ~/.claude is not "
            "mounted. A token refreshed in one worker rotates it for all: a long run can log the others (and your "
            "own claude) out. A long-lived CLAUDE_CODE_OAUTH_TOKEN (claude setup-token) avoids it"
        ]
    return []
