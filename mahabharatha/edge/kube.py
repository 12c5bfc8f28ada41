"""Workers as Kubernetes Jobs: the launcher interface of :mod:`.launchers`, against a cluster's API.

The manifests are :func:`mahabharatha.core.render_k8s.render_k8s` of the plan (what ``--render k8s`` shows),
with the real channel URL; the run's Secret gets the real values here, and only here: the credentials through
:func:`.executor.secret_environment`, each worker's channel token from the run's ``link``. Everything goes
through the official ``kubernetes`` client (imported when a launcher is made), with plain dict bodies.

How the cluster's answers become the orchestrator's events:

- one watch of the run's pods (by label, on a thread; a broken watch lists again and goes on) keeps the last
  state of every pod; a pod that ends (its worker container terminated, its bootstrap failed, the pod
  Failed or gone) puts ``("die", worker_id, job_uid)`` on the run's queue once;
- a worker's id for the orchestrator (:meth:`KubeLauncher.current`) is its Job's ``uid``: a restarted
  worker's Job has the same name and a new uid, so exits of the old one are told apart;
- :meth:`KubeLauncher.exit_of`: the worker container's ``exitCode``, ``reason == "OOMKilled"`` as oom, and
  *lost* when the pod went (or is being deleted) without us asking, which says nothing about its task;
- each pod's log (the bootstrap's, then the worker's, followed) is copied into ``spec.log_path`` by the
  Docker executor's own copier: lines bounded, secrets and tokens redacted, the ready line spotted.

Every failure is a one-line :class:`~mahabharatha.errors.LaunchError`, with secret values redacted.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from ..core.model import LaunchPlan, WorkerSpec
from ..core.render_k8s import (
    ANNOTATION_SECRET,
    INIT_CONTAINER,
    K8S_LABEL_WORKER,
    WORKER_CONTAINER,
    job_name,
    render_k8s,
    run_selector,
    secret_name,
    token_key,
)
from ..core.secret import Secret
from ..errors import ConfigError, LaunchError
from ..worker.protocol import exit_meaning, ready_line

__all__ = ["KubeLauncher", "ChannelLink", "kube_client", "remove_run"]

_NAME_FREE_S = 60.0  # how long a (re)start waits for an old Job of the same name to be gone
_WATCH_TIMEOUT_S = 300  # the server ends each watch after this; the launcher watches again from where it was
_LOG_TAIL_LINES = 10
# Waiting reasons that no amount of waiting fixes: fail the start at once, naming them.
_FATAL_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"})


class ChannelLink(Protocol):
    """The orchestrator's TCP endpoint for this run: what workers dial and each one's token (a secret)."""

    url: str
    pin: str  # sha256 of the channel's TLS certificate

    def token(self, worker_id: int) -> str: ...


def _kubernetes() -> Any:
    try:
        import kubernetes.client
        import kubernetes.config
    except ImportError:
        raise LaunchError(
            "Kubernetes workers need the kubernetes package, which is not installed",
            hint="pip install 'mahabharatha[k8s]'",
        ) from None
    return kubernetes


def kube_client(api_client: Any = None) -> Any:
    """``api_client``, else one from kubeconfig or the in-cluster account; a one-line LaunchError when there
    is no kubernetes package or no cluster (before the orchestrator creates any run state)."""
    return api_client if api_client is not None else _default_client(_kubernetes())


def _default_client(k: Any) -> Any:
    """A client from ``~/.kube/config`` (``KUBECONFIG``), else the pod's in-cluster service account."""
    import os

    try:
        # KUBECONFIG as it is now (the client reads it once, when it is first imported)
        k.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    except Exception as kube_exc:  # noqa: BLE001 - the two ways to find a cluster; say why neither worked
        try:
            k.config.load_incluster_config()
        except Exception:  # noqa: BLE001
            raise LaunchError(
                f"No Kubernetes cluster configured: {' '.join(str(kube_exc).split())[:200]}",
                hint="point KUBECONFIG (or ~/.kube/config) at the cluster, or run inside it",
            ) from None
    return k.client.ApiClient()


def _owner_uid(meta: dict[str, Any]) -> str:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("uid"):
            return str(ref["uid"])
    labels = meta.get("labels") or {}
    return str(labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid") or "")


def _state(pod: dict[str, Any], container: str, init: bool = False) -> dict[str, Any]:
    status = pod.get("status") or {}
    for s in status.get("initContainerStatuses" if init else "containerStatuses") or []:
        if s.get("name") == container:
            return s.get("state") or {}
    return {}


def _pod_exit(pod: dict[str, Any], gone: bool, requested: bool) -> tuple[int | None, bool, bool] | None:
    """(code, oom, lost) once the pod has ended, None while it may still run. Lost: it went (or is going)
    without our asking, or without an exit code of its own (evicted, deleted before it started)."""
    deleting = gone or bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    removed = deleting and not requested
    term = _state(pod, WORKER_CONTAINER).get("terminated")
    if term is not None:
        return int(term.get("exitCode", 0)), term.get("reason") == "OOMKilled", removed
    init = _state(pod, INIT_CONTAINER, init=True).get("terminated")
    if init is not None and init.get("exitCode", 0) != 0:
        return int(init["exitCode"]), init.get("reason") == "OOMKilled", removed
    if gone or (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
        return None, False, True
    return None


def _older(pod: dict[str, Any], gone: bool, old_pod: dict[str, Any], old_gone: bool) -> bool:
    """Whether (``pod``, ``gone``) is an older view than the one kept: a pod's life only goes forward (pending,
    running, ended, gone), and resource versions, when they are numbers (etcd revisions), only grow."""
    new_rv, old_rv = ((p.get("metadata") or {}).get("resourceVersion", "") for p in (pod, old_pod))
    if str(new_rv).isdigit() and str(old_rv).isdigit() and int(new_rv) < int(old_rv):
        return True
    if old_gone and not gone:
        return True
    return _pod_exit(old_pod, False, True) is not None and _pod_exit(pod, False, True) is None and not gone


def _started(pod: dict[str, Any]) -> bool:
    """The worker container runs or ran, or the pod ended (so its start is over, one way or another)."""
    state = _state(pod, WORKER_CONTAINER)
    return "running" in state or "terminated" in state or (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def _waiting(pod: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(container, reason, message) of the pod's waiting containers."""
    status = pod.get("status") or {}
    out = []
    for key in ("initContainerStatuses", "containerStatuses"):
        for s in status.get(key) or []:
            waiting = (s.get("state") or {}).get("waiting")
            if waiting:
                out.append((str(s.get("name")), str(waiting.get("reason") or ""), str(waiting.get("message") or "")))
    return out


def _chunks(resp: Any) -> Iterator[bytes]:
    """A streamed HTTP body as it arrives (``read1``: whatever is there, not a full buffer)."""
    read1 = getattr(resp, "read1", None)
    if read1 is None:
        yield from resp.stream(1 << 16)
        return
    while True:
        chunk = read1(1 << 16)
        if not chunk:
            return
        yield chunk


def _lines(resp: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in _chunks(resp):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def _interrupt(resp: Any) -> None:
    """End a stream another thread is reading (shutdown wakes a blocked read; close alone may not)."""
    with contextlib.suppress(Exception):
        resp.shutdown()
    with contextlib.suppress(Exception):
        resp.close()


def _done(resp: Any, complete: bool) -> None:
    """A stream is over: its connection goes back to the pool when it was read to the end, else it is closed."""
    with contextlib.suppress(Exception):
        if complete:
            resp.release_conn()
        else:
            resp.close()


class _PodLogs:
    """What :class:`.executor._LogCopy` follows: the bootstrap's log (once it ended), then the worker's."""

    def __init__(self, launcher: KubeLauncher, pod: str, init_ended: bool, worker_started: bool) -> None:
        self.launcher = launcher
        self.pod = pod
        self.init_ended = init_ended
        self.worker_started = worker_started

    def logs(self, stream: bool = True, follow: bool = True) -> Iterator[bytes]:
        if self.init_ended:
            yield from self.launcher._read_log(self.pod, INIT_CONTAINER, follow=False)
        if self.worker_started:
            yield from self.launcher._read_log(self.pod, WORKER_CONTAINER, follow=follow)


class KubeLauncher:
    """Workers as Kubernetes Jobs (one per worker, ``backoffLimit: 0``), driven like :class:`ContainerLauncher`.

    ``link.url`` is what workers dial, ``link.token(worker_id)`` each worker's token. ``api_client`` is a
    ``kubernetes.client.ApiClient`` (default: from ``~/.kube/config``, else in-cluster). With ``keep_failed``,
    a failed run leaves its Jobs (and their pods' logs) for ``kubectl``; the Secret always goes.
    """

    def __init__(
        self,
        plan: LaunchPlan,
        events: queue.Queue[tuple[Any, ...]],
        out: Callable[[str], None],
        *,
        link: ChannelLink,
        api_client: Any = None,
        namespace: str = "default",
        keep_failed: bool = False,
    ) -> None:
        from .executor import redactor

        try:
            docs = render_k8s(plan, namespace=namespace, channel_url=link.url, channel_pin=getattr(link, "pin", None))
        except ConfigError as exc:
            raise LaunchError(str(exc)) from None
        if not plan.workers:
            raise LaunchError("The plan has no workers to start")
        k = _kubernetes()
        self.plan = plan
        self.events = events
        self.out = out
        self.link = link
        self.namespace = namespace
        self.keep_failed = keep_failed
        self._ApiException = k.client.exceptions.ApiException
        self._own_client = api_client is None
        self.api = api_client if api_client is not None else _default_client(k)
        self.core = k.client.CoreV1Api(self.api)
        self.batch = k.client.BatchV1Api(self.api)
        self.secret_body = docs[0]
        self.job_bodies = {spec.worker_id: doc for spec, doc in zip(plan.workers, docs[1:])}
        self.selector = run_selector(plan)
        self._labels = dict(part.split("=", 1) for part in self.selector.split(","))
        self._redact_env = redactor(plan.workers)
        self._token_pairs: list[tuple[str, str]] = []
        self.cond = threading.Condition()
        self.ids: dict[int, str] = {}  # worker -> its current Job's uid
        self.pods: dict[str, dict[str, tuple[dict[str, Any], bool]]] = {}  # job uid -> pod name -> (pod, gone)
        self._died: set[str] = set()
        self._requested: set[str] = set()  # Jobs we deleted ourselves (their pods' ends are not "lost")
        self._streams: set[Any] = set()
        self._copies: list[tuple[str, Any]] = []  # (job uid, its log copier)
        self._aborted = False
        self.closed = False
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="mahabharatha-kube-watch")
        self._watcher.start()

    # -- redaction and errors ------------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """``text`` with every credential and channel token of the run replaced by its redacted form."""
        text = self._redact_env(text)
        for value, shown in self._token_pairs:
            text = text.replace(value, shown)
        return text

    def _error(self, action: str, exc: BaseException) -> LaunchError:
        if isinstance(exc, self._ApiException):
            detail = ""
            with contextlib.suppress(Exception):
                detail = str(json.loads(exc.body).get("message") or "")
            why = f"the Kubernetes API answered {exc.status} {exc.reason or ''}".rstrip() + (f": {detail}" if detail else "")
        else:  # urllib3's MaxRetryError wraps the cause; its text ends in the words that matter
            cause = getattr(exc, "reason", None) or exc
            words = str(cause).rsplit("): ", 1)[-1] or type(cause).__name__
            why = f"cannot reach the Kubernetes API at {self.api.configuration.host} ({words})"
        return LaunchError(self.redact(" ".join(f"{action}: {why}".split())[:600]))

    # -- the watch -------------------------------------------------------------------------------------------
    def _record(self, pod: dict[str, Any], gone: bool) -> None:
        meta = pod.get("metadata") or {}
        uid = _owner_uid(meta)
        try:
            wid = int((meta.get("labels") or {}).get(K8S_LABEL_WORKER, ""))
        except ValueError:
            return
        if not uid or not meta.get("name"):
            return
        with self.cond:
            known = self.pods.setdefault(uid, {})
            old = known.get(str(meta["name"]))
            if old is not None and _older(pod, gone, *old):
                return  # a list answered before a watch event we already have: keep the newer state
            known[str(meta["name"])] = (pod, gone)
            ended = gone or _pod_exit(pod, gone, uid in self._requested) is not None
            fire = ended and uid not in self._died
            if fire:
                self._died.add(uid)
            self.cond.notify_all()
        if fire:
            self.events.put(("die", wid, uid))

    def _list(self) -> tuple[list[dict[str, Any]], str]:
        resp = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector, _preload_content=False)
        data = json.loads(resp.data)
        return list(data.get("items") or []), str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _resync(self) -> str:
        """List the run's pods: record each, and mark gone the ones known before the list and absent from it."""
        with self.cond:
            before = {(uid, name) for uid, pods in self.pods.items() for name, (_, gone) in pods.items() if not gone}
        items, version = self._list()
        listed = set()
        for pod in items:
            meta = pod.get("metadata") or {}
            listed.add((_owner_uid(meta), meta.get("name")))
            self._record(pod, False)
        for uid, name in before - listed:
            with self.cond:
                pod = self.pods[uid][name][0]
            self._record(pod, True)
        return version

    def _watch(self) -> None:
        version = ""
        delay = 0.1
        while not self.closed:
            try:
                if not version:
                    version = self._resync()
                resp = self.core.list_namespaced_pod(
                    self.namespace, label_selector=self.selector, watch=True, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=_WATCH_TIMEOUT_S, _preload_content=False,
                )
                if not self._track(resp):
                    return
                complete = False
                try:
                    for line in _lines(resp):
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":  # 410 Gone: too old a version; list again
                            version = ""
                            break
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self._record(obj, event["type"] == "DELETED")
                    else:
                        complete = True
                    delay = 0.1
                finally:
                    with self.cond:
                        self._streams.discard(resp)
                    _done(resp, complete)
            except Exception:  # noqa: BLE001 - API unreachable or the stream broke: list again, a bit later
                version = ""
                with self.cond:
                    if self.closed:
                        return
                    self.cond.wait(timeout=delay)
                delay = min(delay * 2, 5.0)

    # -- exits -----------------------------------------------------------------------------------------------
    def _exit_known(self, uid: str) -> tuple[int | None, bool, bool] | None:
        with self.cond:
            for pod, gone in (self.pods.get(uid) or {}).values():
                seen = _pod_exit(pod, gone, uid in self._requested)
                if seen is not None:
                    return seen
        return None

    def _job_gone(self, wid: int, uid: str) -> bool:
        """Worker ``wid``'s Job ``uid`` no longer exists (deleted, or replaced by another of the same name)."""
        found = self._read_job(job_name(self.plan, wid))
        return found is None or (found.get("metadata") or {}).get("uid") != uid

    def exit_of(self, uid: str) -> tuple[int | None, bool, bool]:
        """(exit code, OOMKilled, lost) of the worker whose Job has ``uid``: code None while it runs; lost when
        its pod was removed behind our back (``kubectl delete``, eviction), which says nothing of its task."""
        seen = self._exit_known(uid)
        if seen is None:
            with contextlib.suppress(Exception):
                self._resync()
            seen = self._exit_known(uid)
        wid = next((w for w, u in self.ids.items() if u == uid), None)
        if seen is None and wid is not None and not self.pods.get(uid):  # its pod was never seen: is its Job there?
            with contextlib.suppress(Exception):
                if self._job_gone(wid, uid):
                    return None, False, True
        return seen if seen is not None else (None, False, False)

    def poll_exits(self, alive: dict[int, Any]) -> list[tuple[int, int | None, bool, bool]]:
        """Workers in ``alive`` (id -> Job uid) that have ended: (id, code, oom, lost). Asks the API (the
        safety net for a watch that missed something); an unreachable API reports nothing now."""
        try:
            self._resync()
        except Exception:  # noqa: BLE001
            return []
        out = []
        for wid, uid in alive.items():
            seen = self._exit_known(uid)
            if seen is None and not (self.pods.get(uid) or {}):
                try:
                    if self._job_gone(wid, uid):
                        seen = (None, False, True)
                except Exception:  # noqa: BLE001
                    continue
            if seen is not None:
                out.append((wid, *seen))
        return out

    # -- API calls -------------------------------------------------------------------------------------------
    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            resp = self.batch.read_namespaced_job(name, self.namespace, _preload_content=False)
        except self._ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def _ours(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self._labels.items())

    def _delete_job(self, name: str, uid: str | None = None) -> None:
        """Delete a Job and its pods (Foreground: the Job goes after them); only the one with ``uid`` if given."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Foreground"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.batch.delete_namespaced_job(name, self.namespace, body=body, _preload_content=False)
        except self._ApiException as exc:
            if exc.status not in (404, 409):  # gone already; or (409) a newer Job of that name: not ours to stop
                raise

    def _apply_secret(self) -> None:
        """Create (or replace this feature's) Secret with the real values: the only place they go."""
        from .executor import secret_environment

        tokens = {spec.worker_id: self.link.token(spec.worker_id) for spec in self.plan.workers}
        self._token_pairs = sorted(((t, Secret(t).redacted) for t in tokens.values() if t), key=lambda p: -len(p[0]))
        data: dict[str, str] = {}
        for spec in self.plan.workers:
            data.update(secret_environment(spec, reveal=True, secret_store=True))
        data.update({token_key(wid): token for wid, token in tokens.items()})
        meta = dict(self.secret_body["metadata"])
        meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANNOTATION_SECRET}
        body = {**self.secret_body, "metadata": meta, "stringData": data}
        name = secret_name(self.plan)
        action = f"Failed to create Secret {name} in namespace {self.namespace}"
        try:
            try:
                self.core.create_namespaced_secret(self.namespace, body, _preload_content=False)
                return
            except self._ApiException as exc:
                if exc.status != 409:
                    raise
            existing = json.loads(self.core.read_namespaced_secret(name, self.namespace, _preload_content=False).data)
            if not self._ours(existing):
                raise LaunchError(
                    f"{action}: a Secret of that name exists that mahabharatha did not make for this repository and "
                    "feature; not replacing it",
                    hint="remove it, or choose another workers.container_prefix or namespace",
                )
            self.core.replace_namespaced_secret(name, self.namespace, body, _preload_content=False)
        except LaunchError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._error(action, exc) from None

    def _create_job(self, spec: WorkerSpec) -> str:
        """Create worker ``spec``'s Job, replacing an older one of this feature (waiting for it to go); its uid."""
        name = job_name(self.plan, spec.worker_id)
        action = f"Failed to create Job {name} in namespace {self.namespace}"
        deadline = time.monotonic() + _NAME_FREE_S
        delay = 0.05
        while True:
            try:
                try:
                    resp = self.batch.create_namespaced_job(self.namespace, self.job_bodies[spec.worker_id], _preload_content=False)
                    return str(json.loads(resp.data)["metadata"]["uid"])
                except self._ApiException as exc:
                    if exc.status != 409:
                        raise
                old = self._read_job(name)
                if old is not None:
                    if not self._ours(old):
                        raise LaunchError(
                            f"{action}: a Job of that name exists that mahabharatha did not make for this repository "
                            "and feature; not replacing it",
                            hint="remove it, or choose another workers.container_prefix or namespace",
                        )
                    old_uid = str(old["metadata"].get("uid") or "")
                    with self.cond:
                        self._requested.add(old_uid)
                    if not old["metadata"].get("deletionTimestamp"):
                        self._delete_job(name, old_uid)
            except LaunchError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise self._error(action, exc) from None
            if time.monotonic() > deadline:
                raise LaunchError(f"{action}: the old Job of that name was still being deleted after {_NAME_FREE_S:.0f} s")
            with self.cond:
                if self._aborted:
                    raise LaunchError(f"{action}: launch aborted")
                self.cond.wait(timeout=delay)
            delay = min(delay * 2, 1.0)

    def _track(self, resp: Any) -> bool:
        """Keep an open stream where ``close`` can interrupt it; False (and closed) when the launcher is closed."""
        with self.cond:
            if self.closed:
                _interrupt(resp)
                return False
            self._streams.add(resp)
            return True

    def _read_log(self, pod: str, container: str, *, follow: bool) -> Iterator[bytes]:
        try:
            resp = self.core.read_namespaced_pod_log(pod, self.namespace, container=container, follow=follow, _preload_content=False)
        except Exception:  # noqa: BLE001 - never started, or already gone: nothing to copy
            return
        if not self._track(resp):
            return
        complete = False
        try:
            yield from _chunks(resp)
            complete = True
        finally:
            with self.cond:
                self._streams.discard(resp)
            _done(resp, complete)

    # -- starting --------------------------------------------------------------------------------------------
    def _wait(self, predicate: Callable[[], bool], deadline: float, *, abortable: bool = True) -> bool:
        """Wait (on the launcher's condition: pod updates and log lines wake it) until ``predicate()`` or the
        deadline; an aborted launch (another worker failed, Ctrl-C) ends an ``abortable`` wait early."""
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or (abortable and self._aborted) or self.closed:
                    return predicate()
                self.cond.wait(timeout=min(left, 1.0))
            return True

    def _pods_of(self, uid: str) -> list[dict[str, Any]]:
        return [pod for pod, _ in (self.pods.get(uid) or {}).values()]

    def _start(self, spec: WorkerSpec) -> str:
        from .executor import _LogCopy

        name = job_name(self.plan, spec.worker_id)
        started_at = time.monotonic()
        uid = self._create_job(spec)
        with self.cond:
            self.ids[spec.worker_id] = uid
        fatal: list[tuple[str, str, str]] = []

        def running() -> bool:
            for pod in self._pods_of(uid):
                if _started(pod):
                    return True
                fatal[:] = [w for w in _waiting(pod) if w[1] in _FATAL_WAITING]
                if fatal:
                    return True
            return False

        if not self._wait(running, started_at + spec.ready_timeout_s) or fatal:
            if self._aborted:
                raise LaunchError(f"Container failed to become ready: {name}: launch aborted")
            with self.cond:
                pods = self._pods_of(uid)
            waits = [w for pod in pods for w in _waiting(pod)]
            why = "; ".join(f"{c} waiting: {r}" + (f": {m}" if m else "") for c, r, m in (fatal or waits))
            phase = (pods[-1].get("status") or {}).get("phase", "Pending") if pods else "no pod yet"
            if fatal:
                raise LaunchError(self.redact(f"Container failed to become ready: Job {name}: {why}"))
            raise LaunchError(self.redact(
                f"Container failed to become ready: Job {name} was not running after {spec.ready_timeout_s:.0f} s "
                f"({phase}{': ' + why if why else ''})"
            ), hint=f"kubectl -n {self.namespace} describe pods -l job-name={name}")
        with self.cond:
            pod = next(p for p in self._pods_of(uid) if _started(p))
        pod_name = str(pod["metadata"]["name"])
        init_ended = "terminated" in _state(pod, INIT_CONTAINER, init=True)
        worker_started = bool({"running", "terminated"} & set(_state(pod, WORKER_CONTAINER)))
        copy = _LogCopy(_PodLogs(self, pod_name, init_ended, worker_started), spec, self.cond, self.redact)
        copy.name = f"mahabharatha-kube-log-{spec.worker_id}"
        copy.start()
        with self.cond:
            self._copies.append((uid, copy))
        if not self._wait(lambda: copy.ready or copy.ended, started_at + spec.start_timeout_s) or not copy.ready:
            if self._aborted:
                raise LaunchError(f"Worker process failed to start in {name}: launch aborted")
            seen = self._exit_known(uid)
            fix = ""
            if seen is None:
                why = f"no `{ready_line(spec.worker_id)}` line after {spec.start_timeout_s:.0f} s"
            else:
                code, oom, _ = seen
                why = f"the pod ended with code {code} ({exit_meaning(code)})"
                if oom:
                    why += ", OOMKilled"
                    fix = f"raise resources.container_memory_limit (now {spec.mem_limit}); "
                why += " before the worker announced itself"
            copy.join(timeout=1.0)
            last = " | ".join(line for line in copy.tail if line.strip()) or "(no output)"
            raise LaunchError(
                f"Worker process failed to start in {name}: {why}; last log lines: {last}",
                hint=f"{fix}full log: {spec.log_path}",
            )
        return uid

    def start_all(self) -> None:
        """Create the Secret and every worker's Job (in parallel); return when each worker announced itself.
        A failed start deletes the Jobs this call made (unless ``keep_failed``) and raises LaunchError."""
        for spec in self.plan.workers:
            Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        self._apply_secret()
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=len(self.plan.workers), thread_name_prefix="mahabharatha-kube-start") as pool:
            futures = [pool.submit(self._start, spec) for spec in self.plan.workers]
            try:
                for future in as_completed(futures):
                    try:
                        future.result()
                    except Exception as exc:  # noqa: BLE001 - the first failure wins; the others are aborted
                        if failure is None:
                            failure = exc
                            self._abort()
            except BaseException:  # Ctrl-C while waiting: wake every starter before the pool joins them
                self._abort()
                raise
        if failure is not None:
            if not self.keep_failed:
                self._delete_current()
            if isinstance(failure, LaunchError):
                raise failure
            raise LaunchError(self.redact(f"Failed to start the workers' Jobs: {type(failure).__name__}: {failure}"))

    def _abort(self) -> None:
        with self.cond:
            self._aborted = True
            self.cond.notify_all()

    def _delete_current(self) -> None:
        with self.cond:
            current = dict(self.ids)
            self._requested.update(current.values())
        for wid, uid in current.items():
            with contextlib.suppress(Exception):
                self._delete_job(job_name(self.plan, wid), uid)

    def restart(self, worker_id: int) -> None:
        """Start the worker again: its old Job goes (the name is waited for), a new one comes; returns when the
        new worker announced itself."""
        old = self.ids.get(worker_id)
        with self.cond:
            self._aborted = False
            if old:
                self._requested.add(old)
        name = job_name(self.plan, worker_id)
        if old:
            try:
                self._delete_job(name, old)
            except Exception as exc:  # noqa: BLE001
                raise self._error(f"Failed to restart worker {worker_id}: deleting Job {name}", exc) from None
        self._start(self.plan.workers[worker_id])

    def current(self, worker_id: int) -> Any:
        """The id of the worker's current Job (its uid), as exits report it."""
        return self.ids.get(worker_id)

    # -- stopping --------------------------------------------------------------------------------------------
    def stop(self, worker_id: int) -> None:
        """Delete the worker's Job (Foreground: its pod is stopped first, SIGTERM then the grace period) and
        return at once; its end arrives as a ``die`` event."""
        uid = self.ids.get(worker_id)
        if not uid:
            return
        with self.cond:
            self._requested.add(uid)
        name = job_name(self.plan, worker_id)

        def stop() -> None:
            with contextlib.suppress(Exception):
                self._delete_job(name, uid)

        threading.Thread(target=stop, daemon=True, name=f"mahabharatha-kube-stop-{worker_id}").start()

    def stop_all(self, timeout: float = 30.0) -> None:
        """Delete every worker's Job and wait (up to ``timeout``) for their pods to end; pods still there then
        are deleted without a grace period."""
        self._delete_current()
        with self.cond:
            uids = set(self.ids.values())

        def ended() -> bool:
            return all(self._exit_known_locked(uid) for uid in uids)

        if not self._wait(ended, time.monotonic() + timeout, abortable=False):
            with self.cond:
                left = [name for uid in uids for name, (_, gone) in (self.pods.get(uid) or {}).items() if not gone]
            for name in left:
                with contextlib.suppress(Exception):
                    self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0, _preload_content=False)

    def _exit_known_locked(self, uid: str) -> bool:
        return any(_pod_exit(pod, gone, True) is not None for pod, gone in (self.pods.get(uid) or {}).values()) or not self.pods.get(uid)

    def close(self, *, success: bool) -> None:
        """End of the run: stop watching and copying, delete the feature's Jobs (unless ``keep_failed`` after a
        failure) and its Secret, by label."""
        with self.cond:
            copies = list(self._copies)
        deadline = time.monotonic() + 3.0
        for uid, copy in copies:  # the logs of ended pods finish on their own: let them
            if self._exit_known(uid) is not None:
                copy.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.cond:
            self.closed = True
            self._aborted = True
            streams = list(self._streams)
            self.cond.notify_all()
        for resp in streams:
            _interrupt(resp)
        jobs = success or not self.keep_failed
        for what, delete in (
            ("Jobs", lambda: self.batch.delete_collection_namespaced_job(
                self.namespace, label_selector=self.selector, propagation_policy="Background", _preload_content=False)),
            ("Secret", lambda: self.core.delete_collection_namespaced_secret(
                self.namespace, label_selector=self.selector, _preload_content=False)),
        ):
            if what == "Jobs" and not jobs:
                continue
            try:
                delete()
            except Exception as exc:  # noqa: BLE001 - say so, but the run's result stands
                self.out(str(self._error(f"could not remove the run's {what} (remove them by label {self.selector})", exc)))
        if self._own_client:
            with contextlib.suppress(Exception):
                self.api.close()


def remove_run(plan: LaunchPlan, *, api_client: Any = None) -> str:
    """Delete the feature's Jobs (their pods with them) and Secret by label in the plan's namespace, e.g. after
    an orchestrator died (``mahabharatha cleanup``); the selector used. LaunchError when the cluster cannot be
    reached."""
    k = _kubernetes()
    api = kube_client(api_client)
    namespace = plan.namespace or "default"
    selector = run_selector(plan)
    batch, core = k.client.BatchV1Api(api), k.client.CoreV1Api(api)
    try:
        batch.delete_collection_namespaced_job(namespace, label_selector=selector, propagation_policy="Background")
        core.delete_collection_namespaced_secret(namespace, label_selector=selector)
    except Exception as exc:  # noqa: BLE001 - one line, whatever the client raised
        raise LaunchError(f"Cannot remove the run's Jobs and Secret (label {selector}): {' '.join(str(exc).split())[:200]}") from None
    finally:
        if api_client is None:
            with contextlib.suppress(Exception):
                api.close()
    return selector
