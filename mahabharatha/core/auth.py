"""Auth discovery: which credentials the workers get, and where each came from.

``ANTHROPIC_API_KEY`` and ``CLAUDE_CODE_OAUTH_TOKEN`` are taken from the environment first, else from the
repository's ``.env`` (the repo root, never the current directory). An empty value counts as absent. With
neither, a login on the host (``~/.claude/.credentials.json``) is copied into each worker: the caller hands
the file's text (and ``~/.claude.json``'s account entry), the plan carries them as one secret environment
variable, and each worker writes its own copy into its container's home. Nothing of the host's ``~/.claude``
or ``~/.claude.json`` is mounted, so nothing a container does can change them. This module stays pure: tests
never look at the real home directory. Values are wrapped in :class:`~mahabharatha.core.secret.Secret` at
once; only the source (never the value) is recorded.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

from .envfile import parse_dotenv
from .model import AuthSummary, SecretEnvVar
from .secret import Secret

__all__ = ["discover_auth", "API_KEY_VAR", "OAUTH_TOKEN_VAR", "CLAUDE_SEED_VAR", "SECRET_VARS", "ENVIRONMENT_SOURCE"]

API_KEY_VAR = "ANTHROPIC_API_KEY"
OAUTH_TOKEN_VAR = "CLAUDE_CODE_OAUTH_TOKEN"
SECRET_VARS = (API_KEY_VAR, OAUTH_TOKEN_VAR)  # sorted by name, as the plan carries them
ENVIRONMENT_SOURCE = "environment"
# {"credentials": <.credentials.json text>, "account": <~/.claude.json's oauthAccount or null>}: the worker
# writes ~/.claude/.credentials.json and a ~/.claude.json with onboarding done from it, in its own home.
CLAUDE_SEED_VAR = "MAHABHARATHA_CLAUDE_SEED"


def discover_auth(
    *,
    environ: Mapping[str, str],
    dotenv_text: str | None,
    dotenv_path: str,
    home: str,
    has_claude_dir: bool,
    has_claude_json: bool,
    claude_credentials: str | None = None,
    claude_json_text: str | None = None,
) -> tuple[AuthSummary, tuple[SecretEnvVar, ...]]:
    """Find credentials. ``dotenv_text`` is the content of ``dotenv_path`` (None when it does not exist);
    ``claude_credentials`` and ``claude_json_text`` the contents of ``~/.claude/.credentials.json`` and
    ``~/.claude.json`` (None when absent or unreadable)."""
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
    copied = None
    if not secrets and claude_credentials and claude_credentials.strip():
        copied = posixpath.join(home, ".claude", ".credentials.json")
        seed = json.dumps({"credentials": claude_credentials, "account": _account(claude_json_text)}, sort_keys=True)
        secrets.append(SecretEnvVar(name=CLAUDE_SEED_VAR, value=Secret(seed), source=copied))
    summary = AuthSummary(
        api_key_source=sources[API_KEY_VAR],
        oauth_token_source=sources[OAUTH_TOKEN_VAR],
        claude_dir=posixpath.join(home, ".claude") if has_claude_dir else None,
        claude_json=posixpath.join(home, ".claude.json") if has_claude_json else None,
        claude_login_copied=copied,
    )
    return summary, tuple(sorted(secrets, key=lambda e: e.name))


def _account(text: str | None) -> object:
    """The ``oauthAccount`` entry of ``~/.claude.json`` (who is logged in), or None."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return data.get("oauthAccount") if isinstance(data, dict) else None
