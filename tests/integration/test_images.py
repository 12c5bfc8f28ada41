"""Image checks and builds through docker-py, against the real engine (nothing is ever pulled)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from mahabharatha.edge.images import ensure_image, image_exists
from mahabharatha.errors import LaunchError

pytestmark = pytest.mark.docker


def test_build_once_then_reuse(docker_client: Any, worker_image: str, tmp_path: Path) -> None:
    tag = f"mh-test-image-{uuid.uuid4().hex[:8]}:x"
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {worker_image}\nARG GREETING=hi\nLABEL greeting=$GREETING\n")
    lines: list[str] = []
    try:
        assert not image_exists(docker_client, tag)
        first = ensure_image(docker_client, tag, dockerfile=dockerfile, buildargs={"GREETING": "hello"},
                             on_output=lines.append)
        assert image_exists(docker_client, tag) and any("Successfully tagged" in line for line in lines)
        assert docker_client.images.get(tag).labels["greeting"] == "hello"
        lines.clear()
        assert ensure_image(docker_client, tag, dockerfile=dockerfile) == first  # exists: no build at all
        assert lines == []
    finally:
        docker_client.images.remove(tag, force=True)


def test_broken_dockerfile_is_one_line(docker_client: Any, worker_image: str, tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {worker_image}\nRUN echo building && exit 3\n")
    with pytest.raises(LaunchError) as info:
        ensure_image(docker_client, f"mh-test-image-{uuid.uuid4().hex[:8]}:x", dockerfile=dockerfile)
    assert "returned a non-zero code: 3" in str(info.value) and "\n" not in str(info.value)
