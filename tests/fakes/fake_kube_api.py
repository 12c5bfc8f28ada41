"""A FAKE Kubernetes API server for contract tests of :class:`mahabharatha.edge.kube.KubeLauncher`.

It is not a cluster and runs nothing: a real HTTP server on 127.0.0.1 (in a thread) that implements just the
endpoints the executor uses, with the API's shapes (objects with ``metadata.uid`` and ``resourceVersion``,
``Status`` errors with ``code``/``reason``/``message``, list + ``watch=true`` streams of JSON lines, chunked
``follow`` logs), so tests check the requests the executor sends and how it reads the answers:

- Secrets: create (409 AlreadyExists), read, replace, delete, delete by ``labelSelector``;
- Jobs: create (and, as the Job controller would, one Pending pod with the template's labels, a
  ``controller-uid`` label and an ``ownerReference`` to the Job), read, delete (``propagationPolicy``,
  ``preconditions.uid``: its pods get a ``deletionTimestamp``, end with ``exit_on_delete`` if running, go),
  delete by ``labelSelector``;
- Pods: list and watch by ``labelSelector`` (``=``, ``==``, ``!=``, existence), read a container's log
  (``follow=true`` streams until the container ends), delete.

The test "runs" a pod by hand: :meth:`FakeKubeAPI.run_pod` (init container done, worker running),
:meth:`write_log`, :meth:`terminate` (exit code and reason, e.g. ``OOMKilled``), :meth:`delete_pod` (gone, no
exit), :meth:`set_waiting`; or :attr:`on_job` scripts each new Job's pod on a thread. Every request is kept in
:attr:`requests` (method, path, query, body).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeKubeAPI", "matches"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selector semantics (``a=b,c!=d,e``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKubeAPI:
    """The fake server and its state. ``with FakeKubeAPI() as api: api.url``."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.rv = 0
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str, str], bytearray] = {}  # (namespace, pod, container) -> output
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, namespace, type, pod) for watches
        self.requests: list[dict[str, Any]] = []
        self.exit_on_delete: int | None = 130  # what a running worker exits with when its pod is deleted
        self.on_job: Callable[[FakeKubeAPI, str, dict[str, Any]], None] | None = None  # (api, pod name, job)
        self.closed = False
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True, name="fake-kube-api")

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -- what a test looks at and does -----------------------------------------------------------------------
    def requests_to(self, method: str, fragment: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and fragment in r["path"]]

    def pods_of(self, job: str, namespace: str = "default") -> list[str]:
        with self.lock:
            return sorted(n for (ns, n), p in self.pods.items() if ns == namespace and p["metadata"]["labels"].get("job-name") == job)

    def wait_pod(self, job: str, namespace: str = "default", timeout: float = 10.0) -> str:
        """The name of the (first) pod of ``job`` once the fake made it."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                pods = [n for (ns, n), p in sorted(self.pods.items())
                        if ns == namespace and p["metadata"]["labels"].get("job-name") == job]
                if pods:
                    return pods[-1]
                if not self.lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"no pod of Job {job}")

    def run_pod(self, pod: str, namespace: str = "default") -> None:
        """The init container ended with 0 and the worker container runs."""
        def change(p: dict[str, Any]) -> None:
            status = p["status"]
            status["phase"] = "Running"
            status["initContainerStatuses"] = [
                {"name": c["name"], "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}, "ready": True,
                 "restartCount": 0, "image": c["image"], "imageID": "", "started": False}
                for c in p["spec"].get("initContainers", [])
            ]
            status["containerStatuses"] = [
                {"name": c["name"], "state": {"running": {"startedAt": _now()}}, "ready": True, "restartCount": 0,
                 "image": c["image"], "imageID": "", "started": True}
                for c in p["spec"]["containers"]
            ]
        self._modify(namespace, pod, change)

    def set_waiting(self, pod: str, reason: str, message: str = "", namespace: str = "default") -> None:
        """Every container of the pod waits (e.g. ``ImagePullBackOff``); the pod stays Pending."""
        def change(p: dict[str, Any]) -> None:
            state = {"waiting": {"reason": reason, "message": message}}
            p["status"]["initContainerStatuses"] = [{"name": c["name"], "state": state, "ready": False, "restartCount": 0,
                                                     "image": c["image"], "imageID": ""} for c in p["spec"].get("initContainers", [])]
            p["status"]["containerStatuses"] = [{"name": c["name"], "state": state, "ready": False, "restartCount": 0,
                                                 "image": c["image"], "imageID": ""} for c in p["spec"]["containers"]]
        self._modify(namespace, pod, change)

    def write_log(self, pod: str, text: str | bytes, container: str = "worker", namespace: str = "default") -> None:
        data = text.encode() if isinstance(text, str) else text
        with self.lock:
            self.logs.setdefault((namespace, pod, container), bytearray()).extend(data)
            self.lock.notify_all()

    def terminate(self, pod: str, exit_code: int, reason: str = "", namespace: str = "default",
                  container: str = "worker") -> None:
        """The container ends (``reason``: ``Completed``, ``Error``, ``OOMKilled``); the pod is Succeeded or
        Failed when it was the worker container (restartPolicy Never)."""
        reason = reason or ("Completed" if exit_code == 0 else "Error")

        def change(p: dict[str, Any]) -> None:
            key = "containerStatuses" if container == "worker" else "initContainerStatuses"
            statuses = p["status"].setdefault(key, [])
            term = {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": _now()}}
            for s in statuses:
                if s["name"] == container:
                    s["state"] = term
                    break
            else:
                statuses.append({"name": container, "state": term, "ready": False, "restartCount": 0, "image": "", "imageID": ""})
            if container == "worker" or exit_code != 0:
                p["status"]["phase"] = "Succeeded" if exit_code == 0 and container == "worker" else "Failed"
        self._modify(namespace, pod, change)

    def delete_pod(self, pod: str, namespace: str = "default") -> None:
        """The pod is removed at once, without an exit of its own (``kubectl delete pod --force``)."""
        with self.lock:
            self._remove_pod(namespace, pod)

    def add_job(self, body: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        """A Job someone else made (for ownership tests)."""
        with self.lock:
            return self._create_job(namespace, body, make_pod=False)

    # -- internals -------------------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _event(self, namespace: str, kind: str, pod: dict[str, Any]) -> None:
        self.history.append((self.rv, namespace, kind, copy.deepcopy(pod)))
        self.lock.notify_all()

    def _modify(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self.lock:
            pod = self.pods[(namespace, name)]
            change(pod)
            pod["metadata"]["resourceVersion"] = self._next_rv()
            self._event(namespace, "MODIFIED", pod)

    def _remove_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name), None)
        if pod is not None:
            pod["metadata"]["resourceVersion"] = self._next_rv()
            self._event(namespace, "DELETED", pod)

    def _meta(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        meta = copy.deepcopy(body.get("metadata") or {})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), resourceVersion=self._next_rv(), creationTimestamp=_now())
        return meta

    def _create_job(self, namespace: str, body: dict[str, Any], make_pod: bool = True) -> dict[str, Any]:
        name = body["metadata"]["name"]
        job = copy.deepcopy(body)
        job["metadata"] = self._meta(body, namespace)
        job["status"] = {}
        self.jobs[(namespace, name)] = job
        if make_pod:
            template = job["spec"]["template"]
            uid = job["metadata"]["uid"]
            pod_name = f"{name[:57]}-{uuid.uuid4().hex[:5]}"
            labels = {**(template.get("metadata") or {}).get("labels", {}), "controller-uid": uid,
                      "batch.kubernetes.io/controller-uid": uid, "job-name": name, "batch.kubernetes.io/job-name": name}
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod_name, "namespace": namespace, "uid": str(uuid.uuid4()), "resourceVersion": self._next_rv(),
                    "labels": labels, "annotations": copy.deepcopy((template.get("metadata") or {}).get("annotations", {})),
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": True}],
                    "creationTimestamp": _now(),
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending"},
            }
            self.pods[(namespace, pod_name)] = pod
            self._event(namespace, "ADDED", pod)
            if self.on_job is not None:
                threading.Thread(target=self.on_job, args=(self, pod_name, copy.deepcopy(job)), daemon=True).start()
        return job

    def _delete_job(self, namespace: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
        job = self.jobs.get((namespace, name))
        if job is None:
            raise _Status(404, "NotFound", f'jobs.batch "{name}" not found')
        wanted = (options.get("preconditions") or {}).get("uid")
        if wanted and wanted != job["metadata"]["uid"]:
            raise _Status(409, "Conflict", f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {job['metadata']['uid']}")
        uid = job["metadata"]["uid"]
        owned = [key for key, p in self.pods.items() if p["metadata"]["labels"].get("controller-uid") == uid]
        if options.get("propagationPolicy") in ("Foreground", "Background"):
            for key in owned:  # graceful deletion: a running worker ends (SIGTERM), then the pod goes
                pod = self.pods[key]
                pod["metadata"]["deletionTimestamp"] = _now()
                running = any("running" in s.get("state", {}) for s in pod["status"].get("containerStatuses", []))
                if running and self.exit_on_delete is not None:
                    for s in pod["status"]["containerStatuses"]:
                        s["state"] = {"terminated": {"exitCode": self.exit_on_delete, "reason": "Error", "finishedAt": _now()}}
                    pod["status"]["phase"] = "Failed"
                pod["metadata"]["resourceVersion"] = self._next_rv()
                self._event(key[0], "MODIFIED", pod)
                self._remove_pod(*key)
        del self.jobs[(namespace, name)]
        return job

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # small answers at once, not after the client's delayed ACK

            def log_message(self, *_args: Any) -> None:
                pass

            def _body(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                return json.loads(raw) if raw else {}

            def _send(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _start_stream(self, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _end_stream(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                body = self._body() if method in ("POST", "PUT", "DELETE") else {}
                api.requests.append({"method": method, "path": parts.path, "query": query, "body": body})
                segments = [unquote(s) for s in parts.path.strip("/").split("/")]
                try:
                    self._route(method, segments, query, body)
                except _Status as st:
                    self._send(st.code, st.body())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = lambda self: self._dispatch("GET")  # noqa: E731
            do_POST = lambda self: self._dispatch("POST")  # noqa: E731
            do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
            do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

            def _route(self, method: str, seg: list[str], query: dict[str, str], body: dict[str, Any]) -> None:
                # /api/v1/namespaces/NS/KIND[/NAME[/log]]  or  /apis/batch/v1/namespaces/NS/jobs[/NAME]
                if seg[:2] == ["api", "v1"] and len(seg) >= 5 and seg[2] == "namespaces":
                    ns, kind, rest = seg[3], seg[4], seg[5:]
                elif seg[:3] == ["apis", "batch", "v1"] and len(seg) >= 6 and seg[3] == "namespaces":
                    ns, kind, rest = seg[4], seg[5], seg[6:]
                else:
                    raise _Status(404, "NotFound", f"the fake has no {'/'.join(seg)}")
                store = {"secrets": api.secrets, "jobs": api.jobs, "pods": api.pods}.get(kind)
                if store is None:
                    raise _Status(404, "NotFound", f"the fake has no {kind}")
                selector = query.get("labelSelector", "")
                if kind == "pods" and method == "GET" and not rest:
                    return self._pods(ns, selector, query)
                if kind == "pods" and method == "GET" and len(rest) == 2 and rest[1] == "log":
                    return self._log(ns, rest[0], query)
                with api.lock:
                    if not rest and method == "POST":
                        name = body["metadata"]["name"]
                        if (ns, name) in store:
                            raise _Status(409, "AlreadyExists", f'{kind} "{name}" already exists')
                        if kind == "jobs":
                            obj = api._create_job(ns, body)
                        else:
                            obj = copy.deepcopy(body)
                            obj["metadata"] = api._meta(body, ns)
                            store[(ns, name)] = obj
                        return self._send(201, obj)
                    if not rest and method == "DELETE":  # deletecollection
                        gone = [k for k, o in list(store.items()) if k[0] == ns and matches(selector, o["metadata"].get("labels") or {})]
                        for key in gone:
                            if kind == "jobs":
                                api._delete_job(ns, key[1], {"propagationPolicy": query.get("propagationPolicy") or body.get("propagationPolicy", "Background")})
                            elif kind == "pods":
                                api._remove_pod(*key)
                            else:
                                del store[key]
                        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                    if len(rest) != 1:
                        raise _Status(404, "NotFound", "no such path")
                    name = rest[0]
                    obj = store.get((ns, name))
                    if method == "GET":
                        if obj is None:
                            raise _Status(404, "NotFound", f'{kind} "{name}" not found')
                        return self._send(200, obj)
                    if method == "PUT":
                        if obj is None:
                            raise _Status(404, "NotFound", f'{kind} "{name}" not found')
                        new = copy.deepcopy(body)
                        new["metadata"] = {**obj["metadata"], **(body.get("metadata") or {}), "uid": obj["metadata"]["uid"],
                                           "resourceVersion": api._next_rv()}
                        store[(ns, name)] = new
                        return self._send(200, new)
                    if method == "DELETE":
                        options = {**body, **({"propagationPolicy": query["propagationPolicy"]} if "propagationPolicy" in query else {})}
                        if kind == "jobs":
                            return self._send(200, api._delete_job(ns, name, options))
                        if obj is None:
                            raise _Status(404, "NotFound", f'{kind} "{name}" not found')
                        if kind == "pods":
                            api._remove_pod(ns, name)
                        else:
                            del store[(ns, name)]
                        return self._send(200, obj)
                raise _Status(405, "MethodNotAllowed", method)

            def _pods(self, ns: str, selector: str, query: dict[str, str]) -> None:
                def mine(space: str, pod: dict[str, Any]) -> bool:
                    return space == ns and matches(selector, pod["metadata"].get("labels") or {})

                if query.get("watch") not in ("true", "1"):
                    with api.lock:
                        items = [copy.deepcopy(p) for (space, _), p in sorted(api.pods.items()) if mine(space, p)]
                        rv = str(api.rv)
                    return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
                since = int(query.get("resourceVersion") or 0)
                self._start_stream("application/json")
                try:
                    while True:
                        with api.lock:
                            while True:
                                pending = [(rv, kind, pod) for rv, space, kind, pod in api.history if rv > since and mine(space, pod)]
                                if pending or api.closed:
                                    break
                                api.lock.wait(timeout=0.5)
                        if not pending:  # the fake is closing
                            break
                        for rv, kind, pod in pending:
                            since = max(since, rv)
                            self._chunk(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
                    self._end_stream()
                except OSError:
                    pass

            def _log(self, ns: str, pod_name: str, query: dict[str, str]) -> None:
                container = query.get("container") or "worker"
                with api.lock:
                    pod = api.pods.get((ns, pod_name))
                    if pod is None:
                        raise _Status(404, "NotFound", f'pods "{pod_name}" not found')
                    if not _started(pod, container):
                        raise _Status(400, "BadRequest", f'container "{container}" in pod "{pod_name}" is waiting to start: PodInitializing')
                follow = query.get("follow") in ("true", "1")
                self._start_stream("text/plain")
                sent = 0
                try:
                    while True:
                        with api.lock:
                            data = bytes(api.logs.get((ns, pod_name, container), b""))
                            pod = api.pods.get((ns, pod_name))
                            ended = pod is None or not _running(pod, container)
                        if len(data) > sent:
                            # line by line, as a kubelet sends them
                            for line in data[sent:].splitlines(keepends=True):
                                self._chunk(line)
                            sent = len(data)
                            continue
                        if not follow or ended or api.closed:
                            break
                        with api.lock:
                            api.lock.wait(timeout=0.5)
                    self._end_stream()
                except OSError:
                    pass

        return Handler


def _status_of(pod: dict[str, Any], container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for s in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if s.get("name") == container:
            return s.get("state") or {}
    return {}


def _started(pod: dict[str, Any], container: str) -> bool:
    state = _status_of(pod, container)
    return "running" in state or "terminated" in state


def _running(pod: dict[str, Any], container: str) -> bool:
    return "running" in _status_of(pod, container)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (the launcher ending a stream it follows) is no error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Status(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}
