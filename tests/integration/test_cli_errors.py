"""Hostile states against the real engine and real git: the CLI says what is wrong in one line, exits non-zero,
and leaves no container behind and no work lost."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.model import LABEL_REPO

pytestmark = pytest.mark.docker

GRAPH = {
    "feature": "feat",
    "tasks": [
        {"id": "A", "level": 1, "files": {"create": ["a.txt"]}},
        {"id": "B", "level": 2, "dependencies": ["A"], "files": {"create": ["b.txt"]}},
    ],
}


def _setup(repo: Path, *, image: str, prefix: str, graph: dict[str, Any] = GRAPH) -> None:
    spec = repo / ".gsd" / "specs" / "feat"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "task-graph.json").write_text(json.dumps(graph))
    (repo / ".gsd" / ".current-feature").write_text("feat\n")
    (repo / ".mahabharatha").mkdir(exist_ok=True)
    (repo / ".mahabharatha" / "config.yaml").write_text(
        "workers:\n  max_concurrent: 1\n  launcher_type: container\n"
        f"  container_prefix: {prefix}\n  agent_command: python3 -m mahabharatha_worker.scripted_agent\n"
        f"resources:\n  container_image: {image}\n  container_memory_limit: 256m\n  container_cpu_limit: 0.5\n"
    )


def _containers(client: Any, repo: Path) -> list[dict[str, Any]]:
    return client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"})


def _derived_image(client: Any, base: str, tag: str, run: str) -> str:
    """``base`` with one RUN step (as root), built through docker-py; cached by tag."""
    from mahabharatha.edge.images import image_exists

    if not image_exists(client, tag):
        dockerfile = f"FROM {base}\nUSER root\nRUN {run}\nUSER worker\n".encode()
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
        buf.seek(0)
        for chunk in client.api.build(fileobj=buf, custom_context=True, tag=tag, rm=True, decode=True):
            assert "error" not in chunk, chunk
    return tag


@pytest.mark.parametrize(
    "tag, run, needles",
    [
        ("mahabharatha-worker:test-nogit", "rm -f /usr/bin/git && rm -rf /usr/lib/git-core", ("git is not installed in the worker image",)),
        ("mahabharatha-worker:test-nopython", "rm -f /usr/bin/python3*", ("code 127", "no python3 on PATH")),
    ],
)
def test_worker_image_without_git_or_python_says_what_is_missing(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any,
    capsys: Any, tag: str, run: str, needles: tuple[str, ...],
) -> None:
    from mahabharatha.cli import main

    image = _derived_image(docker_client, worker_image, tag, run)
    _setup(git_repo, image=image, prefix=container_prefix)
    assert main(["kurukshetra", "--repo", str(git_repo)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Worker process failed to start" in err
    for needle in needles:
        assert needle in err, err
    assert _containers(docker_client, git_repo) == []
    # Nothing ran, so nothing may be lost: the state says so and a later run resumes.
    status = subprocess.run(["mahabharatha", "status", "--repo", str(git_repo)], capture_output=True, text=True, check=False)
    assert "A: pending" in status.stdout, status


@pytest.mark.parametrize("when, signame", [("starting", "SIGINT"), ("ready", "SIGINT"), ("ready", "SIGTERM"), ("starting", "SIGTERM")])
def test_ctrl_c_during_launch_or_run_leaves_no_containers_and_a_resumable_state(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any, when: str, signame: str
) -> None:
    """Ctrl-C, and SIGTERM (`timeout`, a CI cancel) the same way."""
    import os
    import signal
    import sys

    graph = json.loads(json.dumps(GRAPH))
    if when == "ready":  # the first attempt is still working when Ctrl-C comes; a resumed one does not sleep
        graph["tasks"][0]["scripted"] = {"sleep": {"1": 60}}
    _setup(git_repo, image=worker_image, prefix=container_prefix, graph=graph)
    cmd = [sys.executable, "-m", "mahabharatha", "kurukshetra", "--repo", str(git_repo)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if ("All containers running" if when == "ready" else "starting 1 worker(s)") in line:
            proc.send_signal(getattr(signal, signame))
            break
    rest = proc.communicate(timeout=120)[0]
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert _containers(docker_client, git_repo) == [], out
    status = subprocess.run([sys.executable, "-m", "mahabharatha", "status", "--repo", str(git_repo)], capture_output=True, text=True, check=False)
    assert "stopped" in status.stdout.splitlines()[0], status.stdout
    assert "claimed" not in status.stdout, status.stdout  # every worker is stopped: nothing is held
    # Resume: the second attempt of A does not sleep; the run finishes and merges both tasks.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    files = subprocess.run(["git", "-C", str(git_repo), "ls-tree", "--name-only", "mahabharatha/feat/base"], capture_output=True, text=True, check=False).stdout.split()
    assert {"a.txt", "b.txt"} <= set(files)
    assert _containers(docker_client, git_repo) == []


def test_demo_with_an_invalid_image_name_is_one_line(tmp_path: Path, docker_client: Any, capsys: Any) -> None:
    from mahabharatha.cli import main

    assert main(["demo", "--image", "BAD IMAGE", "--dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "'BAD IMAGE' is not a valid Docker image reference" in err
    assert not (tmp_path / "d" / "repo").exists()


def test_name_clash_with_a_running_run_of_another_feature_never_advises_cleaning_it_up(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any, capsys: Any
) -> None:
    from mahabharatha.cli import main

    _setup(git_repo, image=worker_image, prefix=container_prefix)
    running = docker_client.containers.run(
        worker_image, ["sleep", "60"], name=f"{container_prefix}-0", detach=True,
        labels={"io.mahabharatha.managed": "true", "io.mahabharatha.repo": str(git_repo), "io.mahabharatha.feature": "other"},
    )
    try:
        assert main(["kurukshetra", "--repo", str(git_repo)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"{container_prefix}-0 already exists" in err and "feature other" in err
        assert "in progress" in err and "MAHABHARATHA_CONTAINER_PREFIX" in err
        assert "cleanup other" not in err
        running.reload()
        assert running.status == "running"  # untouched
    finally:
        running.remove(force=True)


def test_memory_limit_too_small_to_start_names_the_setting(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any, capsys: Any
) -> None:
    from mahabharatha.cli import main

    _setup(git_repo, image=worker_image, prefix=container_prefix)
    config = git_repo / ".mahabharatha" / "config.yaml"
    config.write_text(config.read_text().replace("container_memory_limit: 256m", "container_memory_limit: 7m"))
    assert main(["kurukshetra", "--repo", str(git_repo)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "OOMKilled" in err and "raise resources.container_memory_limit (now 7m)" in err
    assert _containers(docker_client, git_repo) == []


def test_repeated_ctrl_c_while_workers_stop_still_leaves_no_containers(
    git_repo: Path, temp_home: Path, container_prefix: str, worker_image: str, docker_client: Any
) -> None:
    import os
    import signal
    import sys
    import time

    _setup(git_repo, image=worker_image, prefix=container_prefix)
    config = git_repo / ".mahabharatha" / "config.yaml"
    # An agent that ignores SIGTERM: the graceful stop takes a while, and an impatient user presses Ctrl-C again.
    config.write_text(config.read_text().replace(
        "agent_command: python3 -m mahabharatha_worker.scripted_agent", "agent_command: trap '' TERM; sleep 60"
    ))
    cmd = [sys.executable, "-m", "mahabharatha", "kurukshetra", "--repo", str(git_repo)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "All containers running" in line:
            break
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        seen.append(line)
        if "interrupted: stopping workers" in line:
            break
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        time.sleep(0.3)  # while the worker is still waiting for its agent (it kills it after 10 s)
        proc.send_signal(sig)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "run `mahabharatha kurukshetra` again to resume" in out, out
    assert _containers(docker_client, git_repo) == [], out
