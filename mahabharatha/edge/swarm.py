"""Workers as Docker Swarm services (``workers.launcher_type: swarm``), through docker-py and a manager's API.

One replicated service per worker, one replica, restart policy ``none``: the orchestrator decides restarts
(after an OOM, a context limit), as with plain containers. The image is referenced **by id**, so nodes never
try to pull a tag from a registry; each node needs the image (``mahabharatha build-image`` on each, or a
registry). Nothing is mounted (a Swarm plan always uses the remote transport): the workspace is an anonymous
volume of the task's container, the runtime and the history arrive over the orchestrator's TCP channel.
The worker's channel token is a Swarm secret (a file under ``/run/secrets``, mode 0400, owned by the worker's
user), read into the environment by the bootstrap and removed with the service; credentials come over the
channel (see :mod:`mahabharatha.worker.bootstrap`).

Swarm has no container events across nodes on the manager's API, so task states are *polled*
(:data:`POLL_S`); an exit code comes from the task, and 137 counts as the memory limit (the ``OOMKilled`` flag
is only on the node's container, which the manager cannot see). Logs come through the service. Services
and secrets are labelled like containers and cleaned up by label. What Swarm cannot apply
(``no-new-privileges``) the plan's notices say.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from ..core.model import LaunchPlan, WorkerSpec
from ..core.render_swarm import service_spec
from ..errors import LaunchError
from ..worker import protocol as P
from ..worker.protocol import exit_meaning, ready_line
from . import executor as X

__all__ = ["SwarmLauncher", "swarm_preflight", "POLL_S", "ENDED"]

POLL_S = X.TASK_POLL_S  # task states are polled: the manager's API has no event for a task's container ending
ENDED = X.TASK_ENDED


def _manager(client: Any, engine: str) -> None:
    try:
        info = client.info()
    except X._connection_errors() as exc:
        raise X._engine_error(exc) from None
    if not X.manages_swarm(info):
        raise LaunchError(
            f"Failed to start services: the engine at {engine} is not a Docker Swarm manager",
            hint="point DOCKER_HOST at a manager node, or use workers.launcher_type: container",
        )


def _image_id(client: Any, image: str) -> str:
    import docker.errors

    try:
        return str(client.images.get(image).id)
    except docker.errors.ImageNotFound:
        raise LaunchError(
            f"Failed to start services: image {image} not found on the Swarm manager (every node needs it; it is "
            "referenced by id, never pulled)",
            hint="build it on each node with `mahabharatha build-image` (DOCKER_HOST pointing at the node)",
        ) from None


def _stale_services(client: Any, plan: LaunchPlan) -> dict[str, str]:
    """This feature's existing services by name; a same-named service of anyone else refuses the launch."""
    names = {spec.name for spec in plan.workers}
    stale: dict[str, str] = {}
    for svc in client.api.services():
        name = svc.get("Spec", {}).get("Name")
        if name not in names:
            continue
        labels = svc.get("Spec", {}).get("Labels") or {}
        if not X.owned_by(labels, plan.repo, plan.feature):
            raise LaunchError(
                f"Failed to start services: a service named {name} already exists and belongs to "
                f"{X._owner_text(labels)}; not removing it",
                hint="remove it, or set workers.container_prefix to another name",
            )
        stale[name] = svc["ID"]
    return stale


def swarm_preflight(plan: LaunchPlan, *, client: Any = None) -> Any:
    """Read-only checks before any effect: a manager answers, the image is on it, no planned service name is
    someone else's. Returns the client."""
    if plan.mode != "swarm" or not plan.workers:
        raise LaunchError(f"the Swarm launcher runs swarm plans with workers; this plan's mode is {plan.mode!r}")
    client = client if client is not None else X.make_client(workers=len(plan.workers), action="Failed to start services")
    _manager(client, plan.engine)
    _image_id(client, plan.image)
    _stale_services(client, plan)
    return client


class _ServiceLogs:
    """What :class:`~.executor._LogCopy` reads: a service's log stream (all nodes, through the manager)."""

    def __init__(self, client: Any, service_id: str) -> None:
        self.client, self.service_id = client, service_id

    def logs(self, **_kwargs: Any) -> Any:
        return self.client.api.service_logs(self.service_id, stdout=True, stderr=True, follow=True)


class SwarmLauncher:
    """The orchestrator's launcher for Swarm plans (same interface as :class:`~.launchers.ContainerLauncher`)."""

    def __init__(
        self, plan: LaunchPlan, events: queue.Queue[tuple[Any, ...]], out: Callable[[str], None], client: Any = None,
        keep_failed: bool = False, link: Any = None,
    ) -> None:
        if link is None:
            raise LaunchError("Swarm workers need the orchestrator's TCP channel (remote transport)")
        self.plan, self.events, self.out, self.link, self.keep_failed = plan, events, out, link, keep_failed
        self.client = client if client is not None else swarm_preflight(plan)
        self.image_id = _image_id(self.client, plan.image)
        self.services: dict[int, str] = {}  # worker id -> service id
        self.secrets: dict[int, list[str]] = {}
        self.reported: set[str] = set()
        self.cond = threading.Condition()
        self.closed = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="mahabharatha-swarm-watch").start()

    # -- creating ---------------------------------------------------------------------------------------
    def _create(self, spec: WorkerSpec) -> str:
        import docker.errors

        self._remove_worker(spec.worker_id, name=spec.name)
        token = next(var for var in spec.secret_environment if var.name == P.ENV_CHANNEL_TOKEN)
        name = f"{spec.name}-token-{uuid.uuid4().hex[:8]}"  # (credentials travel over the channel)
        try:
            secret = self.client.secrets.create(name=name, data=token.value.reveal().encode(), labels=spec.label_dict())
            self.secrets[spec.worker_id] = [secret.id]
            body = service_spec(spec, image=self.image_id, token_secret=(secret.id, name))  # the dry-run's view
            created = self.client.api.create_service(
                body["TaskTemplate"], name=body["Name"], labels=body["Labels"], mode=body["Mode"],
                endpoint_spec=body["EndpointSpec"],
            )
        except docker.errors.APIError as exc:
            raise LaunchError(f"Failed to start service {spec.name}: {X.redactor([spec])(str(exc.explanation or exc))}") from None
        service_id = str(created["ID"])
        self.services[spec.worker_id] = service_id
        return service_id

    def _ready(self, spec: WorkerSpec, service_id: str) -> None:
        """Wait for the task to run (polled) and the worker's ready line (its log, copied to the host log)."""
        logs = X._LogCopy(_ServiceLogs(self.client, service_id), spec, self.cond, X.redactor([spec]))
        deadline = time.monotonic() + spec.ready_timeout_s
        running = False
        while not running:
            task = X.latest_task(self.client, service_id)
            state, code, err = X.task_exit(task) if task else ("", None, "")
            if state == "running":
                running = True
            elif state in ENDED:
                raise LaunchError(
                    f"Worker process failed to start in {spec.name}: its task ended ({state}"
                    + (f", exit {code}: {exit_meaning(code)}" if code is not None else "") + (f": {err}" if err else "") + ")",
                    hint=f"every Swarm node needs the image {self.plan.image}" if state == "rejected" else f"full log: {spec.log_path}",
                )
            elif time.monotonic() > deadline:
                raise LaunchError(f"Container failed to become ready: {spec.name}'s task was not running after {spec.ready_timeout_s:.0f} s ({state or 'no task'}{': ' + err if err else ''})")
            else:
                time.sleep(POLL_S)
        logs.start()
        deadline = time.monotonic() + spec.start_timeout_s
        with self.cond:
            while not (logs.ready or logs.ended) and time.monotonic() < deadline:
                self.cond.wait(timeout=POLL_S)
                if not logs.ready:
                    task = X.latest_task(self.client, service_id)
                    if task and X.task_exit(task)[0] in ENDED:
                        break
        if not logs.ready:
            task = X.latest_task(self.client, service_id)
            state, code, _ = X.task_exit(task) if task else ("", None, "")
            last = " | ".join(line for line in logs.tail if line.strip()) or "(no output)"
            why = f"its task ended ({state}, exit {code})" if state in ENDED else f"no `{ready_line(spec.worker_id)}` line after {spec.start_timeout_s:.0f} s"
            raise LaunchError(f"Worker process failed to start in {spec.name}: {why}; last log lines: {last}", hint=f"full log: {spec.log_path}")

    def _start(self, spec: WorkerSpec) -> None:
        bound = self.link.bind(spec)
        self._ready(bound, self._create(bound))

    def start_all(self) -> None:
        from pathlib import Path

        for spec in self.plan.workers:
            Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        stale = _stale_services(self.client, self.plan)
        for sid in stale.values():
            self._remove_service(sid)
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=max(1, len(self.plan.workers)), thread_name_prefix="mahabharatha-swarm") as pool:
            futures = [pool.submit(self._start, spec) for spec in self.plan.workers]
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001 - the first failure is reported, everything is removed
                    failure = failure or exc
        if failure is not None:
            if not self.keep_failed:
                self._remove_all()
            raise failure

    def restart(self, worker_id: int) -> None:
        self._start(self.plan.workers[worker_id])

    def current(self, worker_id: int) -> Any:
        return self.services.get(worker_id)

    # -- watching ---------------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Put ``("die", worker, service id)`` on the orchestrator's queue when a worker's task ends."""
        while not self.closed.wait(POLL_S * 2):
            for wid, sid in list(self.services.items()):
                if sid in self.reported:
                    continue
                with contextlib.suppress(Exception):
                    task = X.latest_task(self.client, sid)
                    if task is not None and X.task_exit(task)[0] in ENDED:
                        self.reported.add(sid)
                        self.events.put(("die", wid, sid))

    def exit_of(self, sid: str) -> tuple[int | None, bool, bool]:
        """(exit code, out of memory, lost): lost when the service is gone (removed by hand)."""
        import docker.errors

        try:
            self.client.api.inspect_service(sid)
        except docker.errors.NotFound:
            return None, False, True
        task = X.latest_task(self.client, sid)
        if task is None:
            return None, False, True
        state, code, _ = X.task_exit(task)
        if state not in ENDED:
            return None, False, False
        if code is None:  # rejected or orphaned: it never ran (or its node went away)
            return None, False, True
        return code, code == 137, False

    def poll_exits(self, alive: dict[int, Any]) -> list[tuple[int, int | None, bool, bool]]:
        out = []
        for wid, sid in alive.items():
            try:
                code, oom, lost = self.exit_of(sid)
            except Exception:  # noqa: BLE001 - manager unreachable: nothing to report now
                continue
            if code is not None or lost:
                out.append((wid, code, oom, lost))
        return out

    # -- stopping and removing --------------------------------------------------------------------------
    def _scale_down(self, sid: str) -> None:
        X.scale_down(self.client, sid)

    def stop(self, worker_id: int) -> None:
        sid = self.services.get(worker_id)
        if sid:
            threading.Thread(target=self._scale_down, args=(sid,), daemon=True, name=f"mahabharatha-stop-{worker_id}").start()

    def stop_all(self, timeout: float = 30.0) -> None:
        X.stop_services(self.client, self.plan.repo, self.plan.feature, timeout=timeout)

    def _remove_service(self, sid: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_service(sid)

    def _remove_worker(self, worker_id: int, *, name: str) -> None:
        sid = self.services.pop(worker_id, None)
        if sid:
            self._remove_service(sid)
        for secret_id in self.secrets.pop(worker_id, []):
            X.remove_secret(self.client, secret_id)

    def _remove_all(self) -> None:
        for spec in self.plan.workers:
            self._remove_worker(spec.worker_id, name=spec.name)
        X.remove_services(self.client, self.plan.repo, self.plan.feature)

    def close(self, *, success: bool) -> None:
        self.closed.set()
        if success or not self.keep_failed:
            with contextlib.suppress(Exception):
                self._remove_all()
