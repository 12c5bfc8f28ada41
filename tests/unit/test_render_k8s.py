"""Kubernetes manifests of a remote plan: valid by the API schemas (kubernetes-validate, strict) and by our own
checks (what the schemas let through), shaped as the executor needs, deterministic, never holding a secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import mahabharatha
from mahabharatha.core.auth import discover_auth
from mahabharatha.core.config import load_config, safe_name_problem
from mahabharatha.core.engine import EngineTarget
from mahabharatha.core.plan import build_plan
from mahabharatha.core.render_k8s import (
    ANNOTATION_REPO,
    K8S_LABEL_REPO_HASH,
    SECRET_PLACEHOLDER,
    check_manifests,
    cpu_quantity,
    dns_name,
    job_name,
    memory_quantity,
    render_k8s,
    render_k8s_yaml,
    run_selector,
    secret_name,
)
from mahabharatha.errors import ConfigError

K8S_VERSION = "1.30"  # kubernetes-validate ships schemas 1.25-1.37; one fixed version keeps results stable
KEY = "sk-ant-api03-" + "RenderK8sSecret" * 3
ENVIRON = {"DOCKER_HOST": "tcp://10.9.8.7:2375", "ANTHROPIC_API_KEY": KEY, "MAHABHARATHA_CHANNEL_ADDRESS": "10.9.8.1:7391"}
REMOTE = EngineTarget(host="tcp://10.9.8.7:2375", source="DOCKER_HOST", transport="remote")


def validate(docs):
    """Every document valid for the API server's schema (strict: no unknown fields) and for check_manifests."""
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # the full message quotes the whole schema
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert check_manifests(docs) == []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (tmp_path / "home").mkdir()
    return root


def remote_plan(repo: Path, workers: int = 3, **environ: str):
    return mahabharatha.plan(repo, feature="user-auth", workers=workers, mode="container",
                             environ={**ENVIRON, **environ}, home=repo.parent / "home")


def pure_plan(*, workers=2, prefix="mahabharatha-worker", feature="user-auth", memory="4g", cpus=2.0,
              address="10.9.8.1:7391", uid=1000, gid=1000, key=KEY, repo="/home/u/src/app", readonly=True):
    auth, secrets = discover_auth(environ={"ANTHROPIC_API_KEY": key}, dotenv_text=None, dotenv_path=f"{repo}/.env",
                                  home="/home/u", has_claude_dir=False, has_claude_json=False)
    config = load_config("c", None, {}, {
        "workers.launcher_type": "container", "workers.channel_address": address, "workers.container_prefix": prefix,
        "resources.container_memory_limit": memory, "resources.container_cpu_limit": cpus,
        "workers.max_concurrent": workers, "security.container_readonly": readonly,
    })
    return build_plan(repo=repo, feature=feature, config=config, auth=auth, secrets=secrets, uid=uid, gid=gid,
                      worker_runtime_dir="/opt/lib/mahabharatha/worker", engine=REMOTE)


def pod(job):
    return job["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --------------------------------------------------------------------------------------------------------


def test_a_remote_plan_renders_a_secret_and_one_valid_job_per_worker(repo):
    p = remote_plan(repo, workers=3)
    docs = render_k8s(p, namespace="ci")
    validate(docs)
    assert [d["kind"] for d in docs] == ["Secret", "Job", "Job", "Job"]
    assert [d["metadata"]["name"] for d in docs[1:]] == [f"mahabharatha-worker-user-auth-{n}" for n in range(3)]
    assert {d["metadata"]["namespace"] for d in docs} == {"ci"}
    assert KEY not in repr(docs) and KEY not in render_k8s_yaml(p, namespace="ci")


def test_the_job_is_shaped_for_one_run_of_a_hardened_worker(repo):
    p = remote_plan(repo, workers=2)
    secret, job = render_k8s(p)[0], render_k8s(p)[2]
    spec = pod(job)
    assert job["spec"]["backoffLimit"] == 0 and spec["restartPolicy"] == "Never"
    assert "activeDeadlineSeconds" not in job["spec"]  # workers.timeout_minutes bounds a task, not a worker
    assert spec["automountServiceAccountToken"] is False and spec["shareProcessNamespace"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (init,), (worker,) = spec["initContainers"], spec["containers"]
    for c in (init, worker):
        assert c["image"] == p.image and c["imagePullPolicy"] == "IfNotPresent"
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["resources"] == {"requests": {"memory": "4Gi", "cpu": "2"}, "limits": {"memory": "4Gi", "cpu": "2"}}
    # The init container is the plan's bootstrap, only fetching the runtime into the shared emptyDir ...
    assert init["command"] == list(p.workers[1].command)
    init_env = env_of(init)
    assert init_env["MAHABHARATHA_BOOTSTRAP_ONLY"] == "1" and init_env["MAHABHARATHA_RUNTIME_DIR"] == "/opt/mahabharatha/lib"
    assert init_env["MAHABHARATHA_CHANNEL"] == "tcp://10.9.8.1:7391"
    assert "ANTHROPIC_API_KEY" not in init_env  # it needs its channel token only
    # ... and the worker runs it from there, read-only.
    assert worker["command"] == ["python3", "-m", "mahabharatha_worker"]
    env = env_of(worker)
    assert env["PYTHONPATH"] == "/opt/mahabharatha/lib" and env["ZERG_WORKER_ID"] == "1"
    ref = {"name": secret_name(p)}
    assert env["ANTHROPIC_API_KEY"] == {"secretKeyRef": {**ref, "key": "ANTHROPIC_API_KEY"}}
    assert env["MAHABHARATHA_CHANNEL_TOKEN"] == init_env["MAHABHARATHA_CHANNEL_TOKEN"] == {
        "secretKeyRef": {**ref, "key": "channel-token-1"}}
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert set(mounts) == {"/workspace", "/tmp", "/home/worker", "/run", "/opt/mahabharatha/lib"}
    assert mounts["/opt/mahabharatha/lib"]["readOnly"] is True
    volumes = {v["name"]: v["emptyDir"] for v in spec["volumes"]}
    assert volumes["tmp"] == {"medium": "Memory", "sizeLimit": "512Mi"} and volumes["workspace"] == {}
    # One Secret of placeholders: the credential by name, a token per worker.
    assert secret["stringData"] == {
        "ANTHROPIC_API_KEY": SECRET_PLACEHOLDER.format(source="environment"),
        "channel-token-0": "<made when the run starts>", "channel-token-1": "<made when the run starts>",
    }


def test_labels_are_kubernetes_labels_and_the_repository_is_an_annotation(repo):
    p = remote_plan(repo, workers=1)
    secret, job = render_k8s(p)
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == labels["app.kubernetes.io/managed-by"] == "mahabharatha"
    assert labels["io.mahabharatha/managed"] == "true" and labels["io.mahabharatha/feature"] == "user-auth"
    assert labels["io.mahabharatha/worker"] == "0" and labels["io.mahabharatha/plan"] == p.plan_id
    assert "io.mahabharatha/repo" not in labels and len(labels[K8S_LABEL_REPO_HASH]) == 16
    assert job["metadata"]["annotations"][ANNOTATION_REPO] == p.repo == secret["metadata"]["annotations"][ANNOTATION_REPO]
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    # The executor finds everything of this repository's feature by one selector.
    selector = dict(part.split("=") for part in run_selector(p).split(","))
    assert all(labels[k] == v and secret["metadata"]["labels"][k] == v for k, v in selector.items())
    assert set(selector) == {"io.mahabharatha/managed", K8S_LABEL_REPO_HASH, "io.mahabharatha/feature"}


def test_yaml_is_deterministic_and_reads_back_as_the_documents(repo):
    p = remote_plan(repo, workers=2)
    text = render_k8s_yaml(p)
    assert text == render_k8s_yaml(remote_plan(repo, workers=2))
    assert list(yaml.safe_load_all(text)) == render_k8s(p)
    assert "&id" not in text and "*id" not in text  # no anchors: each document reads on its own
    assert text.startswith("# mahabharatha plan ")


def test_a_root_user_runs_as_1000_and_the_manifest_says_so():
    job = render_k8s(pure_plan(uid=0, gid=0))[1]
    context = pod(job)["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (1000, 1000, True)
    assert "runAsNonRoot forbids uid 0" in job["metadata"]["annotations"]["io.mahabharatha/note-user"]
    kept = render_k8s(pure_plan(uid=1234, gid=2345))[1]
    assert pod(kept)["securityContext"]["runAsUser"] == 1234 and pod(kept)["securityContext"]["runAsGroup"] == 2345
    assert "io.mahabharatha/note-user" not in kept["metadata"]["annotations"]


def test_port_0_is_a_placeholder_until_the_executor_gives_the_url():
    p = pure_plan(address="10.9.8.1")
    assert p.channel.port == 0
    job = render_k8s(p)[1]
    assert env_of(pod(job)["containers"][0])["MAHABHARATHA_CHANNEL"] == "tcp://10.9.8.1:<port chosen at launch>"
    assert "chosen when the run starts" in job["metadata"]["annotations"]["io.mahabharatha/channel"]
    assert "port is chosen at launch" in render_k8s_yaml(p)
    launched = render_k8s(p, channel_url="tcp://10.9.8.1:40123")[1]
    assert env_of(pod(launched)["containers"][0])["MAHABHARATHA_CHANNEL"] == "tcp://10.9.8.1:40123"
    assert env_of(pod(launched)["initContainers"][0])["MAHABHARATHA_CHANNEL"] == "tcp://10.9.8.1:40123"
    assert "io.mahabharatha/channel" not in launched["metadata"]["annotations"]


def test_a_local_plan_is_refused_in_one_line(repo):
    local = mahabharatha.plan(repo, feature="user-auth", mode="container", environ={"ANTHROPIC_API_KEY": KEY},
                              home=repo.parent / "home")
    with pytest.raises(ConfigError, match="Kubernetes needs workers.transport: remote") as info:
        render_k8s(local)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="namespace"):
        render_k8s(pure_plan(), namespace="Not_A_Namespace")


def test_without_a_read_only_root_the_workspace_is_still_an_emptydir():
    job = render_k8s(pure_plan(readonly=False))[1]
    validate([job])
    assert [v["name"] for v in pod(job)["volumes"]] == ["workspace", "runtime"]
    assert pod(job)["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False


@pytest.mark.parametrize(("size", "quantity"), [
    (4 << 30, "4Gi"), (1536 << 20, "1536Mi"), (512 << 20, "512Mi"), ((6 << 20) + 1, str((6 << 20) + 1)),
])
def test_memory_quantities(size, quantity):
    assert memory_quantity(size) == quantity


@pytest.mark.parametrize(("cpus", "quantity"), [(2.0, "2"), (0.25, "250m"), (1.5, "1500m"), (0.01, "10m"), (64.0, "64")])
def test_cpu_quantities(cpus, quantity):
    assert cpu_quantity(cpus) == quantity


def test_names_are_dns_labels_and_never_shared():
    assert dns_name("mahabharatha-worker-feat", "-0") == "mahabharatha-worker-feat-0"
    upper, lower = dns_name("w-Feat", "-0"), dns_name("w-feat", "-0")
    assert upper != lower and upper.startswith("w-feat-") and upper == upper.lower()
    long = dns_name("p" * 40 + "-" + "f" * 40, "-123")
    assert len(long) == 63 and long.endswith("-123") and long != dns_name("p" * 40 + "-" + "f" * 41, "-123")
    p = pure_plan(prefix="My_Workers", feature="Feature.X_1", workers=2)
    validate(render_k8s(p))
    assert job_name(p, 0) != job_name(p, 1) and len(secret_name(p)) <= 63


# --------------------------------------------------------------------------------------------------------
# Property: any plan the config accepts renders valid, deterministic manifests without its secrets.

_names = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", fullmatch=True).filter(lambda n: safe_name_problem(n) is None)
_memory = st.one_of(
    st.sampled_from(["4g", "512m", "1.5g", "4GiB", "6m", "2.25g"]),
    st.integers(min_value=6 << 20, max_value=1 << 40).map(str),
)
_cpus = st.floats(min_value=0.01, max_value=64, allow_nan=False).map(lambda c: round(c, 3))
_secret = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=24, max_size=60)


@settings(max_examples=20, deadline=None)
@given(workers=st.integers(1, 6), prefix=_names, feature=_names, memory=_memory, cpus=_cpus, key=_secret,
       uid=st.sampled_from([0, 1000, 4242]), address=st.sampled_from(["10.9.8.1:7391", "10.9.8.1", "[fd00::1]:7391"]))
def test_property_valid_deterministic_one_job_per_worker_no_secret(workers, prefix, feature, memory, cpus, key, uid, address):
    def make():
        return pure_plan(workers=workers, prefix=prefix, feature=feature, memory=memory, cpus=cpus, key=key, uid=uid,
                         gid=uid, address=address)

    p = make()
    docs = render_k8s(p)
    validate(docs[:2])  # the schemas: the Secret and a Job (the other Jobs differ in names and values only) ...
    assert check_manifests(docs) == []  # ... our checks: every document
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert len(jobs) == workers == len({j["metadata"]["name"] for j in jobs})
    assert render_k8s(make()) == docs  # the same inputs, the same manifests (and so the same YAML bytes)
    text = render_k8s_yaml(p)
    assert key not in text and key not in repr(docs)


# --------------------------------------------------------------------------------------------------------
# What kubernetes-validate lets through and check_manifests does not.


def _broken(change):
    job = render_k8s(pure_plan(workers=1))[1]
    change(job)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # the schemas accept it ...
    return check_manifests([job])  # ... our checks do not


def test_check_catches_a_misspelt_restart_policy():
    problems = _broken(lambda job: pod(job).update(restartPolicy="Nevr"))
    assert any("restartPolicy 'Nevr'" in p for p in problems)


def test_check_catches_a_docker_memory_size():
    problems = _broken(lambda job: pod(job)["containers"][0]["resources"]["limits"].update(memory="4gb"))
    assert any("resources.limits.memory '4gb' is not a Kubernetes quantity" in p for p in problems)


def test_check_catches_a_container_without_an_image():
    problems = _broken(lambda job: pod(job)["containers"][0].pop("image"))
    assert any("container 'worker': no image" in p for p in problems)


def test_check_catches_an_upper_case_name():
    problems = _broken(lambda job: job["metadata"].update(name="Mahabharatha-Worker-0"))
    assert any("'Mahabharatha-Worker-0' is not a DNS-1123 label" in p for p in problems)


def test_check_catches_a_64_character_label_value():
    problems = _broken(lambda job: job["metadata"]["labels"].update({"io.mahabharatha/feature": "f" * 64}))
    assert any("(64 characters) is not a label value" in p for p in problems)


def test_check_catches_a_missing_secret_key_and_root_with_run_as_non_root():
    docs = render_k8s(pure_plan(workers=1))
    del docs[0]["stringData"]["channel-token-0"]
    pod(docs[1])["securityContext"]["runAsUser"] = 0
    problems = check_manifests(docs)
    assert any("has no key 'channel-token-0'" in p for p in problems)
    assert any("runAsNonRoot with runAsUser 0" in p for p in problems)
