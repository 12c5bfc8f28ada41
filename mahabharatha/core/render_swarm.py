"""The Docker Swarm view of a plan: one Engine API ``ServiceSpec`` per worker (what ``POST /services/create``
receives). Pure.

:class:`mahabharatha.edge.swarm.SwarmLauncher` sends exactly these bodies, with three values filled in at launch
(shown here as placeholders): the image's id (services name the image by id, so nodes never pull a tag), the
worker's channel token secret (a Swarm secret made for the run) and the channel's port when the plan says 0.
No credential appears: they reach workers over the channel (see :mod:`mahabharatha.worker.bootstrap`).
"""

from __future__ import annotations

import json
from typing import Any

from ..worker import protocol as P
from .memory import parse_memory
from .model import LaunchPlan, WorkerSpec

__all__ = ["service_spec", "render_swarm", "render_swarm_json", "IMAGE_PLACEHOLDER", "SECRET_PLACEHOLDER", "STOP_GRACE_NS"]

IMAGE_PLACEHOLDER = "<id of {image} on the manager, at launch>"
SECRET_PLACEHOLDER = "<made at launch>"
STOP_GRACE_NS = 30 * 10**9


def _tmpfs(target: str, options: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for opt in options.split(","):
        key, _, value = opt.partition("=")
        if key == "size":
            opts["SizeBytes"] = parse_memory(value)[1]
        elif key == "mode":
            opts["Mode"] = int(value, 8)
    return {"Target": target, "Type": "tmpfs", "ReadOnly": False, **({"TmpfsOptions": opts} if opts else {})}


def service_spec(spec: WorkerSpec, *, image: str | None = None, token_secret: tuple[str, str] | None = None) -> dict[str, Any]:
    """The ServiceSpec of one worker. ``image`` (an image id) and ``token_secret`` (the Swarm secret's id and
    name) are what the launcher fills in; without them the placeholders stand."""
    uid, _, gid = spec.user.partition(":")
    secret_id, secret_name = token_secret or (SECRET_PLACEHOLDER, SECRET_PLACEHOLDER)
    container: dict[str, Any] = {
        "Image": image or IMAGE_PLACEHOLDER.format(image=spec.image),
        "Command": list(spec.command),
        "Env": [f"{e.name}={e.value}" for e in spec.environment],
        "Dir": spec.working_dir,
        "User": spec.user,
        "Labels": spec.label_dict(),
        "Mounts": [_tmpfs(t.target, t.options) for t in spec.tmpfs]
        + [{"Target": target, "Type": "volume", "ReadOnly": False} for target in spec.volumes],
        "Secrets": [{
            "SecretID": secret_id, "SecretName": secret_name,
            "File": {"Name": P.ENV_CHANNEL_TOKEN, "UID": uid, "GID": gid or uid, "Mode": 0o400},
        }],
        "ReadOnly": spec.read_only,
        "Init": spec.init,
        "StopGracePeriod": STOP_GRACE_NS,
    }
    if spec.cap_drop:
        container["CapabilityDrop"] = list(spec.cap_drop)
    limits: dict[str, Any] = {"NanoCPUs": round(spec.cpus * 1e9), "MemoryBytes": spec.mem_limit_bytes}
    if spec.pids_limit:
        limits["Pids"] = spec.pids_limit
    return {
        "Name": spec.name,
        "Labels": spec.label_dict(),
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {"Limits": limits},
            "RestartPolicy": {"Condition": "none"},  # the orchestrator decides restarts
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def render_swarm(plan: LaunchPlan) -> list[dict[str, Any]]:
    return [service_spec(spec) for spec in plan.workers]


def render_swarm_json(plan: LaunchPlan) -> str:
    """The service specs as one JSON document (sorted keys, the same bytes for the same plan)."""
    return json.dumps(render_swarm(plan), indent=2, sort_keys=True) + "\n"
