"""Kubernetes manifests for a remote-transport :class:`~mahabharatha.core.model.LaunchPlan`. Pure.

:func:`render_k8s` turns the plan into one ``Secret`` (the run's credentials and the workers' channel tokens)
and one ``batch/v1`` ``Job`` per worker; :func:`render_k8s_yaml` prints them as multi-document YAML, the
same bytes for the same plan. The dry-run shows exactly what :class:`mahabharatha.edge.kube.KubeLauncher`
creates, except that the Secret holds placeholders here: the executor puts the real values in at launch
(and the real channel URL when the plan's port is 0, chosen when the run starts).

Only a remote-transport plan can run in a pod: nothing of this machine is mounted there. Each pod gets
emptyDirs where the plan has tmpfs mounts, and one for the worker runtime, which an init container (the
plan's bootstrap with ``MAHABHARATHA_BOOTSTRAP_ONLY=1``) fetches over the channel; the worker container then
runs ``python3 -m mahabharatha_worker`` from it (read-only) and fetches the base commit itself.

How the plan maps (the choices the Docker form did not force):

- resources: requests equal limits (Guaranteed QoS: a worker is not the first pod evicted under memory
  pressure, and gets what Docker's limits promise); memory in Gi/Mi when exact, else bytes; CPU in cores or
  millicores. ``pids_limit`` has no pod field (Kubernetes sets it per node, kubelet ``podPidsLimit``): it is
  recorded as an annotation only.
- a sized tmpfs (``/tmp``, ``/home/worker``, ``/run``) becomes an emptyDir with ``medium: Memory`` and that
  ``sizeLimit``; the unsized ``/workspace`` a disk-backed emptyDir, so a big checkout does not count against
  the memory limit and end in OOM kills.
- ``init: true`` (``docker run --init``) becomes ``shareProcessNamespace: true``: the pod's pause process is
  PID 1 and reaps the agent's orphans.
- no ``activeDeadlineSeconds``: ``workers.timeout_minutes`` bounds one task attempt (the orchestrator
  enforces it), not a worker's whole life; ``ttlSecondsAfterFinished`` (a day) removes Jobs an orchestrator
  that died could not.
- the user: ``runAsNonRoot`` forbids uid 0, so a root uid (or gid) of the plan becomes 1000 (the worker
  image's user), said in the ``io.mahabharatha/note-user`` annotation.
- labels: ``io.mahabharatha.X`` becomes ``io.mahabharatha/X``; a value Kubernetes cannot carry (the
  repository path) becomes a hash label (``io.mahabharatha/repo-hash``) plus an annotation with the value.
- names: ``<prefix>-<feature>-<n>`` lower-cased, ``_`` and ``.`` as ``-``; a name that had to change (or is
  over 63 characters) gets a short hash of the original, so two features never share a name.
- no service-account token in the pod, no service links: a worker has no business with the cluster's API.

:func:`check_manifests` checks what ``kubernetes-validate`` (the OpenAPI schemas) does not: names, label
keys and values, quantities, ``restartPolicy`` and images, and that each ``secretKeyRef`` names a key of
the rendered Secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from ..errors import ConfigError
from ..worker import protocol as P
from .model import LABEL_PREFIX, LABEL_REPO, LaunchPlan, WorkerSpec
from .plan import WORKER_COMMAND

__all__ = [
    "render_k8s",
    "render_k8s_yaml",
    "check_manifests",
    "job_name",
    "secret_name",
    "token_key",
    "k8s_label_key",
    "run_labels",
    "run_selector",
    "memory_quantity",
    "cpu_quantity",
    "dns_name",
    "K8S_PREFIX",
    "K8S_LABEL_WORKER",
    "K8S_LABEL_REPO_HASH",
    "ANNOTATION_REPO",
    "ANNOTATION_SECRET",
    "INIT_CONTAINER",
    "WORKER_CONTAINER",
    "SECRET_PLACEHOLDER",
    "TOKEN_PLACEHOLDER",
    "TTL_SECONDS_AFTER_FINISHED",
]

K8S_PREFIX = LABEL_PREFIX  # "io.mahabharatha": label and annotation keys are "io.mahabharatha/<name>"
K8S_LABEL_WORKER = f"{K8S_PREFIX}/worker"
K8S_LABEL_REPO_HASH = f"{K8S_PREFIX}/repo-hash"
ANNOTATION_REPO = f"{K8S_PREFIX}/repo"
ANNOTATION_CHANNEL = f"{K8S_PREFIX}/channel"
ANNOTATION_NOTE_USER = f"{K8S_PREFIX}/note-user"
ANNOTATION_PIDS = f"{K8S_PREFIX}/pids-limit"
ANNOTATION_SECRET = f"{K8S_PREFIX}/values"
APP_LABELS = {"app.kubernetes.io/name": "mahabharatha", "app.kubernetes.io/managed-by": "mahabharatha"}

INIT_CONTAINER = "bootstrap"
WORKER_CONTAINER = "worker"
RUNTIME_VOLUME = "runtime"
NON_ROOT_ID = 1000  # the worker image's user (data/Dockerfile: useradd --uid 1000 worker)
TTL_SECONDS_AFTER_FINISHED = 86_400
TERMINATION_GRACE_S = 30
SECRET_PLACEHOLDER = "<set at launch from {source}>"
TOKEN_PLACEHOLDER = "<made when the run starts>"
PORT_PLACEHOLDER = "<port chosen at launch>"

_MAX_NAME = 63
_HASH_LEN = 8
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII)
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", re.ASCII)
_ENV_NAME_RE = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*", re.ASCII)
_SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+", re.ASCII)
_QUANTITY_RE = re.compile(
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?", re.ASCII
)
_SUFFIX = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15),
    "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30),
    "Ti": Fraction(2**40), "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
_TMPFS_SIZE_RE = re.compile(r"(?:^|,)size=(\d+)([kmg]?)(?:,|$)", re.ASCII)


# --------------------------------------------------------------------------------------------------------
# Names, labels, quantities


def _digest(text: str, length: int = _HASH_LEN) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_name(text: str, suffix: str = "") -> str:
    """``text`` + ``suffix`` as a DNS-1123 label (lower case, ``-`` for anything else, at most 63 characters).

    When ``text`` had to change, or the result would be too long, a hash of the original ``text`` goes
    before ``suffix``: ``Feat`` and ``feat`` (or two long names with one start) never get the same name."""
    base = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"
    if base != text or len(base) + len(suffix) > _MAX_NAME:
        room = _MAX_NAME - len(suffix) - _HASH_LEN - 1
        base = f"{base[:room].rstrip('-')}-{_digest(text)}".lstrip("-")
    return base + suffix


def _run_base(plan: LaunchPlan) -> str:
    return f"{plan.container_prefix}-{plan.feature}"


def job_name(plan: LaunchPlan, worker_id: int) -> str:
    """The Job of worker N: ``<prefix>-<feature>-<n>`` as a DNS-1123 label."""
    return dns_name(_run_base(plan), f"-{worker_id}")


def secret_name(plan: LaunchPlan) -> str:
    """The run's one Secret (credentials and channel tokens): ``<prefix>-<feature>-secrets``."""
    return dns_name(_run_base(plan), "-secrets")


def token_key(worker_id: int) -> str:
    """The key of worker N's channel token in the run's Secret."""
    return f"channel-token-{worker_id}"


def k8s_label_key(key: str) -> str:
    """A plan label key (``io.mahabharatha.feature``) as a Kubernetes one (``io.mahabharatha/feature``)."""
    if key.startswith(LABEL_PREFIX + "."):
        return f"{K8S_PREFIX}/{key[len(LABEL_PREFIX) + 1:]}"
    return key


def _label_value_ok(value: str) -> bool:
    return value == "" or (len(value) <= _MAX_NAME and _LABEL_NAME_RE.fullmatch(value) is not None)


def _labels_of(spec: WorkerSpec) -> tuple[dict[str, str], dict[str, str]]:
    """The spec's labels as Kubernetes labels, and annotations for the values a label cannot carry."""
    labels = dict(APP_LABELS)
    annotations: dict[str, str] = {}
    for label in spec.labels:
        key = k8s_label_key(label.key)
        if label.key == LABEL_REPO:  # a path: never a valid label value; hashed, the path itself annotated
            labels[K8S_LABEL_REPO_HASH] = _digest(label.value, 16)
            annotations[ANNOTATION_REPO] = label.value
        elif _label_value_ok(label.value):
            labels[key] = label.value
        else:
            labels[f"{key}-hash"] = _digest(label.value, 16)
            annotations[key] = label.value
    return labels, annotations


def run_labels(plan: LaunchPlan) -> dict[str, str]:
    """The labels every object of the run carries (all but the worker's): what the executor selects by."""
    if not plan.workers:
        return dict(APP_LABELS)
    labels, _ = _labels_of(plan.workers[0])
    labels.pop(K8S_LABEL_WORKER, None)
    return labels


def run_selector(plan: LaunchPlan) -> str:
    """A label selector for every object of this repository's runs of the feature (any plan: a newer plan's
    executor replaces and removes an older one's, like the Docker executor does by repo + feature)."""
    labels = run_labels(plan)
    keys = [f"{K8S_PREFIX}/managed", K8S_LABEL_REPO_HASH, f"{K8S_PREFIX}/feature", f"{K8S_PREFIX}/feature-hash"]
    return ",".join(f"{k}={labels[k]}" for k in keys if k in labels)


def memory_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: ``Gi`` or ``Mi`` when exact, else the byte count."""
    for unit, scale in (("Gi", 1 << 30), ("Mi", 1 << 20)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def cpu_quantity(cpus: float) -> str:
    """CPUs as a Kubernetes quantity: whole cores (``"2"``) or millicores (``"500m"``), at least ``1m``."""
    milli = max(1, round(cpus * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _tmpfs_size(options: str) -> int | None:
    match = _TMPFS_SIZE_RE.search(options)
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]


# --------------------------------------------------------------------------------------------------------
# Rendering


def _channel_url(plan: LaunchPlan, channel_url: str | None) -> str:
    if channel_url:
        return channel_url
    if plan.channel.port == 0:
        host = f"[{plan.channel.host}]" if ":" in plan.channel.host else plan.channel.host
        return f"tcp://{host}:{PORT_PLACEHOLDER}"
    return plan.channel.url


def _ids(spec: WorkerSpec) -> tuple[int, int, str]:
    """(uid, gid, note): the plan's ``uid:gid`` with root replaced, since ``runAsNonRoot`` forbids uid 0."""
    uid_text, _, gid_text = spec.user.partition(":")
    try:
        uid, gid = int(uid_text), int(gid_text or uid_text)
    except ValueError:
        raise ConfigError(f"worker {spec.worker_id}: user {spec.user!r} is not uid:gid") from None
    if uid != 0 and gid != 0:
        return uid, gid, ""
    new_uid, new_gid = uid or NON_ROOT_ID, gid or NON_ROOT_ID
    return new_uid, new_gid, (
        f"the plan's user {spec.user} includes root; runAsNonRoot forbids uid 0, so the pod runs as "
        f"{new_uid}:{new_gid} (the worker image's user)"
    )


def _volumes(spec: WorkerSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, the worker container's mounts): an emptyDir per tmpfs and per anonymous volume, plus the
    runtime's."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for t in spec.tmpfs:
        name = dns_name(t.target.strip("/").replace("/", "-") or "root")
        size = _tmpfs_size(t.options)
        empty: dict[str, Any] = {}
        if size is not None:  # bounded scratch space, as Docker's tmpfs: in memory
            empty = {"medium": "Memory", "sizeLimit": memory_quantity(size)}
        volumes.append({"name": name, "emptyDir": empty})
        mounts.append({"name": name, "mountPath": t.target})
    for target in spec.volumes:  # the plan's anonymous volumes (the workspace): on the node's disk
        name = dns_name(target.strip("/").replace("/", "-") or "root")
        volumes.append({"name": name, "emptyDir": {}})
        mounts.append({"name": name, "mountPath": target})
    volumes.append({"name": RUNTIME_VOLUME, "emptyDir": {}})
    mounts.append({"name": RUNTIME_VOLUME, "mountPath": P.RUNTIME_LIB, "readOnly": True})
    return volumes, mounts


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


PIN_PLACEHOLDER = "<sha256 of the channel's TLS certificate, made when the run starts>"


def _job(plan: LaunchPlan, spec: WorkerSpec, namespace: str, url: str, pin: str) -> dict[str, Any]:
    labels, annotations = _labels_of(spec)
    uid, gid, user_note = _ids(spec)
    if user_note:
        annotations[ANNOTATION_NOTE_USER] = user_note
    if plan.channel.port == 0 and url.endswith(PORT_PLACEHOLDER):
        annotations[ANNOTATION_CHANNEL] = (
            f"port 0: a free port of {plan.channel.host} is chosen when the run starts; the executor puts the "
            f"real URL in {P.ENV_CHANNEL}"
        )
    if spec.pids_limit is not None:
        annotations[ANNOTATION_PIDS] = (
            f"{spec.pids_limit} (not applied: Kubernetes limits PIDs per node, kubelet podPidsLimit)"
        )
    secret = secret_name(plan)

    def token() -> dict[str, Any]:
        return _secret_env(P.ENV_CHANNEL_TOKEN, secret, token_key(spec.worker_id))

    env_values = {**spec.env_dict(), P.ENV_CHANNEL: url, P.ENV_CHANNEL_PIN: pin, "PYTHONPATH": P.RUNTIME_LIB}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env_values.items())]
    env += [_secret_env(s.name, secret, s.name) for s in spec.secret_environment]
    env.append(token())
    env.sort(key=lambda e: e["name"])
    init_env = [
        {"name": P.ENV_CHANNEL, "value": url},
        {"name": P.ENV_CHANNEL_PIN, "value": pin},
        token(),
        {"name": "MAHABHARATHA_BOOTSTRAP_ONLY", "value": "1"},
        {"name": "MAHABHARATHA_RUNTIME_DIR", "value": P.RUNTIME_LIB},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    init_env.sort(key=lambda e: e["name"])
    quantities = {"memory": memory_quantity(spec.mem_limit_bytes), "cpu": cpu_quantity(spec.cpus)}

    def resources() -> dict[str, Any]:
        return {"requests": dict(quantities), "limits": dict(quantities)}

    def security() -> dict[str, Any]:
        context: dict[str, Any] = {
            "allowPrivilegeEscalation": "no-new-privileges:true" not in spec.security_opt,
            "privileged": False,
            "readOnlyRootFilesystem": spec.read_only,
            "runAsNonRoot": True,
        }
        if spec.cap_drop:
            context["capabilities"] = {"drop": list(spec.cap_drop)}
        return context

    volumes, mounts = _volumes(spec)
    init = {
        "name": INIT_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(spec.command),  # the plan's bootstrap; BOOTSTRAP_ONLY makes it stop after the fetch
        "env": init_env,
        "resources": resources(),
        "securityContext": security(),
        "volumeMounts": [{"name": RUNTIME_VOLUME, "mountPath": P.RUNTIME_LIB}],
    }
    worker = {
        "name": WORKER_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(WORKER_COMMAND),
        "workingDir": spec.working_dir,
        "env": env,
        "resources": resources(),
        "securityContext": security(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        **({"shareProcessNamespace": True} if spec.init else {}),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [init],
        "containers": [worker],
        "volumes": volumes,
    }
    metadata: dict[str, Any] = {"name": job_name(plan, spec.worker_id), "namespace": namespace, "labels": labels}
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    template_meta: dict[str, Any] = {"labels": dict(labels)}
    if annotations:
        template_meta["annotations"] = dict(sorted(annotations.items()))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def _secret(plan: LaunchPlan, namespace: str) -> dict[str, Any]:
    data: dict[str, str] = {}
    for spec in plan.workers:
        for s in spec.secret_environment:
            data.setdefault(s.name, SECRET_PLACEHOLDER.format(source=s.source))
    for spec in plan.workers:
        data[token_key(spec.worker_id)] = TOKEN_PLACEHOLDER
    labels = run_labels(plan)
    annotations = {
        ANNOTATION_SECRET: "placeholders: the executor fills in the real values when the run starts",
    }
    if plan.workers:
        _, worker_annotations = _labels_of(plan.workers[0])
        annotations.update(worker_annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(plan),
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(sorted(annotations.items())),
        },
        "type": "Opaque",
        "stringData": data,
    }


def render_k8s(
    plan: LaunchPlan, *, namespace: str = "default", channel_url: str | None = None, channel_pin: str | None = None
) -> list[dict[str, Any]]:
    """The run's Secret, then one Job per worker, as plain dicts (what the Kubernetes API takes as bodies).

    The Secret's values are placeholders, never the plan's secrets. ``channel_url`` is the URL workers dial
    (the executor passes the real one; by default the plan's, with a placeholder port when it is 0);
    ``channel_pin`` the channel certificate's pin (made when the run starts: a placeholder by default).
    Raises :class:`ConfigError` for a local-transport plan or an invalid ``namespace``.
    """
    if plan.transport != "remote" or plan.channel.kind != "tcp":
        raise ConfigError(
            "Kubernetes needs workers.transport: remote (pods share none of this machine's files): set it, and "
            "workers.channel_address (or MAHABHARATHA_CHANNEL_ADDRESS) to HOST[:PORT] the pods can reach"
        )
    if len(namespace) > _MAX_NAME or not _DNS_LABEL_RE.fullmatch(namespace):
        raise ConfigError(f"namespace {namespace!r}: expected a DNS-1123 label (a-z, 0-9, '-', at most 63)")
    url = _channel_url(plan, channel_url)
    pin = channel_pin or PIN_PLACEHOLDER
    return [_secret(plan, namespace), *(_job(plan, spec, namespace, url, pin) for spec in plan.workers)]


class _Dumper:
    """A yaml SafeDumper (built lazily) that prints multi-line strings (the bootstrap source) as blocks."""

    _cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._cls is None:
            import yaml

            class Dumper(yaml.SafeDumper):
                def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: each document reads alone
                    return True

            def text(dumper: Any, value: str) -> Any:
                style = "|" if "\n" in value else None
                return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

            Dumper.add_representer(str, text)
            cls._cls = Dumper
        return cls._cls


def render_k8s_yaml(plan: LaunchPlan, *, namespace: str = "default", channel_url: str | None = None) -> str:
    """:func:`render_k8s` as multi-document YAML (``kubectl apply -f``), with a header saying what is a
    placeholder. Deterministic: the same plan gives the same bytes."""
    import yaml

    docs = render_k8s(plan, namespace=namespace, channel_url=channel_url)
    header = [
        f"# mahabharatha plan {plan.plan_id}: feature {plan.feature} in {plan.repo}, {len(plan.workers)} worker Job(s)",
        f"# in namespace {namespace}. The Secret holds placeholders: the Kubernetes executor fills in the",
        "# credentials and makes each worker's channel token when the run starts.",
    ]
    if plan.channel.port == 0 and not channel_url:
        header.append(f"# The channel port is chosen at launch: {PORT_PLACEHOLDER} stands for it.")
    body = yaml.dump_all(
        docs, Dumper=_Dumper.get(), sort_keys=False, default_flow_style=False, allow_unicode=True, width=100,
        explicit_start=True,
    )
    return "\n".join(header) + "\n" + body


# --------------------------------------------------------------------------------------------------------
# Checks kubernetes-validate does not make


def _parse_quantity(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    match = _QUANTITY_RE.fullmatch(str(value))
    if match is None:
        return None
    number = Fraction(match.group("num"))
    suffix = match.group("suffix") or ""
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]


def _name_problem(name: Any, what: str) -> str | None:
    if not isinstance(name, str) or not name:
        return f"{what} is missing"
    if len(name) > _MAX_NAME:
        return f"{what} {name!r} is {len(name)} characters (at most 63)"
    if not _DNS_LABEL_RE.fullmatch(name):
        return f"{what} {name!r} is not a DNS-1123 label (lower-case letters, digits and '-', alnum at both ends)"
    return None


def _key_problem(key: Any, what: str) -> str | None:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain (<= 253), name <= 63."""
    if not isinstance(key, str) or not key:
        return f"{what} key {key!r} is empty"
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return f"{what} key {key!r} has more than one '/'"
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        return f"{what} key {key!r}: prefix {prefix!r} is not a DNS subdomain"
    if not name or len(name) > _MAX_NAME or not _LABEL_NAME_RE.fullmatch(name):
        return f"{what} key {key!r}: name part must be 1-63 letters, digits, '-', '_' or '.', alnum at both ends"
    return None


def _check_labels(labels: Any, where: str, out: list[str]) -> None:
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        out.append(f"{where}: labels are not a mapping")
        return
    for key, value in labels.items():
        problem = _key_problem(key, "label")
        if problem:
            out.append(f"{where}: {problem}")
        if not isinstance(value, str) or not _label_value_ok(value):
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
            length = f" ({len(value)} characters)" if isinstance(value, str) else ""
            out.append(
                f"{where}: label {key!r} value {shown!r}{length} is not a label value (at most 63 letters, digits, "
                "'-', '_' or '.', alnum at both ends)"
            )


def _check_annotations(annotations: Any, where: str, out: list[str]) -> None:
    if annotations is None:
        return
    if not isinstance(annotations, Mapping):
        out.append(f"{where}: annotations are not a mapping")
        return
    total = 0
    for key, value in annotations.items():
        problem = _key_problem(key, "annotation")
        if problem:
            out.append(f"{where}: {problem}")
        if not isinstance(value, str):
            out.append(f"{where}: annotation {key!r} value is not a string")
        total += len(str(key)) + len(str(value))
    if total > 256 * 1024:
        out.append(f"{where}: annotations total {total} bytes (at most 256 KiB)")


def _check_resources(resources: Any, where: str, out: list[str]) -> None:
    if not resources:
        return
    parsed: dict[str, dict[str, Fraction]] = {}
    for kind in ("requests", "limits"):
        for name, value in (resources.get(kind) or {}).items():
            quantity = _parse_quantity(value)
            if quantity is None or quantity < 0:
                out.append(f"{where}: resources.{kind}.{name} {value!r} is not a Kubernetes quantity (e.g. 4Gi, 512Mi, 2, 500m)")
            else:
                parsed.setdefault(kind, {})[name] = quantity
    for name, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(name)
        if limit is not None and request > limit:
            out.append(f"{where}: resources.requests.{name} is above its limit")


def _check_pod(pod: Any, where: str, allowed_restart: tuple[str, ...], out: list[str], refs: list[tuple[str, str, str]]) -> None:
    if not isinstance(pod, Mapping):
        out.append(f"{where}: no pod spec")
        return
    restart = pod.get("restartPolicy", "Always")
    if restart not in allowed_restart:
        out.append(f"{where}: restartPolicy {restart!r} is not one of {', '.join(allowed_restart)}")
    volumes = pod.get("volumes") or []
    volume_names = set()
    for v in volumes:
        problem = _name_problem(v.get("name"), "volume name")
        if problem:
            out.append(f"{where}: {problem}")
        if v.get("name") in volume_names:
            out.append(f"{where}: volume {v.get('name')!r} is defined twice")
        volume_names.add(v.get("name"))
        empty = v.get("emptyDir")
        if isinstance(empty, Mapping):
            if empty.get("medium", "") not in ("", "Memory"):
                out.append(f"{where}: volume {v.get('name')!r}: emptyDir medium {empty.get('medium')!r} is not '' or 'Memory'")
            if "sizeLimit" in empty and _parse_quantity(empty["sizeLimit"]) is None:
                out.append(f"{where}: volume {v.get('name')!r}: sizeLimit {empty['sizeLimit']!r} is not a Kubernetes quantity")
    pod_security = pod.get("securityContext") or {}
    containers = list(pod.get("initContainers") or []) + list(pod.get("containers") or [])
    if not pod.get("containers"):
        out.append(f"{where}: the pod has no containers")
    seen: set[str] = set()
    for c in containers:
        name = c.get("name")
        cwhere = f"{where} container {name!r}"
        problem = _name_problem(name, "container name")
        if problem:
            out.append(f"{where}: {problem}")
        if name in seen:
            out.append(f"{cwhere}: the name is used twice")
        seen.add(name)
        image = c.get("image")
        if not isinstance(image, str) or not image.strip():
            out.append(f"{cwhere}: no image")
        if c.get("imagePullPolicy", "IfNotPresent") not in ("Always", "IfNotPresent", "Never"):
            out.append(f"{cwhere}: imagePullPolicy {c.get('imagePullPolicy')!r} is not Always, IfNotPresent or Never")
        _check_resources(c.get("resources"), cwhere, out)
        for e in c.get("env") or []:
            if not isinstance(e.get("name"), str) or not _ENV_NAME_RE.fullmatch(e.get("name")):
                out.append(f"{cwhere}: environment variable name {e.get('name')!r} is not valid")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.append((str(ref.get("name")), str(ref.get("key")), f"{cwhere} env {e.get('name')}"))
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volume_names:
                out.append(f"{cwhere}: volumeMount {m.get('name')!r} names no volume of the pod")
        security = {**pod_security, **(c.get("securityContext") or {})}
        if security.get("runAsNonRoot") and security.get("runAsUser") == 0:
            out.append(f"{cwhere}: runAsNonRoot with runAsUser 0 can never start")


def check_manifests(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems in ``docs`` that the OpenAPI schemas (``kubernetes-validate``) let through, one line each:
    names (DNS-1123, <= 63), label keys and values, resource quantities, ``restartPolicy``, container images,
    volume and Secret references. An empty list means none were found."""
    out: list[str] = []
    refs: list[tuple[str, str, str]] = []
    secrets: dict[str, set[str]] = {}
    for doc in docs:
        kind = doc.get("kind", "?")
        meta = doc.get("metadata") or {}
        where = f"{kind}/{meta.get('name', '?')}"
        problem = _name_problem(meta.get("name"), "metadata.name")
        if problem:
            out.append(f"{where}: {problem}")
        if "namespace" in meta:
            problem = _name_problem(meta.get("namespace"), "metadata.namespace")
            if problem:
                out.append(f"{where}: {problem}")
        _check_labels(meta.get("labels"), where, out)
        _check_annotations(meta.get("annotations"), where, out)
        if kind == "Secret":
            keys = set((doc.get("stringData") or {})) | set((doc.get("data") or {}))
            for key in sorted(keys):
                if not _SECRET_KEY_RE.fullmatch(key) or len(key) > 253:
                    out.append(f"{where}: key {key!r} is not a Secret key ([-._a-zA-Z0-9]+)")
            secrets[str(meta.get("name"))] = keys
        elif kind == "Job":
            spec = doc.get("spec") or {}
            template = spec.get("template") or {}
            tmeta = template.get("metadata") or {}
            _check_labels(tmeta.get("labels"), f"{where} pod template", out)
            _check_annotations(tmeta.get("annotations"), f"{where} pod template", out)
            backoff = spec.get("backoffLimit", 6)
            if isinstance(backoff, bool) or not isinstance(backoff, int) or backoff < 0:
                out.append(f"{where}: backoffLimit {backoff!r} is not a whole number >= 0")
            _check_pod(template.get("spec"), where, ("Never", "OnFailure"), out, refs)
        elif kind == "Pod":
            _check_pod(doc.get("spec"), where, ("Always", "OnFailure", "Never"), out, refs)
    for name, key, where in refs:
        if name in secrets and key not in secrets[name]:
            out.append(f"{where}: Secret {name!r} has no key {key!r}")
    return out
