"""Config: defaults, file, environment and command line, and one clear line for every mistake."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mahabharatha.core.config import (
    DEFAULT_AGENT_COMMAND,
    Config,
    load_config,
    safe_name_problem,
    validate_feature,
)
from mahabharatha.errors import ConfigError

PATH = "/repo/.mahabharatha/config.yaml"


def load(text, environ=None, overrides=None):
    return load_config(PATH, text, environ or {}, overrides)


def test_defaults_for_missing_and_empty_file():
    for text in (None, "", "   \n", "# only a comment\n", "workers:\n"):
        config = load(text)
        assert config == Config()
    c = Config()
    assert (c.workers.max_concurrent, c.workers.timeout_minutes, c.workers.retry_attempts) == (5, 60, 2)
    assert c.workers.launcher_type == "subprocess" and c.workers.container_prefix == "mahabharatha-worker"
    assert c.workers.agent_command == DEFAULT_AGENT_COMMAND
    assert (c.resources.cpu_cores, c.resources.memory_gb) == (2.0, 4.0)
    assert (c.resources.container_memory_limit, c.resources.container_cpu_limit) == ("4g", 2.0)
    assert (c.resources.container_image, c.resources.pids_limit) == ("mahabharatha-worker", 1024)
    assert c.security.container_readonly and c.security.no_new_privileges and c.security.drop_capabilities


def test_full_file():
    text = """
workers:
  max_concurrent: 8
  timeout_minutes: 30
  retry_attempts: 0
  launcher_type: container
  container_prefix: mh-test-1234abcd
  agent_command: echo hi
resources:
  cpu_cores: 4
  memory_gb: 8
  container_memory_limit: 4GiB
  container_cpu_limit: 1
  container_image: registry.local:5000/team/worker:1.2
  pids_limit: null
security:
  container_readonly: false
  no_new_privileges: false
  drop_capabilities: false
"""
    c = load(text)
    assert c.workers.max_concurrent == 8 and c.workers.launcher_type == "container"
    assert c.resources.container_memory_limit == "4g"  # normalised
    assert c.resources.container_cpu_limit == 1.0 and isinstance(c.resources.container_cpu_limit, float)
    assert c.resources.pids_limit is None
    assert c.resources.container_image == "registry.local:5000/team/worker:1.2"
    assert not c.security.container_readonly


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("workers:\n  max_concurent: 3\n", ["workers.max_concurent", "did you mean workers.max_concurrent"]),
        ("worker:\n  max_concurrent: 3\n", ["unknown section 'worker'", "did you mean workers"]),
        ("workers:\n  container_image: x\n", ["did you mean resources.container_image"]),
        ("workers:\n  zzz: 1\n", ["known keys: max_concurrent"]),
        ('workers:\n  "a\\nb": 1\n', ["workers.'a\\nb': unknown setting"]),
        ("- a\n- b\n", ["expected a mapping", "found a list"]),
        ("just text\n", ["expected a mapping", "'just text'"]),
        ("workers: [1\n", ["line 2, column 1", "invalid YAML"]),
        ("workers:\n  max_concurrent: 3\n bad: 1\n", ["line ", "invalid YAML"]),
        ("workers:\n  max_concurrent: 3\n  max_concurrent: 9\n", ["line 3, column 3", "duplicate key 'max_concurrent'", "line 2"]),
        ("workers: {}\nresources: {}\nworkers: {}\n", ["line 3", "duplicate key 'workers'", "line 1"]),
        ("workers:\n  max_concurrent: five\n", ["workers.max_concurrent", "whole number", "found 'five'"]),
        ("workers:\n  max_concurrent: 0\n", ["workers.max_concurrent", "found 0"]),
        ("workers:\n  max_concurrent: true\n", ["workers.max_concurrent", "found True"]),
        ("workers:\n  timeout_minutes: 0\n", ["workers.timeout_minutes"]),
        ("workers:\n  launcher_type: vm\n", ["workers.launcher_type", "'subprocess', 'container', 'swarm' or 'kubernetes'", "'vm'"]),
        ("workers:\n  container_prefix: -bad\n", ["workers.container_prefix", "'-bad'"]),
        ("workers:\n  container_prefix: a/b\n", ["workers.container_prefix"]),
        ("workers:\n  agent_command: ''\n", ["workers.agent_command"]),
        ("workers: 3\n", ["workers: expected a mapping", "found 3"]),
        ("resources:\n  container_memory_limit: 4x\n", ["resources.container_memory_limit", "4g, 512m", "'4x'"]),
        ("resources:\n  container_memory_limit: -1g\n", ["resources.container_memory_limit"]),
        ("resources:\n  container_memory_limit: ''\n", ["resources.container_memory_limit"]),
        ("resources:\n  container_memory_limit: 1m\n", ["minimum"]),
        ("resources:\n  container_memory_limit: 1.5\n", ["resources.container_memory_limit", "found 1.5"]),
        ("resources:\n  container_cpu_limit: 0\n", ["resources.container_cpu_limit", "from 0.01 to 256"]),
        ("resources:\n  container_cpu_limit: 0.001\n", ["resources.container_cpu_limit", "found 0.001"]),
        ("resources:\n  container_cpu_limit: -1\n", ["resources.container_cpu_limit"]),
        ("resources:\n  container_cpu_limit: 1000\n", ["resources.container_cpu_limit", "to 256"]),
        ("resources:\n  container_cpu_limit: .nan\n", ["resources.container_cpu_limit"]),
        ("resources:\n  container_cpu_limit: .inf\n", ["resources.container_cpu_limit"]),
        ("resources:\n  container_image: UPPER\n", ["resources.container_image"]),
        ("resources:\n  container_image: 'a b'\n", ["resources.container_image"]),
        ("resources:\n  pids_limit: 0\n", ["resources.pids_limit"]),
        ("security:\n  container_readonly: 'yes'\n", ["security.container_readonly", "true or false"]),
        ("1: 2\n", ["top-level keys must be text"]),
        ("x: 2001-02-30\n", ["invalid YAML"]),
    ],
)
def test_errors_are_one_clear_line(text, fragments):
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert message.startswith(PATH)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("environ", "field", "expected"),
    [
        ({"ZERG_CONTAINER_MEMORY": "2g"}, "container_memory_limit", "2g"),
        ({"ZERG_CONTAINER_MEMORY": "2g", "MAHABHARATHA_CONTAINER_MEMORY": "3gb"}, "container_memory_limit", "3g"),
        ({"ZERG_CONTAINER_CPUS": "1.5"}, "container_cpu_limit", 1.5),
        ({"ZERG_CONTAINER_CPUS": "1.5", "MAHABHARATHA_CONTAINER_CPUS": "3"}, "container_cpu_limit", 3.0),
        ({"MAHABHARATHA_CONTAINER_IMAGE": "reg:5000/a/b:t"}, "container_image", "reg:5000/a/b:t"),
    ],
)
def test_environment_overrides(environ, field, expected):
    assert getattr(load("resources:\n  container_memory_limit: 1g\n", environ).resources, field) == expected


def test_environment_prefix_override():
    assert load(None, {"MAHABHARATHA_CONTAINER_PREFIX": "mh-x"}).workers.container_prefix == "mh-x"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"MAHABHARATHA_CONTAINER_MEMORY": "4x"}, "environment variable MAHABHARATHA_CONTAINER_MEMORY"),
        ({"ZERG_CONTAINER_MEMORY": ""}, "environment variable ZERG_CONTAINER_MEMORY"),
        ({"MAHABHARATHA_CONTAINER_CPUS": "abc"}, "resources.container_cpu_limit"),
        ({"MAHABHARATHA_CONTAINER_CPUS": "nan"}, "resources.container_cpu_limit"),
        ({"MAHABHARATHA_CONTAINER_CPUS": "0"}, "resources.container_cpu_limit"),
        ({"MAHABHARATHA_CONTAINER_CPUS": "1e3"}, "resources.container_cpu_limit"),
        ({"MAHABHARATHA_CONTAINER_CPUS": "inf"}, "resources.container_cpu_limit"),
        ({"MAHABHARATHA_CONTAINER_IMAGE": "Bad Image"}, "resources.container_image"),
        ({"MAHABHARATHA_CONTAINER_PREFIX": "../x"}, "workers.container_prefix"),
    ],
)
def test_bad_environment_names_the_variable(environ, fragment):
    with pytest.raises(ConfigError, match="environment variable") as info:
        load(None, environ)
    assert fragment in str(info.value)


def test_overridden_env_value_is_not_validated():
    """Only the winning value matters: a bad ZERG_ value shadowed by a MAHABHARATHA_ one is ignored."""
    c = load(None, {"ZERG_CONTAINER_MEMORY": "junk", "MAHABHARATHA_CONTAINER_MEMORY": "2g"})
    assert c.resources.container_memory_limit == "2g"


def test_command_line_overrides_win_and_name_the_flag():
    c = load_config(PATH, "workers:\n  launcher_type: subprocess\n", {}, {"workers.launcher_type": "container"})
    assert c.workers.launcher_type == "container"
    with pytest.raises(ConfigError, match=r"command line \(--mode\): workers.launcher_type"):
        load_config(PATH, None, {}, {"workers.launcher_type": "vm"}, override_sources={"workers.launcher_type": "--mode"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(PATH, None, {}, {"workers.nope": 1})
    assert load_config(PATH, None, {}, {"workers.launcher_type": None}) == Config()


@pytest.mark.parametrize("name", ["user-auth", "a", "F1_x.y", "x" * 63])
def test_good_feature_names(name):
    assert validate_feature(name, "--feature") == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "a/b", "a..b", "x.lock", "x.", "a b", "x" * 64, "ü", "a\nb", "a:b", None]
)
def test_bad_feature_names(name):
    with pytest.raises(ConfigError, match="--feature"):
        validate_feature(name, "--feature")


# --- properties ------------------------------------------------------------------------------------------

_MEM = st.sampled_from(["1g", "2g", "512m", "3GiB", "1536m", "1073741824"])


@settings(max_examples=100, deadline=None)
@given(
    file_value=st.one_of(st.none(), _MEM),
    zerg=st.one_of(st.none(), _MEM),
    mahabharatha=st.one_of(st.none(), _MEM),
    cli=st.one_of(st.none(), _MEM),
)
def test_precedence_law_memory(file_value, zerg, mahabharatha, cli):
    """defaults < file < ZERG_ < MAHABHARATHA_ < command line: the highest layer present wins."""
    from mahabharatha.core.memory import parse_memory

    text = None if file_value is None else f"resources:\n  container_memory_limit: '{file_value}'\n"
    environ = {}
    if zerg is not None:
        environ["ZERG_CONTAINER_MEMORY"] = zerg
    if mahabharatha is not None:
        environ["MAHABHARATHA_CONTAINER_MEMORY"] = mahabharatha
    overrides = {"resources.container_memory_limit": cli}
    winner = next(v for v in (cli, mahabharatha, zerg, file_value, "4g") if v is not None)
    got = load_config(PATH, text, environ, overrides).resources.container_memory_limit
    assert got == parse_memory(winner)[0]


_CPU = st.floats(min_value=0.01, max_value=256, allow_nan=False).map(lambda x: round(x, 2)).filter(lambda x: x > 0)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), _CPU), st.one_of(st.none(), _CPU), st.one_of(st.none(), _CPU), st.one_of(st.none(), _CPU))
def test_precedence_law_cpus(file_value, zerg, mahabharatha, cli):
    text = None if file_value is None else f"resources:\n  container_cpu_limit: {file_value!r}\n"
    environ = {}
    if zerg is not None:
        environ["ZERG_CONTAINER_CPUS"] = repr(zerg)
    if mahabharatha is not None:
        environ["MAHABHARATHA_CONTAINER_CPUS"] = repr(mahabharatha)
    winner = next(v for v in (cli, mahabharatha, zerg, file_value, 2.0) if v is not None)
    got = load_config(PATH, text, environ, {"resources.container_cpu_limit": cli}).resources.container_cpu_limit
    assert got == winner


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.none(), st.sampled_from(["subprocess", "container"])), st.one_of(st.none(), st.sampled_from(["subprocess", "container"])))
def test_precedence_law_mode(file_value, cli):
    text = None if file_value is None else f"workers:\n  launcher_type: {file_value}\n"
    winner = next(v for v in (cli, file_value, "subprocess") if v is not None)
    assert load_config(PATH, text, {}, {"workers.launcher_type": cli}).workers.launcher_type == winner


# Random structures: whatever YAML produces, the result is a Config or a ConfigError, never anything else.
_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["4g", "container", "subprocess", "mahabharatha-worker", "1.5", "-1g", ".."]),
)
_KEYS = st.sampled_from(
    ["workers", "resources", "security", "max_concurrent", "timeout_minutes", "retry_attempts", "launcher_type",
     "container_prefix", "agent_command", "cpu_cores", "memory_gb", "container_memory_limit",
     "container_cpu_limit", "container_image", "pids_limit", "container_readonly", "no_new_privileges",
     "drop_capabilities", "extra"]
) | st.text(max_size=6) | st.integers(-3, 3)
_TREE = st.recursive(
    _SCALAR,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=12,
)


def _assert_config_or_config_error(text):
    try:
        result = load(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(result, Config)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["workers", "resources", "security"]), st.dictionaries(_KEYS, _TREE, max_size=4), max_size=3) | _TREE)
def test_fuzzed_structures_only_raise_config_error(tree):
    _assert_config_or_config_error(yaml.safe_dump(tree, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("workers:resources- []{}'\"&*!#|>\n\t 0123456789.,?@`%")), max_size=60))
def test_fuzzed_yaml_text_only_raises_config_error(text):
    _assert_config_or_config_error(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_safe_name_problem_total(name):
    problem = safe_name_problem(name)
    if problem is None:
        assert "/" not in name and ".." not in name and not name.startswith((".", "-"))
