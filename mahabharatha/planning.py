"""The public :func:`plan`: gather the real inputs (files, environment, home, uid) and call the pure core.

This is the only planning code that touches the filesystem, and it only reads: the repository root (found
by walking up to the directory holding ``.git``), ``.mahabharatha/config.yaml``, ``.env``,
``.gsd/.current-feature`` and whether ``~/.claude`` / ``~/.claude.json`` exist. It never imports Docker,
so the dry-run works on a machine without a Docker engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .core.auth import discover_auth
from .core.config import CONFIG_RELPATH, load_config, validate_feature
from .core.engine import engine_target, host_of, is_remote_host
from .edge.dockerctx import docker_context
from .core.graph import TaskGraph
from .core.model import LaunchPlan
from .core.plan import build_plan
from .errors import ConfigError

__all__ = ["plan", "find_repo_root", "resolve_feature", "CURRENT_FEATURE_RELPATH"]

CURRENT_FEATURE_RELPATH = ".gsd/.current-feature"


def plan(
    repo: str | os.PathLike[str] = ".",
    *,
    feature: str | None = None,
    workers: int | None = None,
    mode: str | None = None,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    graph: TaskGraph | None = None,
) -> LaunchPlan:
    """Compute the :class:`LaunchPlan` for ``repo`` (any directory inside the repository).

    ``feature`` defaults to the contents of ``.gsd/.current-feature``; ``workers`` to
    ``workers.max_concurrent`` (and is capped by it); ``mode`` (``"container"``/``"subprocess"``) overrides
    ``workers.launcher_type``; ``environ`` and ``home`` default to the real ones. ``overrides`` sets other
    config fields by path with command-line precedence (e.g. ``{"resources.container_image": "img:tag"}``,
    used by the demo and tests).

    The feature's task graph (``.gsd/specs/<feature>/task-graph.json``) is read and validated here and
    carried by the plan (``plan.graph``), so the plan says everything a run will do; pass ``graph`` to use
    one built in code instead. A repository without a graph file yet gives a plan without one (``graph`` is
    None: it can be rendered, not executed). Raises :class:`~mahabharatha.errors.ConfigError` or
    :class:`~mahabharatha.errors.GraphError` for anything the user can fix.
    """
    env = os.environ if environ is None else environ
    root = find_repo_root(repo)
    config_path = root / CONFIG_RELPATH
    config = load_config(
        str(config_path),
        _read_optional(config_path),
        env,
        {**(overrides or {}), "workers.launcher_type": mode} if mode is not None else dict(overrides or {}),
        override_sources={"workers.launcher_type": "--mode"},
    )
    feature = resolve_feature(root, feature)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers: expected a whole number >= 1, found {workers!r}")

    home_dir = Path(home) if home is not None else Path.home()
    dotenv_path = root / ".env"
    auth, secrets = discover_auth(
        environ=env,
        dotenv_text=_read_optional(dotenv_path),
        dotenv_path=str(dotenv_path),
        home=str(home_dir),
        has_claude_dir=(home_dir / ".claude").is_dir(),
        has_claude_json=(home_dir / ".claude.json").is_file(),
        claude_credentials=_read_home_file(home_dir / ".claude" / ".credentials.json", 1 << 20),
        claude_json_text=_read_home_file(home_dir / ".claude.json", 16 << 20),
    )
    if graph is None:
        graph = _read_graph_if_any(root, feature)
    engine = engine_target(env.get("DOCKER_HOST") or None, docker_context(env, home_dir), config.workers.transport)
    remote = engine.transport == "remote" or config.workers.launcher_type in ("swarm", "kubernetes")
    channel_host = ""
    if remote and config.workers.launcher_type not in ("subprocess", "kubernetes") and not config.workers.channel_address:
        channel_host = _address_towards(host_of(engine.host) if is_remote_host(engine.host) else "")
    return build_plan(
        engine=engine,
        channel_host=channel_host,
        graph=graph,
        repo=str(root),
        feature=feature,
        config=config,
        auth=auth,
        secrets=secrets,
        uid=os.getuid(),
        gid=os.getgid(),
        worker_runtime_dir=str(_worker_runtime_dir()),
        requested_workers=workers,
        config_path=str(config_path),
    )


def _address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (a UDP socket's local address: no packet is sent);
    "" when it cannot be found. For a local engine (no host) there is no useful default."""
    import socket

    if not host:
        return ""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError:
        return ""


def _read_graph_if_any(root: Path, feature: str) -> TaskGraph | None:
    """The feature's validated task graph, or None when there is no graph file (anything else wrong with it,
    a FIFO, a device, too big, invalid, is a GraphError)."""
    from .core.graph import graph_path
    from .edge.graphfile import read_task_graph

    if not os.path.lexists(graph_path(str(root), feature)):
        return None
    return read_task_graph(str(root), feature)


def find_repo_root(start: str | os.PathLike[str] = ".") -> Path:
    """The nearest directory at or above ``start`` that holds a ``.git`` directory (the main checkout)."""
    try:
        here = Path(start).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ConfigError(f"{start}: no such directory (pass --repo with the repository root)") from None
    if not here.is_dir():
        raise ConfigError(f"{here}: not a directory (pass --repo with the repository root)")
    for candidate in (here, *here.parents):
        dotgit = candidate / ".git"
        if dotgit.is_dir():
            return candidate
        if dotgit.is_file():
            raise ConfigError(
                f"{candidate}: is a linked git worktree; run mahabharatha from the main checkout "
                "(the directory whose .git is a directory)"
            )
    raise ConfigError(f"{here}: not inside a git repository (run `git init` there, or pass --repo)")


def _read_home_file(path: Path, limit: int) -> str | None:
    """A small file of the user's Claude login, or None when it is missing, too big or not a regular file
    (a login the workers cannot copy is not an error: the plan says so)."""
    from .edge.safefs import read_regular
    from .errors import MahabharathaError

    try:
        data = read_regular(str(path), limit=limit, what="Claude login file", missing_ok=True)
    except (MahabharathaError, OSError):
        return None
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_optional(path: Path) -> str | None:
    """The file's text, or None when it does not exist. Unreadable files are a ConfigError naming them."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None


def resolve_feature(root: Path, feature: str | None) -> str:
    """The feature a command is about: ``feature`` (from ``--feature``) when given, else the name in
    ``<root>/.gsd/.current-feature``; validated either way (ConfigError naming the flag or the file)."""
    if feature is not None:
        return validate_feature(feature, "--feature")
    path = root / CURRENT_FEATURE_RELPATH
    text = _read_optional(path)
    name = (text or "").strip()
    if not name:
        state = "is empty" if text is not None else "does not exist"
        raise ConfigError(f"{path}: {state}, so no feature is selected (pass --feature NAME or write the name there)")
    return validate_feature(name, str(path))


def _worker_runtime_dir() -> Path:
    from . import worker

    return Path(worker.__file__).resolve().parent
