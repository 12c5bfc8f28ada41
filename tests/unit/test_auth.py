"""Auth discovery: environment first, else the repo's .env; home entries as handed in; values stay secret."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mahabharatha.core.auth import discover_auth
from mahabharatha.core.secret import Secret

KEY = "sk-ant-api03-" + "A" * 40
TOKEN = "sk-ant-oat01-" + "B" * 40
DOTENV = "/repo/.env"


def discover(environ=None, dotenv=None, claude_dir=False, claude_json=False, credentials=None, claude_json_text=None):
    return discover_auth(
        environ=environ or {}, dotenv_text=dotenv, dotenv_path=DOTENV, home="/home/u",
        has_claude_dir=claude_dir, has_claude_json=claude_json, claude_credentials=credentials,
        claude_json_text=claude_json_text,
    )


def test_nothing_found():
    summary, secrets = discover()
    assert secrets == ()
    assert summary.api_key_source is None and summary.oauth_token_source is None and not summary.oauth


def test_environment_wins_over_dotenv():
    summary, secrets = discover({"ANTHROPIC_API_KEY": KEY}, "ANTHROPIC_API_KEY=other-value-xxxxxxxxxxxx\n")
    assert summary.api_key_source == "environment"
    assert secrets[0].name == "ANTHROPIC_API_KEY" and secrets[0].value == Secret(KEY)
    assert secrets[0].source == "environment"


def test_dotenv_used_when_environment_lacks_it_or_is_empty():
    for environ in ({}, {"ANTHROPIC_API_KEY": ""}, {"ANTHROPIC_API_KEY": "  "}):
        summary, secrets = discover(environ, f'export ANTHROPIC_API_KEY="{KEY}"  # mine\n')
        assert summary.api_key_source == DOTENV
        assert secrets == (secrets[0],) and secrets[0].value.reveal() == KEY and secrets[0].source == DOTENV


def test_key_name_matches_exactly():
    summary, secrets = discover({"ANTHROPIC_API_KEY_OLD": KEY}, f"ANTHROPIC_API_KEY_OLD={KEY}\nX_ANTHROPIC_API_KEY={KEY}\n")
    assert secrets == () and summary.api_key_source is None


def test_empty_dotenv_value_counts_as_absent():
    summary, secrets = discover({}, "ANTHROPIC_API_KEY=\nCLAUDE_CODE_OAUTH_TOKEN=''\n")
    assert secrets == () and summary.api_key_source is None and summary.oauth_token_source is None


def test_oauth_token_and_key_both_carried_sorted():
    summary, secrets = discover({"CLAUDE_CODE_OAUTH_TOKEN": TOKEN}, f"ANTHROPIC_API_KEY={KEY}\n")
    assert [s.name for s in secrets] == ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"]
    assert summary.api_key_source == DOTENV and summary.oauth_token_source == "environment"


@pytest.mark.parametrize(("claude_dir", "claude_json"), [(True, False), (False, True), (True, True)])
def test_home_entries_as_handed(claude_dir, claude_json):
    summary, secrets = discover(claude_dir=claude_dir, claude_json=claude_json)
    assert summary.claude_dir == ("/home/u/.claude" if claude_dir else None)
    assert summary.claude_json == ("/home/u/.claude.json" if claude_json else None)
    assert not summary.oauth and secrets == ()  # no credentials file: nothing to copy


CREDENTIALS = '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-' + "A" * 40 + '", "refreshToken": "r"}}'


def test_a_host_login_is_copied_as_one_secret_never_mounted():
    account = {"emailAddress": "u@example.invalid", "organizationUuid": "o"}
    import json

    summary, secrets = discover(
        claude_dir=True, claude_json=True, credentials=CREDENTIALS,
        claude_json_text=json.dumps({"oauthAccount": account, "projects": {"/x": {}}}),
    )
    assert summary.oauth and summary.claude_login_copied == "/home/u/.claude/.credentials.json"
    (seed,) = secrets
    assert seed.name == "MAHABHARATHA_CLAUDE_SEED" and seed.source == "/home/u/.claude/.credentials.json"
    data = json.loads(seed.value.reveal())
    assert data == {"credentials": CREDENTIALS, "account": account}  # the account entry only, not the history
    assert "sk-ant-oat01" not in repr(summary) + repr(secrets)


def test_an_api_key_or_token_means_no_login_is_copied():
    for environ in ({"ANTHROPIC_API_KEY": KEY}, {"CLAUDE_CODE_OAUTH_TOKEN": KEY}):
        summary, secrets = discover(environ, claude_dir=True, credentials=CREDENTIALS)
        assert [s.name for s in secrets] != ["MAHABHARATHA_CLAUDE_SEED"] and not summary.oauth
        assert "MAHABHARATHA_CLAUDE_SEED" not in [s.name for s in secrets]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=20, max_size=60),
       st.booleans())
def test_secret_never_shown_in_summary_or_repr(secret, from_env):
    environ = {"ANTHROPIC_API_KEY": secret} if from_env else {}
    summary, secrets = discover(environ, None if from_env else f"ANTHROPIC_API_KEY='{secret}'\n")
    assert secrets[0].value.reveal() == secret
    for shown in (repr(summary), repr(secrets), str(secrets[0].value), f"{secrets[0].value}"):
        assert secret not in shown
