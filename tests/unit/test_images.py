"""The worker image's Dockerfile as package data, and the build-arg checks (no Docker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mahabharatha.edge import images
from mahabharatha.errors import LaunchError

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_dockerfile_is_the_documented_one() -> None:
    packaged = images.default_dockerfile()
    assert packaged == ROOT / "mahabharatha" / "data" / "Dockerfile" and packaged.is_file()
    # .devcontainer/Dockerfile is the documented path: a link to the one file the wheel carries (one copy to edit).
    documented = ROOT / ".devcontainer" / "Dockerfile"
    assert documented.is_symlink() and documented.resolve() == packaged.resolve()


def test_dockerfile_pins_claude_and_keeps_its_options() -> None:
    text = images.default_dockerfile().read_text()
    args = dict(re.findall(r"^ARG (\w+)=?(.*)$", text, re.M))
    assert re.fullmatch(r"2\.1\.\d+", args["CLAUDE_CODE_VERSION"])
    assert args["INSTALL_CLAUDE"] == "1" and args["EXTRA_CA_CERT"] == "" and args["CLAUDE_CODE_PLATFORM"] == "auto"
    assert images._default_base(images.default_dockerfile()) == "python:3.12-slim"
    # No RUN --mount / heredocs: docker-py uses the classic builder, which has neither.
    assert not re.search(r"^RUN\s+--mount|<<-?\s*['\"]?[A-Z]", text, re.M)


def test_oversized_build_arg_is_one_line_before_any_build() -> None:
    bundle = "-----BEGIN CERTIFICATE-----\n" + "A" * (200 * 1024) + "\n-----END CERTIFICATE-----\n"
    with pytest.raises(LaunchError) as info:
        images._check_buildargs({"EXTRA_CA_CERT": bundle})
    assert "EXTRA_CA_CERT" in str(info.value) and "\n" not in str(info.value)
    assert "not a whole CA bundle" in (info.value.hint or "")
    images._check_buildargs({"EXTRA_CA_CERT": "x" * images.MAX_BUILD_ARG_BYTES})  # at the limit: fine


def test_build_failure_detail_drops_the_quoted_run_line() -> None:
    detail = "The command '/bin/sh -c set -eu;  if [ x ]; then\n exit 3; fi' returned a non-zero code: 3"
    assert images._RUN_STEP.sub("a RUN step returned a non-zero code", detail) == (
        "a RUN step returned a non-zero code: 3"
    )
