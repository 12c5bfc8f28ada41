"""``mahabharatha demo`` end to end: a throwaway repo, the sample feature, real containers, the merged result."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.core.model import LABEL_REPO

pytestmark = pytest.mark.docker


def test_demo_runs_the_sample_feature_and_shows_the_merged_result(
    tmp_path: Path, worker_image: str, docker_client: Any, capsys: Any
) -> None:
    from mahabharatha.cli import main

    repo = (tmp_path / "demo" / "repo").resolve()
    try:
        code = main(["demo", "--dir", str(tmp_path / "demo"), "--image", worker_image, "--workers", "3"])
    finally:
        for row in docker_client.api.containers(all=True, filters={"label": f"{LABEL_REPO}={repo}"}):
            docker_client.api.remove_container(row["Id"], force=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Run done" in out and "level 3: 1 done" in out
    assert "$ git log --oneline --graph mahabharatha/demo/base" in out and "wordcount/__main__.py" in out
    # The merged base branch is a working program.
    archive = subprocess.run(["git", "-C", str(repo), "archive", "mahabharatha/demo/base"], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp_path / "result")
    run = subprocess.run(["python3", "-m", "wordcount"], cwd=tmp_path / "result", input="b a b\n", capture_output=True, text=True)
    assert run.stdout.splitlines() == ["b  2", "a  1"], run.stderr
    assert subprocess.run(["python3", "tests/test_core.py"], cwd=tmp_path / "result").returncode == 0
    assert "L3-readme" in (tmp_path / "result" / "README.md").read_text()
    # The user's branch did not move.
    assert subprocess.run(["git", "-C", str(repo), "rev-list", "--count", "main"], capture_output=True, text=True).stdout.strip() == "1"
