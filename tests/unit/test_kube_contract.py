"""API-contract tests of :class:`mahabharatha.edge.kube.KubeLauncher` against a FAKE Kubernetes API server.

The fake (tests/fakes/fake_kube_api.py) is a real HTTP server on 127.0.0.1 that implements only the endpoints
the launcher uses, with the API's shapes; the test plays kubelet by hand (a pod runs, prints, ends, is
deleted). These tests check the requests the executor sends (the Secret with the real values, the Jobs as
``render_k8s`` renders them, deletions by uid and label) and how it reads the answers (ready line, exit code,
OOMKilled, a pod gone). They are not a cluster: scheduling, image pulls and the kubelet are not exercised.
"""

from __future__ import annotations

import copy
import importlib.util
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes.client
import msgspec
import pytest

import mahabharatha
from mahabharatha.core.render_k8s import job_name, render_k8s, run_selector, secret_name
from mahabharatha.edge.kube import KubeLauncher
from mahabharatha.errors import LaunchError
from mahabharatha.worker.protocol import ready_line

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kube_api.py"
_spec = importlib.util.spec_from_file_location("fake_kube_api", FAKE)
assert _spec and _spec.loader
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)

KEY = "sk-ant-api03-" + "KubeContractSecret" * 3
TOKENS = {n: f"tok{n}-" + "ChannelTokenSecret" * 2 for n in range(4)}
URL = "tcp://10.9.8.1:40123"
ENVIRON = {"DOCKER_HOST": "tcp://10.9.8.7:2375", "ANTHROPIC_API_KEY": KEY, "MAHABHARATHA_CHANNEL_ADDRESS": "10.9.8.1:7391"}
WAIT = 5.0


@pytest.fixture
def api() -> Iterator[Any]:
    with fake.FakeKubeAPI() as server:
        yield server


class Run:
    """A remote plan, a launcher on the fake API, and what it reported (events, out lines)."""

    def __init__(self, api: Any, repo: Path, workers: int, timeout_s: float, **kwargs: Any) -> None:
        plan = mahabharatha.plan(repo, feature="feat", workers=workers, mode="container", environ=ENVIRON,
                                 home=repo.parent / "home")
        specs = tuple(msgspec.structs.replace(s, ready_timeout_s=timeout_s, start_timeout_s=timeout_s) for s in plan.workers)
        self.plan = msgspec.structs.replace(plan, workers=specs)
        self.api = api
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.lines: list[str] = []
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url))
        link = SimpleNamespace(url=URL, token=TOKENS.__getitem__)
        self.launcher = KubeLauncher(self.plan, self.events, self.lines.append, link=link, api_client=client, **kwargs)

    def pod(self, wid: int = 0) -> str:
        return self.api.wait_pod(job_name(self.plan, wid))

    def die(self) -> tuple[Any, ...]:
        return self.events.get(timeout=WAIT)

    def logs(self) -> str:
        return "".join(Path(s.log_path).read_text() for s in self.plan.workers if Path(s.log_path).exists())

    def everything_shown(self) -> str:
        """All a user could see: the host logs and the launcher's out lines."""
        return self.logs() + "\n".join(self.lines)


@pytest.fixture
def run(api: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[Run] = []

    def make(workers: int = 1, timeout_s: float = WAIT, **kwargs: Any) -> Run:
        repo = tmp_path / f"repo{len(made)}" / "app"
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo.parent / "home").mkdir()
        r = Run(api, repo, workers, timeout_s, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.launcher.close(success=True)


def ready(api: Any, pod: str, job: dict[str, Any]) -> None:
    """The fake kubelet: the bootstrap ran, the worker starts, prints the key it got, then its ready line."""
    wid = int(job["metadata"]["labels"]["io.mahabharatha/worker"])
    api.run_pod(pod)
    api.write_log(pod, f"worker {wid} starting with ANTHROPIC_API_KEY={KEY} token={TOKENS[wid]}\n")
    api.write_log(pod, ready_line(wid) + "\n")


def started(r: Run, on_job: Any = ready) -> Run:
    r.api.on_job = on_job
    r.launcher.start_all()
    return r


# --------------------------------------------------------------------------------------------------------


def test_start_all_creates_the_secret_with_real_values_and_the_rendered_jobs(api, run):
    r = started(run(workers=2))
    (secret_post,) = api.requests_to("POST", "/secrets")
    assert secret_post["path"] == "/api/v1/namespaces/default/secrets"
    body = secret_post["body"]
    assert body["metadata"]["name"] == secret_name(r.plan)
    assert body["stringData"] == {"ANTHROPIC_API_KEY": KEY, "channel-token-0": TOKENS[0], "channel-token-1": TOKENS[1]}
    jobs = sorted((req["body"] for req in api.requests_to("POST", "/jobs")), key=lambda b: b["metadata"]["name"])
    assert jobs == render_k8s(r.plan, channel_url=URL)[1:]  # exactly what --render k8s shows, with the real URL
    assert {r.launcher.current(n) for n in (0, 1)} == {j["metadata"]["uid"] for j in api.jobs.values()}
    # The workers' logs reached the host logs, with every secret redacted, and nothing else shows one.
    shown = r.everything_shown()
    assert ready_line(0) in shown and ready_line(1) in shown
    assert "ANTHROPIC_API_KEY=sk-ant-…(redacted) token=…(redacted)" in shown
    assert KEY not in shown and not any(t in shown for t in TOKENS.values())
    logs = api.requests_to("GET", "/log")
    assert {q["query"]["container"] for q in logs} == {"bootstrap", "worker"}
    assert all(q["query"]["follow"] == "true" for q in logs if q["query"]["container"] == "worker")


def test_ready_means_the_ready_line_not_a_running_pod(api, run):
    r = run()

    def slow(api_: Any, pod: str, _job: Any) -> None:
        api_.run_pod(pod)
        api_.write_log(pod, "cloning the base commit...\n")

    api.on_job = slow
    done = threading.Event()
    threading.Thread(target=lambda: (r.launcher.start_all(), done.set()), daemon=True).start()
    pod = r.pod()
    assert not done.wait(0.5)  # running, but it has not announced itself
    api.write_log(pod, ready_line(0) + "\n")
    assert done.wait(WAIT)
    assert "cloning the base commit" in r.logs()


def test_exit_0_is_reported_once_as_a_die_event(api, run):
    r = started(run())
    uid = r.launcher.current(0)
    api.terminate(r.pod(), 0)
    assert r.die() == ("die", 0, uid)
    assert r.launcher.exit_of(uid) == (0, False, False)
    assert r.launcher.poll_exits({0: uid}) == [(0, 0, False, False)]
    with pytest.raises(queue.Empty):
        r.events.get(timeout=0.3)


def test_oom_killed_is_137_with_oom(api, run):
    r = started(run())
    uid = r.launcher.current(0)
    api.terminate(r.pod(), 137, reason="OOMKilled")
    assert r.die() == ("die", 0, uid)
    assert r.launcher.exit_of(uid) == (137, True, False)


def test_a_pod_deleted_behind_our_back_is_lost(api, run):
    r = started(run())
    uid = r.launcher.current(0)
    api.delete_pod(r.pod())
    assert r.die() == ("die", 0, uid)
    assert r.launcher.exit_of(uid) == (None, False, True)
    assert r.launcher.poll_exits({0: uid}) == [(0, None, False, True)]


def test_stop_deletes_the_job_in_the_foreground_and_the_worker_exits_130(api, run):
    r = started(run(workers=2))
    uid = r.launcher.current(1)
    r.launcher.stop(1)  # returns at once; the end comes as an event
    assert r.die() == ("die", 1, uid)
    assert r.launcher.exit_of(uid) == (130, False, False)  # we asked: not "lost"
    (delete,) = api.requests_to("DELETE", f"/jobs/{job_name(r.plan, 1)}")
    assert delete["body"]["propagationPolicy"] == "Foreground" and delete["body"]["preconditions"] == {"uid": uid}
    assert r.launcher.poll_exits({0: r.launcher.current(0)}) == []  # the other one still runs


def test_restart_replaces_the_job_and_waits_for_the_new_worker(api, run):
    r = started(run())
    old = r.launcher.current(0)
    api.terminate(r.pod(), 2)
    assert r.die() == ("die", 0, old)
    r.launcher.restart(0)
    new = r.launcher.current(0)
    assert new != old and api.jobs[("default", job_name(r.plan, 0))]["metadata"]["uid"] == new
    assert len(api.requests_to("POST", "/jobs")) == 2
    assert r.logs().count(ready_line(0)) == 2  # both runs of the worker, appended to one log


def test_stop_all_ends_every_worker(api, run):
    r = started(run(workers=3))
    uids = {n: r.launcher.current(n) for n in range(3)}
    r.launcher.stop_all(timeout=WAIT)
    assert not api.jobs
    dies = {r.die() for _ in range(3)}
    assert dies == {("die", n, uid) for n, uid in uids.items()}
    assert [r.launcher.exit_of(uids[n]) for n in range(3)] == [(130, False, False)] * 3


def test_close_removes_the_jobs_and_the_secret_by_label(api, run):
    r = started(run(workers=2))
    assert api.jobs and api.secrets
    r.launcher.close(success=True)
    assert not api.jobs and not api.secrets and not api.pods
    r.launcher._watcher.join(timeout=WAIT)
    assert not r.launcher._watcher.is_alive()  # closing stops the watch
    deletes = [q for q in api.requests if q["method"] == "DELETE" and q["path"].endswith(("/jobs", "/secrets"))]
    assert {q["query"]["labelSelector"] for q in deletes} == {run_selector(r.plan)}


def test_keep_failed_keeps_the_jobs_but_never_the_secret(api, run):
    r = started(run(keep_failed=True))
    r.launcher.close(success=False)
    assert api.jobs and not api.secrets


def test_a_stale_job_of_the_feature_is_replaced(api, run):
    r = run()
    stale = api.add_job(render_k8s(r.plan, channel_url=URL)[1])
    started(r)
    assert r.launcher.current(0) != stale["metadata"]["uid"]
    (delete,) = api.requests_to("DELETE", f"/jobs/{job_name(r.plan, 0)}")
    assert delete["body"]["preconditions"] == {"uid": stale["metadata"]["uid"]}


def test_someone_elses_job_of_the_same_name_is_refused(api, run):
    r = run()
    theirs = render_k8s(r.plan, channel_url=URL)[1]
    theirs["metadata"]["labels"] = {"app": "theirs"}
    api.add_job(theirs)
    with pytest.raises(LaunchError, match="not make for this repository and feature; not replacing it") as info:
        started(r)
    assert "\n" not in str(info.value)
    assert api.jobs[("default", job_name(r.plan, 0))]["metadata"]["labels"] == {"app": "theirs"}


def test_a_bootstrap_that_fails_fails_the_start_with_its_words(api, run):
    r = run(workers=2)

    def refused(api_: Any, pod: str, job: dict[str, Any]) -> None:
        if job["metadata"]["labels"]["io.mahabharatha/worker"] == "1":
            return ready(api_, pod, job)
        api_.write_log(pod, f"bootstrap: the orchestrator refused: bad token {TOKENS[0]}\n", container="bootstrap")
        api_.terminate(pod, 1, container="bootstrap")

    with pytest.raises(LaunchError) as info:
        started(r, refused)
    message = str(info.value)
    assert f"Worker process failed to start in {job_name(r.plan, 0)}: the pod ended with code 1" in message
    assert "bootstrap: the orchestrator refused: bad token …(redacted)" in message
    assert TOKENS[0] not in message + r.everything_shown()
    assert not api.jobs  # the failed start removed the Jobs it made


def test_an_image_that_cannot_be_named_fails_at_once(api, run):
    r = run(timeout_s=30.0)
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="bootstrap waiting: InvalidImageName: bad ref"):
        started(r, lambda api_, pod, _job: api_.set_waiting(pod, "InvalidImageName", "bad ref"))
    assert time.monotonic() - t0 < 5


def test_a_pod_that_never_runs_times_out_naming_its_state(api, run):
    r = run(timeout_s=0.5)
    with pytest.raises(LaunchError, match=r"was not running after 0 s \(Pending: bootstrap waiting: ImagePullBackOff"):
        started(r, lambda api_, pod, _job: api_.set_waiting(pod, "ImagePullBackOff", 'pulling "mahabharatha-worker"'))


def test_an_answer_older_than_what_the_watch_saw_is_ignored(api, run):
    """A list (poll_exits, exit_of) may answer from before a watch event: the pod's end must not be undone."""
    r = started(run())
    uid, pod = r.launcher.current(0), r.pod()
    running = copy.deepcopy(api.pods[("default", pod)])
    api.terminate(pod, 3)
    assert r.die() == ("die", 0, uid)
    r.launcher._record(running, False)  # the view of a moment ago, arriving late (the cache is what exits read)
    assert r.launcher._exit_known(uid) == (3, False, False)
    running["metadata"]["resourceVersion"] = "not-a-number"  # opaque versions: a pod's life still only goes forward
    r.launcher._record(running, False)
    assert r.launcher._exit_known(uid) == (3, False, False)


def test_a_local_plan_is_refused(api, tmp_path):
    repo = tmp_path / "app"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    local = mahabharatha.plan(repo, feature="feat", mode="container", environ={"ANTHROPIC_API_KEY": KEY}, home=tmp_path)
    with pytest.raises(LaunchError, match="Kubernetes needs workers.transport: remote"):
        KubeLauncher(local, queue.Queue(), print, link=SimpleNamespace(url=URL, token=TOKENS.__getitem__),
                     api_client=kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url)))


def test_an_unreachable_api_is_one_line(tmp_path):
    repo = tmp_path / "app"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    plan = mahabharatha.plan(repo, feature="feat", workers=1, mode="container", environ=ENVIRON, home=tmp_path)
    config = kubernetes.client.Configuration(host="http://127.0.0.1:9")  # nothing listens there
    config.retries = 0
    lines: list[str] = []
    launcher = KubeLauncher(plan, queue.Queue(), lines.append, link=SimpleNamespace(url=URL, token=TOKENS.__getitem__),
                            api_client=kubernetes.client.ApiClient(config))
    try:
        with pytest.raises(LaunchError, match=r"cannot reach the Kubernetes API at http://127.0.0.1:9 \(.*refused\)") as info:
            launcher.start_all()
        assert "\n" not in str(info.value) and KEY not in str(info.value)
    finally:
        launcher.close(success=False)
    # Cleanup could not reach it either: said once per kind, with the selector to clean up by hand.
    assert [line.split(" (")[0] for line in lines] == ["could not remove the run's Jobs", "could not remove the run's Secret"]
    assert all(run_selector(plan) in line for line in lines)


def test_cleanup_removes_a_kubernetes_runs_jobs_and_secret_by_label(api, tmp_path, monkeypatch):
    """`mahabharatha cleanup` of a repository whose config runs Kubernetes Jobs: what a run that died left (its
    Jobs and Secret) is deleted by label through the API kubeconfig names (here the fake's); nothing else."""
    from mahabharatha.cli import main

    repo = tmp_path / "app"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".mahabharatha").mkdir()
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  launcher_type: kubernetes\n  channel_address: 10.9.8.1\n  kubernetes_namespace: default\n")
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{api.url}'}}}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: me}}]\nusers: [{name: me, user: {token: t}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    plan = mahabharatha.plan(repo, feature="feat", environ={}, home=tmp_path)
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url))
    secret, *jobs = render_k8s(plan, channel_url=URL)
    kubernetes.client.CoreV1Api(client).create_namespaced_secret("default", secret)
    for job in jobs:
        kubernetes.client.BatchV1Api(client).create_namespaced_job("default", job)
    api.add_job({"metadata": {"name": "someone-else", "labels": {"app": "other"}}, "spec": {"template": {"spec": {}}}})
    assert main(["cleanup", "feat", "--repo", str(repo)]) == 0
    assert not api.secrets and [name for _, name in api.jobs] == ["someone-else"]
