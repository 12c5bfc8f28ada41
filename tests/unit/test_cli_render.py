"""``mahabharatha kurukshetra --dry-run --render FORMAT`` and ``mahabharatha render FORMAT``: the k8s form is
valid Kubernetes YAML without secrets; the other forms are the ones ``--dry-run`` always printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mahabharatha.cli import main

from .test_render_k8s import repo, validate  # noqa: F401 - repo is a fixture

KEY = "sk-ant-api03-" + "CliRenderSecret" * 3
ENVIRON = {"DOCKER_HOST": "tcp://10.9.8.7:2375", "ANTHROPIC_API_KEY": KEY, "MAHABHARATHA_CHANNEL_ADDRESS": "10.9.8.1:7391"}


def _cli_env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAHABHARATHA_", "ZERG_", "ANTHROPIC_", "CLAUDE_"))}
    return {**env, **ENVIRON, "HOME": str(repo.parent / "home")}


def test_cli_dry_run_render_k8s_prints_valid_yaml(repo):
    result = subprocess.run(
        [sys.executable, "-m", "mahabharatha", "kurukshetra", "--dry-run", "--render", "k8s", "--mode", "container",
         "--feature", "user-auth", "--workers", "2", "--namespace", "agents"],
        cwd=repo, env=_cli_env(repo), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    validate(docs)
    assert [d["kind"] for d in docs] == ["Secret", "Job", "Job"] and docs[1]["metadata"]["namespace"] == "agents"
    assert KEY not in result.stdout + result.stderr


def test_cli_render_forms_agree(repo, monkeypatch, capsys):
    for name, value in _cli_env(repo).items():
        monkeypatch.setenv(name, value)
    common = ["--repo", str(repo), "--mode", "container", "--feature", "user-auth", "--workers", "2"]

    def out(*args):
        code = main([*args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, k8s, _ = out("render", "k8s", *common)
    assert code == 0 and out("kurukshetra", "--dry-run", "--render", "k8s", *common)[1] == k8s
    assert out("kurukshetra", "--dry-run", "--render", "json", *common)[1] == out("kurukshetra", "--dry-run", "--json", *common)[1]
    code, docker, _ = out("kurukshetra", "--dry-run", "--render", "docker", *common)
    assert code == 0 and [line for line in docker.splitlines() if not line.startswith("#")][0].startswith("docker run ")
    assert "Launching Worker" not in docker and "Launching Worker" in out("kurukshetra", "--dry-run", *common)[1]
    code, _, err = out("kurukshetra", "--render", "k8s", *common)
    assert code == 2 and "add --dry-run" in err
    code, _, err = out("kurukshetra", "--dry-run", "--json", "--render", "k8s", *common)
    assert code == 2 and "use one of them" in err
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.delenv("MAHABHARATHA_CHANNEL_ADDRESS")
    code, _, err = out("render", "k8s", *common)
    assert code == 2 and "Kubernetes needs workers.transport: remote" in err and err.count("\n") == 1
