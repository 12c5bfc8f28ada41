"""The current Docker context's engine, read as the Docker CLI does (docker-py reads no contexts): the planner
names it in the plan, the executor's clients connect to it. Reads two small files; touches nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from .safefs import read_regular

__all__ = ["docker_context"]


def _read_small(path: Path, limit: int) -> str | None:
    try:
        data = read_regular(path, limit=limit, what="a Docker CLI file", missing_ok=True)
    except Exception:  # noqa: BLE001 - unreadable, too big, not a regular file: no context from it
        return None
    return data.decode("utf-8", "replace") if data is not None else None


def docker_context(env: Mapping[str, str], home: Path) -> tuple[str, str] | None:
    """The current Docker context's ``(name, engine address)`` (``DOCKER_CONTEXT``, else ``currentContext`` in
    the Docker CLI's config.json), or None for the default context or when it cannot be read."""
    config_dir = Path(env.get("DOCKER_CONFIG") or home / ".docker")
    name = env.get("DOCKER_CONTEXT") or ""
    if not name:
        text = _read_small(config_dir / "config.json", 1 << 20)
        try:
            name = str((json.loads(text) if text else {}).get("currentContext") or "")
        except (ValueError, AttributeError):
            return None
    if not name or name == "default":
        return None
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    text = _read_small(meta, 1 << 20)
    try:
        host = json.loads(text)["Endpoints"]["docker"]["Host"] if text else ""
    except (ValueError, KeyError, TypeError):
        return None
    return (name, host) if isinstance(host, str) and host else None
