"""Auth discovery: which credentials the workers get, and where each came from.

``ANTHROPIC_API_KEY`` and ``CLAUDE_CODE_OAUTH_TOKEN`` are taken from the environment first, else from the
repository's ``.env`` (the repo root, never the current directory). An empty value counts as absent. The
``~/.claude`` directory and ``~/.claude.json`` file are mounted when present; the caller says whether they
exist, so this module stays pure and tests never look at the real home directory. Values are wrapped in
:class:`~mahabharatha.core.secret.Secret` at once; only the source (never the value) is recorded.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from .envfile import parse_dotenv
from .model import AuthSummary, SecretEnvVar
from .secret import Secret

__all__ = ["discover_auth", "API_KEY_VAR", "OAUTH_TOKEN_VAR", "SECRET_VARS", "ENVIRONMENT_SOURCE"]

API_KEY_VAR = "ANTHROPIC_API_KEY"
OAUTH_TOKEN_VAR = "CLAUDE_CODE_OAUTH_TOKEN"
SECRET_VARS = (API_KEY_VAR, OAUTH_TOKEN_VAR)  # sorted by name, as the plan carries them
ENVIRONMENT_SOURCE = "environment"


def discover_auth(
    *,
    environ: Mapping[str, str],
    dotenv_text: str | None,
    dotenv_path: str,
    home: str,
    has_claude_dir: bool,
    has_claude_json: bool,
) -> tuple[AuthSummary, tuple[SecretEnvVar, ...]]:
    """Find credentials. ``dotenv_text`` is the content of ``dotenv_path`` (None when it does not exist)."""
    dotenv = parse_dotenv(dotenv_text) if dotenv_text else {}
    secrets: list[SecretEnvVar] = []
    sources: dict[str, str | None] = {}
    for name in SECRET_VARS:
        value, source = environ.get(name, ""), ENVIRONMENT_SOURCE
        if not value.strip():  # empty (or blank) counts as absent
            value, source = dotenv.get(name, ""), dotenv_path
        if value.strip():
            secrets.append(SecretEnvVar(name=name, value=Secret(value), source=source))
            sources[name] = source
        else:
            sources[name] = None
    summary = AuthSummary(
        api_key_source=sources[API_KEY_VAR],
        oauth_token_source=sources[OAUTH_TOKEN_VAR],
        claude_dir=posixpath.join(home, ".claude") if has_claude_dir else None,
        claude_json=posixpath.join(home, ".claude.json") if has_claude_json else None,
    )
    return summary, tuple(secrets)
