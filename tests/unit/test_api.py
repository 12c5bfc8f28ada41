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
