"""``.mahabharatha/config.yaml``: typed, validated, with environment and command-line overrides.

Precedence, lowest to highest: defaults < config file < environment (``ZERG_*``, then ``MAHABHARATHA_*``,
which wins) < command-line overrides. :func:`load_config` is pure: the caller hands in the file's text
(``None`` when the file does not exist), the environment and the overrides. Every mistake becomes one
:class:`~mahabharatha.errors.ConfigError` line naming where the value came from (file, variable or flag),
the field path (``workers.max_concurrent``), what was found and the expected form.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..errors import ConfigError
from .memory import MEMORY_FORMS, MemoryLimitError, parse_memory

__all__ = [
    "Config",
    "WorkersConfig",
    "ResourcesConfig",
    "SecurityConfig",
    "load_config",
    "validate_feature",
    "ENV_OVERRIDES",
    "DEFAULT_AGENT_COMMAND",
    "CONFIG_RELPATH",
]

CONFIG_RELPATH = ".mahabharatha/config.yaml"
# The prompt reaches the agent on stdin (and in $MAHABHARATHA_TASK_PROMPT_FILE): argv and the environment
# cap one string at 128 KiB. For Claude Code the worker adds --output-format stream-json --verbose (and
# --model when workers.model is set) so it can log, count usage and watch the context.
DEFAULT_AGENT_COMMAND = "claude -p --dangerously-skip-permissions"

_MAX_CPUS = 256.0


class WorkersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_concurrent: Annotated[int, Meta(ge=1, le=10_000)] = 5
    timeout_minutes: Annotated[int, Meta(ge=1, le=525_600)] = 60
    retry_attempts: Annotated[int, Meta(ge=0, le=100)] = 2
    launcher_type: Literal["subprocess", "container", "swarm", "kubernetes"] = "subprocess"
    # How workspaces, the runtime and results reach workers: "local" bind mounts, "remote" the worker channel
    # only (engines that cannot see this machine's files); "auto" picks remote for tcp:// and ssh:// engines.
    transport: Literal["auto", "local", "remote"] = "auto"
    channel_address: str = ""  # HOST[:PORT] remote workers dial; "" = this machine's address towards the engine
    kubernetes_namespace: str = "default"  # launcher_type: kubernetes (the cluster is kubeconfig's current context)
    container_prefix: str = "mahabharatha-worker"
    agent_command: str = DEFAULT_AGENT_COMMAND
    model: str | None = None  # Claude Code's --model
    max_cost_usd_per_task: Annotated[float, Meta(gt=0)] | None = None  # the agent is stopped when reached
    max_cost_usd: Annotated[float, Meta(gt=0)] | None = None  # the run is stopped when reached
    context_threshold_percent: Annotated[int, Meta(ge=1, le=100)] = 70  # checkpoint and restart at this use
    context_window_tokens: Annotated[int, Meta(ge=1000, le=100_000_000)] = 200_000  # until the stream names one
    review: bool = False  # pause before each level's merge until `mahabharatha approve`


class ResourcesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cpu_cores: Annotated[float, Meta(gt=0, le=_MAX_CPUS)] = 2.0
    memory_gb: Annotated[float, Meta(gt=0, le=1_048_576)] = 4.0
    container_memory_limit: str | int = "4g"  # normalised to a str by load_config
    container_cpu_limit: Annotated[float, Meta(ge=0.01, le=_MAX_CPUS)] = 2.0  # Docker's minimum is 0.01
    container_image: str = "mahabharatha-worker"
    pids_limit: Annotated[int, Meta(ge=1, le=4_194_304)] | None = 1024  # None: no limit


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    container_readonly: bool = True
    no_new_privileges: bool = True
    drop_capabilities: bool = True


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The resolved configuration. ``resources.container_memory_limit`` is always the normalised string."""

    workers: WorkersConfig = WorkersConfig()
    resources: ResourcesConfig = ResourcesConfig()
    security: SecurityConfig = SecurityConfig()


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "workers": WorkersConfig,
    "resources": ResourcesConfig,
    "security": SecurityConfig,
}
_KNOWN = {name: tuple(cls.__struct_fields__) for name, cls in _SECTIONS.items()}

_NUMBER = "a number"
_EXPECTED: dict[str, str] = {
    "workers.max_concurrent": "a whole number from 1 to 10000",
    "workers.timeout_minutes": "a whole number of minutes >= 1",
    "workers.retry_attempts": "a whole number from 0 to 100",
    "workers.launcher_type": "'subprocess', 'container', 'swarm' or 'kubernetes'",
    "workers.kubernetes_namespace": "a Kubernetes namespace name like 'default'",
    "workers.transport": "'auto', 'local' or 'remote'",
    "workers.channel_address": "HOST or HOST:PORT of this machine, as the engine's containers reach it",
    "workers.container_prefix": "a Docker name prefix like 'mahabharatha-worker'",
    "workers.agent_command": "a non-empty shell command",
    "workers.model": "a model name like 'claude-sonnet-4-5', or null",
    "workers.max_cost_usd_per_task": "a number of US dollars > 0, or null for no budget",
    "workers.max_cost_usd": "a number of US dollars > 0, or null for no budget",
    "workers.context_threshold_percent": "a whole number from 1 to 100",
    "workers.context_window_tokens": "a whole number of tokens >= 1000",
    "workers.review": "true or false",
    "resources.cpu_cores": f"{_NUMBER} > 0 and <= {_MAX_CPUS:g}",
    "resources.memory_gb": f"{_NUMBER} > 0",
    "resources.container_memory_limit": MEMORY_FORMS,
    "resources.container_cpu_limit": f"a number of CPUs from 0.01 to {_MAX_CPUS:g}, like 2.0",
    "resources.container_image": "a Docker image reference like 'mahabharatha-worker' or 'registry:5000/team/worker:tag'",
    "resources.pids_limit": "a whole number >= 1, or null for no limit",
    "security.container_readonly": "true or false",
    "security.no_new_privileges": "true or false",
    "security.drop_capabilities": "true or false",
}

# Environment overrides: field path -> variable names, lowest precedence first (the last one set wins).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "resources.container_memory_limit": ("ZERG_CONTAINER_MEMORY", "MAHABHARATHA_CONTAINER_MEMORY"),
    "resources.container_cpu_limit": ("ZERG_CONTAINER_CPUS", "MAHABHARATHA_CONTAINER_CPUS"),
    "resources.container_image": ("ZERG_CONTAINER_IMAGE", "MAHABHARATHA_CONTAINER_IMAGE"),
    "workers.container_prefix": ("ZERG_CONTAINER_PREFIX", "MAHABHARATHA_CONTAINER_PREFIX"),
    "workers.transport": ("MAHABHARATHA_TRANSPORT",),
    "workers.channel_address": ("MAHABHARATHA_CHANNEL_ADDRESS",),
}

_DECIMAL_RE = re.compile(r"[0-9]{1,9}(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)
_WHOLE_RE = re.compile(r"[0-9]{1,9}", re.ASCII)

# Safe as a path segment, a git ref component and part of a Docker container name.
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", re.ASCII)

# Docker image reference (distribution/reference grammar, slightly simplified).
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_RE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*(?::[\w][\w.-]{{0,127}})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?",
    re.ASCII,
)


def safe_name_problem(name: str) -> str | None:
    """Why ``name`` is unsafe as a path segment / git ref component / container-name part, or None."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        return "use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
    if ".." in name:
        return "'..' is not allowed"
    if name.endswith(".lock") or name.endswith("."):
        return "it may not end with '.lock' or '.'"
    return None


def validate_feature(name: object, source: str) -> str:
    """Return ``name`` if it is a safe feature name, else raise a ConfigError naming ``source``."""
    problem = safe_name_problem(name) if isinstance(name, str) else "expected text"
    if problem:
        raise ConfigError(
            f"{source}: feature name {_found(name)} is not usable as a directory, git branch and container "
            f"name: {problem}"
        )
    return name  # type: ignore[return-value]


def load_config(
    path: str,
    text: str | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    override_sources: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration from the file ``text`` (None: no file), ``environ`` and ``overrides``.

    ``overrides`` maps field paths (``"workers.launcher_type"``) to values from the command line;
    ``override_sources`` may name the flag for each (``"--mode"``) so errors point at it.
    """
    raw = _parse_yaml(path, text)
    config = _from_file(path, raw)
    for field, names in ENV_OVERRIDES.items():
        winner = next((n for n in reversed(names) if environ is not None and n in environ), None)
        if winner is not None:
            config = _override(config, field, environ[winner], f"environment variable {winner}", from_text=True)  # type: ignore[index]
    for field, value in (overrides or {}).items():
        if value is None:
            continue
        flag = (override_sources or {}).get(field)
        source = f"command line ({flag})" if flag else "command line"
        section, _, key = field.partition(".")
        if key not in _KNOWN.get(section, ()):
            raise ConfigError(f"{source}: unknown setting {field!r}")
        config = _override(config, field, value, source, from_text=False)
    return config


# --- internals -------------------------------------------------------------------------------------------


def _found(value: object) -> str:
    """A short, one-line description of a found value (never multi-line, never huge)."""
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return text


def _error(source: str, field: str, value: object, expected: str | None = None, reason: str = "") -> ConfigError:
    expected = expected or _EXPECTED.get(field, "a valid value")
    why = f" ({reason})" if reason else ""
    return ConfigError(f"{source}: {field}: expected {expected}, found {_found(value)}{why}")


@functools.cache
def _strict_loader() -> type:
    """PyYAML's SafeLoader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a second ``max_concurrent:`` further down would quietly
    override the first: a mistake the user should hear about, with both lines.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first given on line {seen[key].start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
                if isinstance(key, str):
                    seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _parse_yaml(path: str, text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    import yaml  # PyYAML: imported lazily, only when there is a file to read

    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None
    except Exception as exc:  # noqa: BLE001 - PyYAML raises ValueError/RecursionError/... on odd input
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ConfigError(f"{path}: invalid YAML: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping with sections workers, resources, security at the top level, "
            f"found {_found(data)}"
        )
    return data


def _suggest(key: str, known: tuple[str, ...], section: str | None) -> str:
    if section is not None:  # a key that belongs to another section is a likely mix-up
        for other, keys in _KNOWN.items():
            if other != section and key in keys:
                return f"; did you mean {other}.{key}?"
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if match:
        return f"; did you mean {(section + '.') if section else ''}{match[0]}?"
    return f"; known keys: {', '.join(known)}"


def _from_file(path: str, raw: dict[str, Any]) -> Config:
    sections: dict[str, Any] = {}
    for name, body in raw.items():
        if not isinstance(name, str):
            raise ConfigError(f"{path}: top-level keys must be text, found {_found(name)}")
        if name not in _KNOWN:
            raise ConfigError(f"{path}: unknown section {name!r}{_suggest(name, tuple(_KNOWN), None)}")
        if body is None:  # "workers:" with nothing under it
            continue
        if not isinstance(body, dict):
            raise _error(path, name, body, expected="a mapping of settings")
        for key in body:
            if not isinstance(key, str):
                raise ConfigError(f"{path}: {name}: keys must be text, found {_found(key)}")
            if key not in _KNOWN[name]:
                shown = key if re.fullmatch(r"[A-Za-z0-9_.-]{1,60}", key) else _found(key)
                raise ConfigError(f"{path}: {name}.{shown}: unknown setting{_suggest(key, _KNOWN[name], name)}")
        sections[name] = body
    try:
        config = msgspec.convert(sections, Config)
    except msgspec.ValidationError as exc:
        field = _field_of(exc)
        section, _, key = field.partition(".")
        body = raw.get(section)
        value = body.get(key) if key and isinstance(body, dict) else None
        raise _error(path, field, value) from None
    # Semantic checks msgspec cannot express (anchored patterns, Docker's memory grammar).
    for field in ("workers.container_prefix", "workers.agent_command", "resources.container_memory_limit",
                  "resources.container_image", "workers.channel_address", "workers.kubernetes_namespace"):
        section, key = field.split(".")
        if key in sections.get(section, {}):
            config = _override(config, field, getattr(getattr(config, section), key), path, from_text=False)
    return config


def _field_of(exc: msgspec.ValidationError) -> str:
    match = re.search(r"at `\$\.([A-Za-z_]+(?:\.[A-Za-z_]+)?)`", str(exc))
    return match.group(1) if match else "config"


def _override(config: Config, field: str, value: Any, source: str, *, from_text: bool) -> Config:
    """Validate one value for ``field`` (from ``source``) and return ``config`` with it set."""
    section, key = field.split(".")
    section_cls = _SECTIONS[section]
    checked = _check(field, value, source, from_text=from_text)
    try:
        msgspec.convert({key: checked}, section_cls)  # types and ranges
    except msgspec.ValidationError:
        raise _error(source, field, value) from None
    current = getattr(config, section)
    return msgspec.structs.replace(config, **{section: msgspec.structs.replace(current, **{key: _coerce(field, checked)})})


def _coerce(field: str, value: Any) -> Any:
    """Numbers given as ints for float fields are stored as floats, as msgspec.convert would."""
    if field in ("resources.cpu_cores", "resources.memory_gb", "resources.container_cpu_limit"):
        return float(value)
    return value


def _check(field: str, value: Any, source: str, *, from_text: bool) -> Any:
    """Field-specific checks; returns the value to store (normalised where that applies)."""
    if field == "resources.container_memory_limit":
        try:
            return parse_memory(value)[0]
        except MemoryLimitError as exc:
            raise _error(source, field, value, reason=str(exc)) from None
    if field in ("resources.container_cpu_limit", "resources.cpu_cores", "resources.memory_gb") and from_text:
        if not isinstance(value, str) or not _DECIMAL_RE.fullmatch(value.strip()):
            raise _error(source, field, value)  # plain decimals only: no "inf", "nan", "1e3" or "1_0"
        return float(value)
    if field in ("workers.max_concurrent", "workers.timeout_minutes", "workers.retry_attempts",
                 "resources.pids_limit") and from_text:
        if not isinstance(value, str) or not _WHOLE_RE.fullmatch(value.strip()):
            raise _error(source, field, value)
        return int(value)
    if field == "workers.container_prefix":
        problem = safe_name_problem(value) if isinstance(value, str) else "expected text"
        if problem:
            raise _error(source, field, value, reason=problem)
    if field == "resources.container_image":
        if not isinstance(value, str) or len(value) > 255 or not _IMAGE_RE.fullmatch(value):
            raise _error(source, field, value)
    if field == "workers.kubernetes_namespace":
        if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
            raise _error(source, field, value)
    if field == "workers.channel_address" and value != "":
        from .engine import parse_channel_address

        if not isinstance(value, str):
            raise _error(source, field, value)
        parse_channel_address(value, source)
    if field == "workers.agent_command":
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            raise _error(source, field, value)
    if field.startswith("security.") and from_text:
        lowered = str(value).strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _error(source, field, value)
    return value
