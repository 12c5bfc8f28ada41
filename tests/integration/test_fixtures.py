"""The shared fixtures' contract: without an engine, end-to-end tests skip with a reason, or fail under
``MAHABHARATHA_REQUIRE_DOCKER=1`` (so CI can never pass by skipping them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_without_engine(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "MAHABHARATHA_REQUIRE_DOCKER": require}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-rs",
         "tests/integration/test_images.py::test_build_once_then_reuse"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("require", ["", "0"])
def test_no_engine_skips_with_reason(tmp_path: Path, require: str) -> None:
    proc = _run_without_engine(tmp_path, require)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout and "no Docker engine reachable" in proc.stdout


def test_no_engine_fails_when_docker_is_required(tmp_path: Path) -> None:
    proc = _run_without_engine(tmp_path, "1")
    assert proc.returncode != 0
    assert "1 error" in proc.stdout and "MAHABHARATHA_REQUIRE_DOCKER=1 but no Docker engine reachable" in proc.stdout
