"""The public API surface: every exported name resolves, and planning stays free of the Docker SDK."""

import subprocess
import sys

import pytest

import mahabharatha


@pytest.mark.parametrize("name", mahabharatha.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(mahabharatha, name) is not None


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        mahabharatha.nosuch  # noqa: B018


def test_plan_does_not_import_docker() -> None:
    # A fresh interpreter: this test process may already have imported docker for other tests.
    code = "import sys, mahabharatha; mahabharatha.plan; mahabharatha.LaunchPlan; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_start_fleet_refuses_while_a_run_holds_the_lock(tmp_path) -> None:
    import fcntl
    import os

    from mahabharatha.edge import executor
    from mahabharatha.errors import LaunchError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    p = mahabharatha.plan(str(tmp_path), feature="f", workers=1, mode="container", environ={}, home=str(tmp_path))
    os.makedirs(f"{p.state_dir}/f", exist_ok=True)
    fd = os.open(f"{p.state_dir}/f/orchestrator.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running `kurukshetra` holds it
    try:
        with pytest.raises(LaunchError, match="in progress"):
            executor.start_fleet(p, client=object())  # refused before the engine is asked anything
    finally:
        os.close(fd)


def test_execute_without_a_graph_is_one_graph_error(tmp_path) -> None:
    from mahabharatha.errors import GraphError

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    p = mahabharatha.plan(str(tmp_path), feature="f", workers=1, mode="subprocess", environ={}, home=str(tmp_path))
    assert p.graph is None
    with pytest.raises(GraphError, match="no task graph"):
        mahabharatha.execute(p)
