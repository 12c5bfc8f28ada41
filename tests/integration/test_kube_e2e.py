"""``launcher_type: kubernetes`` end to end against the FAKE Kubernetes API (tests/fakes/fake_kube_api.py),
with a fake kubelet that runs each pod's containers for real on the local Docker engine.

No cluster can run on these machines. What this covers: the orchestrator drives KubeLauncher; the Jobs and the
Secret it creates through the API are complete enough to run (the kubelet here knows only the manifest: image,
command, env with ``secretKeyRef``, emptyDirs, user, limits, read-only root); the init container fetches the
runtime into the shared emptyDir, the worker fetches the base over the channel, every task is merged here.
What it does not cover: scheduling, image pulls, a real kubelet's and CNI's behaviour.
"""

from __future__ import annotations

import importlib.util
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.orchestrator import orchestrate

from .test_orchestrator import AGENT, BASE, git, task, write_graph
from .test_remote import bridge_gateway

pytestmark = pytest.mark.docker

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kube_api.py"
_spec = importlib.util.spec_from_file_location("fake_kube_api_e2e", FAKE)
assert _spec and _spec.loader
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

KEY = "sk-ant-kube-e2e-3b1d"


def _memory(quantity: str) -> str:
    for suffix, unit in (("Gi", "g"), ("Mi", "m"), ("Ki", "k")):
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    return quantity


class DockerKubelet:
    """Plays kubelet for the fake API: a pod's init containers, then its worker container, as containers."""

    def __init__(self, client: Any, label: str) -> None:
        self.client = client
        self.label = label

    def __call__(self, api: Any, pod: str, job: dict[str, Any]) -> None:
        try:
            self.run(api, pod, job)
        except Exception as exc:  # noqa: BLE001 - a broken pod, reported as one
            api.write_log(pod, f"fake kubelet: {exc}\n")
            api.terminate(pod, 1)

    def _env(self, api: Any, container: dict[str, Any]) -> dict[str, str]:
        env = {}
        for var in container.get("env") or ():
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                secret = api.secrets[("default", ref["name"])]
                env[var["name"]] = (secret.get("stringData") or {})[ref["key"]]
        return env

    def _start(self, api: Any, pod_spec: dict[str, Any], c: dict[str, Any], volumes: dict[str, str]) -> Any:
        from docker.types import Mount

        ctx = {**(pod_spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
        limits = (c.get("resources") or {}).get("limits") or {}
        return self.client.containers.run(
            c["image"], c.get("command", []) + c.get("args", []), detach=True, environment=self._env(api, c),
            working_dir=c.get("workingDir"), user=f"{ctx.get('runAsUser', 1000)}:{ctx.get('runAsGroup', 1000)}",
            read_only=bool(ctx.get("readOnlyRootFilesystem")), cap_drop=["ALL"], labels={self.label: "1"},
            mem_limit=_memory(limits.get("memory", "512Mi")), init=True,
            mounts=[Mount(m["mountPath"], volumes[m["name"]], type="volume", read_only=bool(m.get("readOnly")), no_copy=True)
                    for m in c.get("volumeMounts") or ()],
        )

    def run(self, api: Any, pod: str, job: dict[str, Any]) -> None:
        spec = job["spec"]["template"]["spec"]
        volumes = {}
        for v in spec.get("volumes") or ():
            vol = self.client.volumes.create(f"kubelet-{uuid.uuid4().hex[:10]}", labels={self.label: "1"})
            volumes[v["name"]] = vol.name
            # an emptyDir is writable by the pod's user: make the fresh volume so
            self.client.containers.run("mahabharatha-base:trixie", ["chmod", "1777", "/v"], remove=True,
                                       mounts=[__import__("docker").types.Mount("/v", vol.name, type="volume")])
        for c in spec.get("initContainers") or ():
            container = self._start(api, spec, c, volumes)
            code = container.wait()["StatusCode"]
            api.write_log(pod, container.logs(), container=c["name"])
            if code != 0:
                api.terminate(pod, code, container=c["name"])
                return
        (worker,) = spec["containers"]
        container = self._start(api, spec, worker, volumes)
        api.run_pod(pod)
        for chunk in container.logs(stream=True, follow=True):
            api.write_log(pod, chunk)
        state = self.client.api.inspect_container(container.id)["State"]
        api.terminate(pod, state["ExitCode"], reason="OOMKilled" if state.get("OOMKilled") else "")


@pytest.fixture
def kubelet(docker_client: Any) -> Any:
    label = f"io.mahabharatha.test.kubelet-{uuid.uuid4().hex[:8]}"
    yield DockerKubelet(docker_client, label)
    for c in docker_client.containers.list(all=True, filters={"label": label}):
        c.remove(force=True, v=True)
    for v in docker_client.volumes.list(filters={"label": label}):
        v.remove(force=True)


def test_three_levels_as_kubernetes_jobs(git_repo: Path, make_plan: Any, docker_client: Any, kubelet: Any) -> None:
    import kubernetes.client

    graph = write_graph(git_repo, [
        task("A", 1, create=("src/a.py",), verify="test -f src/a.py"),
        task("B", 1, create=("src/b.py",)),
        task("D", 2, ("A", "B"), create=("src/d.py",), modify=("src/a.py",)),
        task("F", 3, ("D",), modify=("README.md",), verify="grep -q 'task F' README.md"),
    ])
    config = (f"workers:\n  agent_command: {AGENT}\n  launcher_type: kubernetes\n"
              "resources:\n  container_memory_limit: 256m\n  container_cpu_limit: 1.0\n")
    plan = make_plan(2, config=config, mode="kubernetes",
                     environ={"MAHABHARATHA_CHANNEL_ADDRESS": bridge_gateway(docker_client), "ANTHROPIC_API_KEY": KEY})
    assert plan.mode == "kubernetes" and plan.transport == "remote"
    with fake.FakeKubeAPI() as api:
        api.on_job = lambda a, pod, job: threading.Thread(target=kubelet, args=(a, pod, job), daemon=True).start()
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url))
        lines: list[str] = []
        result = orchestrate(plan, graph, out=lines.append, client=client)
        assert (result.status, result.exit_code) == ("done", 0), lines
        assert not api.jobs and not api.secrets  # the run removed what it made
    assert {"src/a.py", "src/b.py", "src/d.py"} <= set(git(git_repo, "ls-tree", "-r", "--name-only", BASE).splitlines())
    assert "task D" in git(git_repo, "show", f"{BASE}:src/a.py")
    assert KEY not in "\n".join(lines)
