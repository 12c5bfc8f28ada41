"""Apply a :class:`~mahabharatha.core.model.LaunchPlan` to a Docker engine through docker-py.

Two layers, like docker-py's own ``containers.run``:

- :func:`create_kwargs` is a pure translation of one planned worker into ``containers.create`` keyword
  arguments (unit-tested without a daemon). Through :func:`secret_environment` it is where credentials leave
  the plan, for the Docker API only.
- :func:`execute` does the work, in the order users are told: check the engine, the image and the container
  names (nothing is touched when a same-named container belongs to someone else); write the planned overlay
  files; create the base branch and worktrees; remove this feature's stale containers; open the event stream;
  create and start every worker **in parallel**; wait for each to run (events) and to print its ready line
  (log stream, copied to the host log). A launch that fails removes every container it started (unless
  ``keep_failed``) and never deletes a worktree.

Everything goes through the Docker API: no ``docker`` subprocess, so ``DOCKER_HOST`` and contexts work and
secrets never appear on a command line. Nothing here sleeps to wait: readiness comes from events and logs.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.model import (
    LABEL_FEATURE,
    LABEL_MANAGED,
    LABEL_REPO,
    LABEL_WORKER,
    LaunchPlan,
    WorkerSpec,
)
from ..errors import LaunchError
from ..worker import protocol as P
from ..worker.protocol import exit_meaning, ready_line
from . import worktrees as _worktrees
from .images import BUILD_COMMAND

if TYPE_CHECKING:  # pragma: no cover
    from docker import DockerClient

    from .channel import ChannelLink

__all__ = [
    "WorkerHandle",
    "Launch",
    "WorkerExit",
    "create_kwargs",
    "secret_environment",
    "watch_feature_events",
    "make_client",
    "redactor",
    "preflight",
    "start_fleet",
    "launch_fleet",
    "run_lock",
    "start_worker",
    "feature_containers",
    "worker_exit",
    "wait_exit",
    "stop_workers",
    "remove_containers",
    "write_planned_files",
]

_LOG_TAIL_LINES = 10  # log lines quoted in a "Worker process failed to start" message
# Mount targets whose (host) source directories the executor creates when missing.
_SHARED_DIR_TARGETS = frozenset({"/repo/.gsd", "/opt/mahabharatha/channel"})


class WorkerHandle(msgspec.Struct, frozen=True):
    """A started worker container."""

    worker_id: int
    container_id: str
    name: str
    status: str  # engine status when the launch returned, normally "running"


class Launch(msgspec.Struct, frozen=True):
    """What :func:`execute` started."""

    plan_id: str
    repo: str
    feature: str
    workers: tuple[WorkerHandle, ...]


class WorkerExit(msgspec.Struct, frozen=True):
    """How a worker container ended (read from the engine before anything removes it)."""

    worker_id: int
    exit_code: int | None  # None while still running
    meaning: str  # see mahabharatha.worker.protocol.EXIT_MEANINGS
    oom_killed: bool
    name: str = ""
    removing: bool = False  # the engine is removing it (``docker rm -f``): a lost worker, not a failure


# --------------------------------------------------------------------------------------------------------
# Pure translation


def secret_environment(spec: WorkerSpec, *, reveal: bool, secret_store: bool = False) -> dict[str, str]:
    """The worker's credential variables: real values only with ``reveal=True``, for handing to the process
    that needs them (the Docker API, or a subprocess-mode worker); redacted otherwise. The one place where a
    credential's value is handed to anything (the log redactor only uses it to find and hide it).

    A remote worker (``spec.remote``: its channel is TCP) is given only its channel token this way: the engine
    writes a container's environment to its disk, so credentials reach remote workers over the channel;
    ``secret_store``: the values go into a store made for secrets (a Kubernetes Secret), all of them."""
    token_only = spec.remote and not secret_store
    return {
        s.name: s.value.reveal() if reveal else s.value.redacted
        for s in spec.secret_environment
        if not token_only or s.name == P.ENV_CHANNEL_TOKEN
    }


def create_kwargs(spec: WorkerSpec, *, reveal_secrets: bool) -> dict[str, Any]:
    """docker-py ``containers.create(**kwargs)`` arguments for one planned worker.

    With ``reveal_secrets=False`` secret values are their redacted form (for display and tests); only the
    executor passes ``True``, handing the values to the Docker API and nowhere else.
    """
    from docker.types import Mount as DockerMount

    environment = {**spec.env_dict(), **secret_environment(spec, reveal=reveal_secrets)}
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "detach": True,
        "user": spec.user,
        "working_dir": spec.working_dir,
        "environment": environment,
        "labels": spec.label_dict(),
        # Mount, not volumes=: a missing bind source is an error instead of a new root-owned directory.
        "mounts": [
            DockerMount(target=m.target, source=m.source, type="bind", read_only=m.read_only) for m in spec.mounts
        ] + [DockerMount(target=target, source=None, type="volume") for target in spec.volumes],
        "tmpfs": {t.target: t.options for t in spec.tmpfs},
        "mem_limit": spec.mem_limit_bytes,
        "nano_cpus": round(spec.cpus * 1e9),  # the API wants an int
        "read_only": spec.read_only,
        "init": spec.init,
    }
    if spec.pids_limit:  # docker-py drops 0 silently; None means the engine default
        kwargs["pids_limit"] = spec.pids_limit
    if spec.cap_drop:
        kwargs["cap_drop"] = list(spec.cap_drop)
    if spec.security_opt:
        kwargs["security_opt"] = list(spec.security_opt)
    return kwargs


def redactor(specs: Iterable[WorkerSpec]) -> Callable[[str], str]:
    """A function that replaces every secret value of ``specs`` in a text by its redacted form."""
    pairs = sorted(
        {(s.value.reveal(), s.value.redacted) for spec in specs for s in spec.secret_environment if s.value.reveal()},
        key=lambda p: -len(p[0]),
    )

    def redact(text: str) -> str:
        for value, shown in pairs:
            text = text.replace(value, shown)
        return text

    return redact


# --------------------------------------------------------------------------------------------------------
# Engine access


_LOCAL_SOCKET = "unix:///var/run/docker.sock"


def _docker_host() -> str:
    """The engine every command talks to: ``DOCKER_HOST``, else the current Docker context's (what the planner
    says the plan targets), else the local socket."""
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    from .dockerctx import docker_context

    context = docker_context(os.environ, Path.home())
    return context[1] if context else _LOCAL_SOCKET


def _permission_denied(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was caused by, EACCES/EPERM (docker-py wraps the socket's PermissionError in
    urllib3's ProtocolError, requests' ConnectionError and a DockerException that keeps only its text)."""
    import errno

    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PermissionError) or (
            isinstance(current, OSError) and current.errno in (errno.EACCES, errno.EPERM)
        ):
            return True
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        pending.extend(a for a in current.args if isinstance(a, BaseException))
    return "PermissionError(13" in str(exc) or "[Errno 13] Permission denied" in str(exc)


def _socket_group(path: str) -> str:
    """The group that may use the socket at ``path`` (``docker`` when it cannot be told, or is root's)."""
    import grp

    try:
        gid = os.stat(path).st_gid
        return grp.getgrgid(gid).gr_name if gid != 0 else "docker"
    except (OSError, KeyError):
        return "docker"


def _engine_error(exc: BaseException, action: str = "Failed to start container") -> LaunchError:
    host = _docker_host()
    if host.startswith("ssh://") and "paramiko" in str(exc):
        return LaunchError(f"{action}: the Docker engine at {host} needs paramiko for ssh://", hint="pip install paramiko")
    if host.startswith("ssh://"):
        return LaunchError(
            f"{action}: cannot reach the Docker engine at {host} over ssh; check that `ssh {host[len('ssh://'):]} "
            "docker version` works without a password prompt (a key or an agent; the far side needs the docker CLI)"
        )
    if host.startswith("unix://") and _permission_denied(exc):
        socket_path = host[len("unix://"):]
        group = _socket_group(socket_path)
        return LaunchError(
            f"{action}: permission denied on the Docker socket {socket_path}: add your user to the {group} "
            f"group (sudo usermod -aG {group} $USER, then log in again), or point DOCKER_HOST at an engine "
            "you may use"
        )
    return LaunchError(
        f"{action}: cannot reach the Docker engine at {host}; start Docker "
        f"or point DOCKER_HOST at a running engine ({type(exc).__name__})"
    )


def _connection_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests

    return (requests.exceptions.ConnectionError, docker.errors.DockerException, ConnectionError, FileNotFoundError)


def _quiet_ssh_close() -> None:
    """docker-py closes an ssh connection by writing to its ssh process, also when that process has ended (the
    far side hung up): a BrokenPipeError from a finalizer at interpreter exit, printed as a traceback after
    the command's own output. Such a close has nothing left to do, so it stays quiet."""
    from docker.transport import sshconn

    original = sshconn.SSHSocket.close
    if getattr(original, "_mahabharatha_quiet", False):
        return

    def close(self: Any) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionError, ValueError):
            original(self)

    close._mahabharatha_quiet = True  # type: ignore[attr-defined]
    sshconn.SSHSocket.close = close  # type: ignore[method-assign]


def make_client(workers: int = 1, *, timeout: int = 120, action: str = "Failed to start container") -> DockerClient:
    """A ``docker.DockerClient`` from the environment, its connection pool sized for ``workers``.

    ``action`` starts the message when the engine cannot be reached (what the user's command could not do).

    Each worker holds a log stream while it runs and the launch holds an event stream, so the pool is sized
    ``2 * workers + 4`` (docker-py's default of 10 would queue parallel starts). Raises :class:`LaunchError`
    when the engine cannot be reached.
    """
    import docker

    pool = max(10, 2 * workers + 4)
    host = _docker_host()
    if host.startswith("ssh://"):
        _quiet_ssh_close()
    try:
        if os.environ.get("DOCKER_HOST") or host == _LOCAL_SOCKET:
            # ssh:// through the ssh binary (the user's keys, agent and config), as the docker CLI does
            client = docker.from_env(max_pool_size=pool, timeout=timeout, use_ssh_client=host.startswith("ssh://"))
        else:  # the current Docker context's engine (docker-py itself does not read contexts)
            client = docker.DockerClient(base_url=host, max_pool_size=pool, timeout=timeout, use_ssh_client=host.startswith("ssh://"))
        client.ping()
    except _connection_errors() as exc:
        raise _engine_error(exc, action) from None
    return client


# --------------------------------------------------------------------------------------------------------
# Host preparation


def write_planned_files(specs: Iterable[WorkerSpec]) -> None:
    """Write each worker's planned overlay files (small, container-only git files; never through a symlink)."""
    for spec in specs:
        for planned in spec.files:
            path = Path(planned.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _worktrees.write_small(str(path), planned.content)


def _prepare_host(plan: LaunchPlan, specs: Sequence[WorkerSpec]) -> Callable[[WorkerSpec], None]:
    """Write overlay files, make the shared directories and the base branch; return ``prepare(spec)``, which
    creates that worker's worktree and checks its mount sources (called per worker, so containers of
    earlier workers start while later worktrees are still being created). Remote transport: only the host
    logs' directories (nothing is mounted, the worker's git lives in its container)."""
    Path(plan.state_dir).mkdir(parents=True, exist_ok=True)
    Path(plan.log_dir).mkdir(parents=True, exist_ok=True)
    for spec in specs:
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    if plan.transport == "remote":
        return lambda _spec: None
    write_planned_files(specs)
    for spec in specs:
        for m in spec.mounts:
            # Shared directories of the main checkout may not exist in a fresh repository yet.
            if m.target in _SHARED_DIR_TARGETS:
                Path(m.source).mkdir(parents=True, exist_ok=True)
    ensure_worktree = _worktrees.worktree_creator(plan.repo, plan.base_branch)

    def prepare(spec: WorkerSpec) -> None:
        ensure_worktree(spec.worktree)
        missing = [f"{m.source} (for {m.target})" for m in spec.mounts if not os.path.lexists(m.source)]
        if missing:
            raise LaunchError(
                f"Failed to start container {spec.name}: mount source missing: {', '.join(missing)}",
                hint="run the launch again from the repository root, or recreate the missing path",
            )

    return prepare


# --------------------------------------------------------------------------------------------------------
# Containers by owner


def feature_containers(client: Any, repo: str, feature: str, *, running_only: bool = False) -> list[dict[str, Any]]:
    """The engine's container summaries (``docker ps`` rows) labelled with ``repo`` and ``feature``."""
    try:
        return list(client.api.containers(all=not running_only, filters=owner_filters(repo, feature)))
    except _connection_errors() as exc:
        raise _engine_error(exc) from None


def owner_filters(repo: str, feature: str) -> dict[str, Any]:
    """Engine API filters for what this repo's launches of ``feature`` made (containers, services, secrets)."""
    return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_REPO}={repo}", f"{LABEL_FEATURE}={feature}"]}


def owned_by(labels: dict[str, str], repo: str, feature: str) -> bool:
    """Whether ``labels`` say this repo's launches of ``feature`` made the object (so it may be replaced)."""
    return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_REPO) == repo and labels.get(LABEL_FEATURE) == feature


def _owner_text(labels: dict[str, str]) -> str:
    if labels.get(LABEL_MANAGED) != "true":
        return "not created by mahabharatha"
    return f"repo {labels.get(LABEL_REPO, '?')}, feature {labels.get(LABEL_FEATURE, '?')}"


def _stale_containers(client: Any, plan: LaunchPlan, specs: Sequence[WorkerSpec]) -> dict[str, str]:
    """Existing containers (name -> id) with the planned names that belong to this repo and feature.

    A same-named container owned by anything else makes the launch refuse (before any effect).
    """
    names = {spec.name for spec in specs}
    rows = client.api.containers(all=True, filters={"name": [f"^/{n}$" for n in sorted(names)]})
    stale: dict[str, str] = {}
    for row in rows:
        name = next((n.lstrip("/") for n in row.get("Names") or () if n.lstrip("/") in names), None)
        if name is None:
            continue
        labels = row.get("Labels") or {}
        if owned_by(labels, plan.repo, plan.feature):
            stale[name] = row["Id"]
            continue
        if labels.get(LABEL_MANAGED) == "true" and row.get("State") in ("running", "restarting"):
            # Someone's run is using it right now: cleaning it up would kill that run.
            fix = (
                "that run is in progress: wait for it, or give this launch its own names with "
                "workers.container_prefix (or MAHABHARATHA_CONTAINER_PREFIX)"
            )
        elif labels.get(LABEL_MANAGED) == "true":
            fix = (
                f"run `mahabharatha cleanup {labels.get(LABEL_FEATURE, 'FEATURE')}` in {labels.get(LABEL_REPO, 'its repo')}"
                " or set workers.container_prefix to another name"
            )
        else:
            fix = "remove or rename it, or set workers.container_prefix to another name"
        raise LaunchError(
            f"Failed to start container: a container named {name} already exists and belongs to "
            f"{_owner_text(labels)}, not to repo {plan.repo}, feature {plan.feature}; not removing it",
            hint=fix,
        )
    return stale


# One sentence, no nested parentheses (the CLI shows a hint in parentheses after the message).
_BUILD_HINT = f"build it with `{BUILD_COMMAND}` or `mahabharatha build-image`"


def _check_images(client: Any, specs: Sequence[WorkerSpec]) -> None:
    import docker.errors

    for image in sorted({spec.image for spec in specs}):
        try:
            client.images.get(image)  # never pull
        except docker.errors.ImageNotFound:
            where = _engine_name(client)
            raise LaunchError(
                f"Failed to start container: image {image} not found on the Docker engine{where}",
                hint=_BUILD_HINT + (" with DOCKER_HOST pointing at that engine" if where else ""),
            ) from None


def _engine_name(client: Any) -> str:
    """`` at tcp://HOST:PORT`` for a remote engine (which one lacks the image), "" for the local socket."""
    url = str(getattr(getattr(client, "api", None), "base_url", "") or "")
    if url.startswith(("http://", "https://")) and "localunixsocket" not in url and "localnpipe" not in url:
        return f" at {url.replace('http://', 'tcp://', 1)}"
    return ""


def _remove_ids(client: Any, ids: Iterable[str]) -> None:
    """Force-remove containers, in parallel (each removal is a ~0.1 s stop + cleanup in the engine)."""
    import docker.errors

    def remove(cid: str) -> None:
        try:
            client.api.remove_container(cid, force=True, v=True)  # (v: its anonymous volumes go too)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise

    ids = list(ids)
    if len(ids) <= 1:
        for cid in ids:
            remove(cid)
        return
    with ThreadPoolExecutor(max_workers=min(len(ids), 16), thread_name_prefix="mahabharatha-remove") as pool:
        list(pool.map(remove, ids))


# --------------------------------------------------------------------------------------------------------
# Starting and watching


def watch_feature_events(
    client: Any,
    repo: str,
    feature: str,
    handle: Callable[[str, str, dict[str, str]], None],
    *,
    actions: Sequence[str] = (),
    name: str = "mahabharatha-events",
) -> Any:
    """Feed the engine's events for one repo+feature's containers to ``handle(container_id, action, labels)``
    on a daemon thread; ``actions`` (e.g. ``("die",)``) narrows them. Open it *before* starting containers so
    no event is missed. Returns the stream: its ``close()``, from any thread, ends the watch.

    Reads ``Actor.ID``/``Action`` (newer engines dropped ``id``/``status``, older ones may lack ``Actor``).
    """
    filters: dict[str, Any] = {"type": "container", "label": [f"{LABEL_REPO}={repo}", f"{LABEL_FEATURE}={feature}"]}
    if actions:
        filters["event"] = list(actions)
    stream = client.events(decode=True, filters=filters)

    def run() -> None:
        try:
            for event in stream:
                actor = event.get("Actor") or {}
                cid = actor.get("ID") or event.get("id")
                action = (event.get("Action") or event.get("status") or "").split(":", 1)[0]
                if cid and action:
                    handle(cid, action, actor.get("Attributes") or {})
        except Exception:  # noqa: BLE001 - closing the stream from another thread ends iteration with an error
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return stream


class _Events:
    """Which actions the engine reported for each container of one repo+feature (a launch waits on these)."""

    def __init__(self, client: Any, repo: str, feature: str, cond: threading.Condition) -> None:
        self._cond = cond
        self.actions: dict[str, list[str]] = collections.defaultdict(list)
        self._stream = watch_feature_events(client, repo, feature, self._record)

    def _record(self, cid: str, action: str, _labels: dict[str, str]) -> None:
        with self._cond:
            self.actions[cid].append(action)
            self._cond.notify_all()

    def seen(self, cid: str, *actions: str) -> bool:
        return any(a in actions for a in self.actions.get(cid, ()))

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001
            pass


class _LogCopy(threading.Thread):
    """Follows one container's output, appends it (secrets redacted) to the host log, and spots the ready line.

    Keeps running after the launch returns, for as long as the container runs.
    """

    def __init__(self, container: Any, spec: WorkerSpec, cond: threading.Condition, redact: Callable[[str], str]):
        super().__init__(name=f"mahabharatha-log-{spec.worker_id}", daemon=True)
        self._container = container
        self._spec = spec
        self._cond = cond
        self._redact = redact
        self._marker = ready_line(spec.worker_id)
        self.tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self.ready = False
        self.ended = False

    def _line(self, raw: bytes, out: Any) -> None:
        text = out.write(raw)
        line = text.rstrip("\r\n")
        self.tail.append(line)
        if line == self._marker or line.startswith(self._marker + " "):
            with self._cond:
                self.ready = True
                self._cond.notify_all()

    def run(self) -> None:
        from .logfile import HostLog, LineCutter

        # Bounded: lines are cut at 64 KiB (never through a secret), the host log stops at 256 MiB.
        cutter = LineCutter(s.value.reveal().encode() for s in self._spec.secret_environment)
        try:
            out = HostLog(self._spec.log_path, self._redact)
            try:
                try:
                    for chunk in self._container.logs(stream=True, follow=True):
                        for raw in cutter.feed(chunk):
                            self._line(raw, out)
                except Exception:  # noqa: BLE001 - the stream ends with an error when the container is removed
                    pass
                rest = cutter.rest()
                if rest:
                    self._line(rest, out)
            finally:
                out.close()
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()


class _Fleet:
    """Creates, starts and verifies a set of workers in parallel; cleans up everything it made on failure."""

    def __init__(
        self, client: Any, plan: LaunchPlan, specs: Sequence[WorkerSpec], stale: dict[str, str] | None = None
    ) -> None:
        self.client = client
        self.plan = plan
        self.specs = specs
        self.stale = stale or {}  # name -> id of this feature's old container, replaced just before create
        self.cond = threading.Condition()
        self.redact = redactor(specs)
        self.created: list[str] = []
        self.aborted = False
        self.events: _Events | None = None

    def _abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def _wait(self, predicate: Callable[[], bool], deadline: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate() or self.aborted, timeout=max(0.0, deadline - time.monotonic())) and not self.aborted and predicate()

    @contextlib.contextmanager
    def _start_errors(self, spec: WorkerSpec) -> Iterator[None]:
        """Engine errors while creating or starting ``spec``'s container, as the documented one-line message."""
        import docker.errors

        try:
            yield
        except docker.errors.ImageNotFound:
            raise LaunchError(
                f"Failed to start container {spec.name}: image {spec.image} not found", hint=_BUILD_HINT
            ) from None
        except docker.errors.APIError as exc:
            raise LaunchError(
                f"Failed to start container {spec.name}: {self.redact(str(exc.explanation or exc))}"
            ) from None
        except _connection_errors() as exc:
            raise _engine_error(exc) from None

    def _one(self, spec: WorkerSpec) -> WorkerHandle:
        kwargs = create_kwargs(spec, reveal_secrets=True)
        image, command = kwargs.pop("image"), kwargs.pop("command")
        with self._start_errors(spec):
            if spec.name in self.stale:  # per worker, so removals overlap with the other workers' starts
                _remove_ids(self.client, [self.stale[spec.name]])
            container = self.client.containers.create(image, command, **kwargs)
        with self.cond:
            self.created.append(container.id)
            if self.aborted:
                raise LaunchError(f"Failed to start container {spec.name}: launch aborted")
        running_deadline = time.monotonic() + spec.ready_timeout_s
        with self._start_errors(spec):
            container.start()
        started_at = time.monotonic()
        logs = _LogCopy(container, spec, self.cond, self.redact)
        logs.start()
        assert self.events is not None
        events = self.events
        cid = container.id
        if not self._wait(lambda: events.seen(cid, "start", "die") or logs.ended, running_deadline):
            if self.aborted:
                raise LaunchError(f"Container failed to become ready: {spec.name}: launch aborted")
            raise LaunchError(
                f"Container failed to become ready: {spec.name} was not running after {spec.ready_timeout_s:.0f} s"
            )
        ready_deadline = started_at + spec.start_timeout_s
        if not self._wait(lambda: logs.ready or logs.ended, ready_deadline) or not logs.ready:
            if self.aborted:
                raise LaunchError(f"Worker process failed to start in {spec.name}: launch aborted")
            state = self._state(cid)
            fix = ""
            if state.get("Running"):
                why = f"no `{ready_line(spec.worker_id)}` line after {spec.start_timeout_s:.0f} s"
            else:
                code = state.get("ExitCode")
                why = f"the container exited with code {code} ({exit_meaning(code)})"
                if state.get("OOMKilled"):
                    why += ", OOMKilled"
                    fix = f"raise resources.container_memory_limit (now {spec.mem_limit}) in .mahabharatha/config.yaml; "
                why += " before the worker announced itself"
            last = " | ".join(line for line in logs.tail if line.strip()) or "(no output)"
            raise LaunchError(
                f"Worker process failed to start in {spec.name}: {why}; last log lines: {last}",
                hint=f"{fix}full log: {spec.log_path}",
            )
        return WorkerHandle(spec.worker_id, cid, spec.name, "running")

    def _state(self, cid: str) -> dict[str, Any]:
        try:
            return dict(self.client.api.inspect_container(cid).get("State") or {})
        except Exception:  # noqa: BLE001
            return {}

    def run(self, prepare: Callable[[WorkerSpec], None], *, keep_failed: bool) -> tuple[WorkerHandle, ...]:
        self.events = _Events(self.client, self.plan.repo, self.plan.feature, self.cond)
        failure: BaseException | None = None
        handles: dict[int, WorkerHandle] = {}
        try:
            with ThreadPoolExecutor(max_workers=max(1, len(self.specs)), thread_name_prefix="mahabharatha-start") as pool:
                futures = []
                try:
                    for spec in self.specs:  # git work stays sequential, container starts overlap with it
                        if self.aborted:
                            break
                        prepare(spec)
                        futures.append(pool.submit(self._one, spec))
                    for future in as_completed(futures):
                        try:
                            handle = future.result()
                            handles[handle.worker_id] = handle
                        except Exception as exc:  # noqa: BLE001 - first failure wins; the rest are aborted
                            if failure is None:
                                failure = exc
                                self._abort()
                except BaseException as exc:  # Ctrl-C while waiting: wake every starter before the pool joins
                    failure = failure or exc
                    self._abort()
        finally:
            self.events.close()
        if failure is not None:
            if not keep_failed:
                try:
                    _remove_ids(self.client, self.created)
                except Exception:  # noqa: BLE001 - report the launch failure, not the cleanup one
                    pass
            elif isinstance(failure, LaunchError):
                failure.hint = (failure.hint + "; " if failure.hint else "") + "containers kept for debugging (--keep-failed)"
            raise failure
        return tuple(handles[spec.worker_id] for spec in self.specs)


# --------------------------------------------------------------------------------------------------------
# Public effects


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Turn docker-py/requests failures of read-only checks into one-line LaunchErrors."""
    import docker.errors

    try:
        yield
    except docker.errors.APIError as exc:
        raise LaunchError(f"Failed to start container: the Docker engine refused: {exc.explanation or exc}") from None
    except _connection_errors() as exc:
        raise _engine_error(exc) from None


def _container_plan(plan: LaunchPlan) -> None:
    if plan.mode == "swarm":
        raise LaunchError("this plan runs on a Docker Swarm: start it with mahabharatha.execute(plan) or `mahabharatha kurukshetra`")
    if plan.mode != "container":
        raise LaunchError(f"execute() runs container plans; this plan's mode is {plan.mode!r}")
    if not plan.workers:
        raise LaunchError("The plan has no workers to start")


def preflight(plan: LaunchPlan, *, client: DockerClient | None = None) -> DockerClient:
    """Check, without changing anything, that ``plan`` can start: the engine answers, every image is on it
    (never pulled) and no planned name belongs to someone else. Returns the client (made from the
    environment when ``client`` is None). The orchestrator calls this before it creates the base branch or
    the run state, so a run that cannot start leaves nothing behind (and a second try is not a "resume")."""
    _container_plan(plan)
    client = client if client is not None else make_client(workers=len(plan.workers))
    _checked(client, plan, plan.workers)
    return client


def _checked(client: Any, plan: LaunchPlan, specs: Sequence[WorkerSpec]) -> dict[str, str]:
    """The read-only checks before any effect (images present, planned names not someone else's); returns
    this feature's stale containers by name, for replacement."""
    with _engine_errors():
        _check_images(client, specs)
        return _stale_containers(client, plan, specs)


def _bound(plan: LaunchPlan, specs: Sequence[WorkerSpec], link: ChannelLink | None) -> list[WorkerSpec]:
    """The specs as launched: remote workers get the run's channel URL and their token (secrets, redacted in
    logs like the others). A remote plan cannot start without the orchestrator's channel."""
    if plan.transport != "remote":
        return list(specs)
    if link is None:
        raise LaunchError(
            "a remote-transport plan's workers fetch their runtime and workspace from the orchestrator's channel, "
            "so they cannot be started without it",
            hint="run the feature with mahabharatha.execute(plan) or `mahabharatha kurukshetra`",
        )
    return [link.bind(spec) for spec in specs]


def _launch(
    client: Any, plan: LaunchPlan, specs: Sequence[WorkerSpec], keep_failed: bool, link: ChannelLink | None = None
) -> tuple[WorkerHandle, ...]:
    _container_plan(plan)
    specs = _bound(plan, specs, link)
    stale = _checked(client, plan, specs)
    return _Fleet(client, plan, specs, stale).run(_prepare_host(plan, specs), keep_failed=keep_failed)


def launch_fleet(
    plan: LaunchPlan, *, client: DockerClient | None = None, keep_failed: bool = False, link: ChannelLink | None = None
) -> Launch:
    """Start every planned worker and return when all of them announced themselves (no run lock: for the
    orchestrator, which holds it; everyone else calls :func:`start_fleet`).

    ``client`` is a ``docker.DockerClient`` (default: :func:`make_client`, from the environment, so
    ``DOCKER_HOST`` works). Raises :class:`LaunchError` ("Failed to start container", "Container failed to
    become ready", "Worker process failed to start") after removing the containers this launch started,
    unless ``keep_failed``. Worktrees are never deleted.
    """
    _container_plan(plan)
    client = client if client is not None else make_client(workers=len(plan.workers))
    handles = _launch(client, plan, plan.workers, keep_failed, link)
    return Launch(plan.plan_id, plan.repo, plan.feature, handles)


@contextlib.contextmanager
def run_lock(plan: LaunchPlan) -> Iterator[None]:
    """Hold the feature's run lock (the one a running ``kurukshetra`` holds), or raise :class:`LaunchError`."""
    from ..worker.state import StateStore

    fd = StateStore(plan.state_dir, plan.feature).try_run_lock()
    if fd is None:
        raise LaunchError(
            f"a run of feature {plan.feature} is in progress in {plan.repo}; not replacing its containers",
            hint=f"wait for it, or stop it first with `mahabharatha stop --feature {plan.feature}`",
        )
    try:
        yield
    finally:
        os.close(fd)


def start_fleet(plan: LaunchPlan, *, client: DockerClient | None = None, keep_failed: bool = False) -> Launch:
    """Start the plan's workers WITHOUT an orchestrator (nothing hands them tasks, merges or restarts them):
    for debugging a fleet by hand, benchmarks and tests. :func:`mahabharatha.execute` runs the feature.

    Refuses (before any effect) while a run of the feature is in progress: it takes the feature's run lock
    for the launch, so it never replaces a live run's containers. Same checks, errors and cleanup as
    :func:`launch_fleet`.
    """
    _container_plan(plan)
    _bound(plan, (), None)
    with run_lock(plan):
        return launch_fleet(plan, client=client, keep_failed=keep_failed)


execute = start_fleet  # the old name of start_fleet (before mahabharatha.execute ran the whole feature)


def start_worker(
    client: DockerClient, plan: LaunchPlan, spec: WorkerSpec, *, keep_failed: bool = False, link: ChannelLink | None = None
) -> WorkerHandle:
    """(Re)start one planned worker, e.g. after it exited for its context limit.

    Same checks and guarantees as :func:`execute`, for one worker: its stale container is replaced, a
    same-named container of anyone else is refused.
    """
    return _launch(client, plan, [spec], keep_failed, link)[0]


def _exit_from(attrs: dict[str, Any], name: str = "") -> WorkerExit:
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    running = bool(state.get("Running")) or state.get("Status") in ("created", "running", "restarting")
    code = None if running else state.get("ExitCode")
    return WorkerExit(
        worker_id=int(labels.get(LABEL_WORKER, "-1")),
        exit_code=code,
        meaning=exit_meaning(code),
        oom_killed=bool(state.get("OOMKilled")),
        name=name or str(attrs.get("Name", "")).lstrip("/"),
        removing=state.get("Status") in ("removing", "dead") or bool(state.get("Dead")),
    )


def worker_exit(client: Any, name: str) -> WorkerExit | None:
    """The worker's state now (``exit_code`` None while it runs), or None when no such container exists."""
    import docker.errors

    try:
        return _exit_from(client.api.inspect_container(name))  # the engine's name, also when given an id
    except docker.errors.NotFound:
        return None


def wait_exit(client: Any, name: str, timeout: float | None = None) -> WorkerExit:
    """Block until container ``name`` exits (or ``timeout`` seconds pass) and report how it ended.

    State (exit code, ``OOMKilled``) is read from the engine before anything removes the container.
    """
    import docker.errors
    import requests

    try:
        client.api.wait(name, timeout=timeout)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        pass  # timed out: report the state as it is (still running)
    except docker.errors.NotFound:
        raise LaunchError(f"No container named {name}") from None
    result = worker_exit(client, name)
    if result is None:
        raise LaunchError(f"Container {name} disappeared before its exit could be read")
    return result


def stop_workers(client: Any, repo: str, feature: str, timeout: float = 30.0) -> list[WorkerExit]:
    """Stop the feature's running workers gracefully (SIGTERM through init, SIGKILL after ``timeout``), in
    parallel, and report how each ended. On a Swarm manager its services are scaled to 0 first."""
    import docker.errors

    swarm_exits = stop_services(client, repo, feature, timeout=timeout)
    rows = feature_containers(client, repo, feature, running_only=True)

    def stop(row: dict[str, Any]) -> WorkerExit | None:
        try:
            client.api.stop(row["Id"], timeout=max(0, int(timeout)))
        except docker.errors.NotFound:
            return None
        return worker_exit(client, row["Id"])

    with ThreadPoolExecutor(max_workers=max(1, min(len(rows), 16))) as pool:
        results = [r for r in pool.map(stop, rows) if r is not None]
    return sorted([*swarm_exits, *results], key=lambda r: r.worker_id)


def remove_containers(client: Any, repo: str, feature: str) -> list[str]:
    """Remove (force) every container labelled with this repo and feature (and, on a Swarm manager, its
    services and secrets); returns their names."""
    services = remove_services(client, repo, feature)
    rows = feature_containers(client, repo, feature)
    _remove_ids(client, [row["Id"] for row in rows])
    return sorted([*services, *(n.lstrip("/") for row in rows for n in (row.get("Names") or ())[:1])])


# --------------------------------------------------------------------------------------------------------
# Swarm services (workers.launcher_type: swarm; see .swarm): what stop and cleanup need on a manager

TASK_POLL_S = 0.25
TASK_ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})


def manages_swarm(info: dict[str, Any]) -> bool:
    """Whether an engine's ``info()`` says it is an active Swarm manager."""
    swarm = (info or {}).get("Swarm") or {}
    return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))


def _is_manager(client: Any) -> bool:
    try:
        return manages_swarm(client.info())
    except Exception:  # noqa: BLE001 - not a reason to fail a stop or cleanup of containers
        return False


def latest_task(client: Any, service_id: str) -> dict[str, Any] | None:
    tasks = client.api.tasks(filters={"service": service_id})
    if not tasks:
        return None
    return max(tasks, key=lambda t: (t.get("Version", {}).get("Index", 0), t.get("CreatedAt", "")))


def task_exit(task: dict[str, Any]) -> tuple[str, int | None, str]:
    """(state, exit code or None, error text) of a Swarm task."""
    status = task.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return str(status.get("State", "")), (int(code) if code is not None else None), str(status.get("Err") or "")


def scale_down(client: Any, service_id: str) -> None:
    """Ask Swarm to stop the service's task (SIGTERM, then SIGKILL after the stop grace period)."""
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        client.services.get(service_id).scale(0)


def stop_services(client: Any, repo: str, feature: str, timeout: float = 30.0) -> list[WorkerExit]:
    """Scale this feature's services to 0 and wait (bounded) until their tasks ended; how each ended."""
    if not _is_manager(client):
        return []
    running = []
    for svc in client.api.services(filters=owner_filters(repo, feature)):
        task = latest_task(client, svc["ID"])
        if task is not None and task_exit(task)[0] not in TASK_ENDED:
            scale_down(client, svc["ID"])
            running.append(svc)
    deadline = time.monotonic() + timeout + 5
    exits: dict[str, WorkerExit] = {}
    while running and time.monotonic() < deadline:
        for svc in list(running):
            task = latest_task(client, svc["ID"])
            state, code, _ = task_exit(task) if task else ("shutdown", None, "")
            if state in TASK_ENDED:
                running.remove(svc)
                labels = svc["Spec"].get("Labels") or {}
                exits[svc["ID"]] = WorkerExit(
                    worker_id=int(labels.get(LABEL_WORKER, "-1")), exit_code=code, meaning=exit_meaning(code),
                    oom_killed=code == 137, name=svc["Spec"]["Name"],
                )
        if running:
            time.sleep(TASK_POLL_S)
    return list(exits.values())


def feature_services(client: Any, repo: str, feature: str) -> list[dict[str, Any]]:
    """This feature's Swarm services as rows shaped like ``docker ps`` ones (``Names``, ``Labels``, ``State``,
    ``Status``; ``Id`` None: there is no local container to ask for stats), [] off a manager."""
    if not _is_manager(client):
        return []
    rows = []
    for svc in client.api.services(filters=owner_filters(repo, feature)):
        task = latest_task(client, svc["ID"])
        state, code, err = task_exit(task) if task else ("pending", None, "")
        node = (task or {}).get("NodeID", "")[:12]
        status = f"Swarm task {state}" + (f" on node {node}" if node else "") + (f", exit {code}" if code is not None else "")
        rows.append({
            "Id": None, "Names": [svc["Spec"]["Name"]], "Labels": svc["Spec"].get("Labels") or {},
            "State": "running" if state == "running" else ("exited" if state in TASK_ENDED else state),
            "Status": status + (f": {err}" if err else ""),
        })
    return rows


def remove_secret(client: Any, secret_id: str) -> None:
    """Remove a Swarm secret (retried briefly while a just-removed service still holds it)."""
    import docker.errors

    for _ in range(40):
        try:
            client.api.remove_secret(secret_id)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            time.sleep(0.25)


def remove_services(client: Any, repo: str, feature: str) -> list[str]:
    """Remove this repo+feature's services and secrets (by label) on a Swarm manager; their names."""
    if not _is_manager(client):
        return []
    filters = owner_filters(repo, feature)
    names, removed = [], []
    for svc in client.api.services(filters=filters):
        names.append(svc["Spec"]["Name"])
        with contextlib.suppress(Exception):
            client.api.remove_service(svc["ID"])
            removed.append(svc["ID"])
    for secret in client.api.secrets(filters=filters):
        remove_secret(client, secret["ID"])
    # Swarm removes the tasks' containers (on every node) after the service: wait, bounded, so that what the
    # caller reports as removed is gone.
    deadline = time.monotonic() + 30
    while removed and time.monotonic() < deadline:
        try:
            removed = [sid for sid in removed if client.api.tasks(filters={"service": sid})]
        except Exception:  # noqa: BLE001 - the service is gone and so are its tasks
            removed = []
        if removed:
            time.sleep(TASK_POLL_S)
    return sorted(names)
