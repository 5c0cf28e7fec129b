"""`orchestrator users ...` and `orchestrator tokens ...`, checked against a running app: what the CLI
does, every web process sees at once (the app's token cache is warm before each revocation)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import main
from orchestrator.models import User, utcnow
from orchestrator.settings import Settings
from tests.web.test_dashboard import login


@pytest.fixture
def cli(db, redis, migrated: Settings):
    env = {"DATABASE_URL": migrated.database_url, "ORCHESTRATOR_DATA_DIR": str(migrated.data_dir),
           "SECRET_KEY": migrated.secret_key, "REDIS_URL": migrated.redis_url or "",
           "REDIS_KEY_PREFIX": migrated.redis_key_prefix}

    def invoke(*args: str, stdin: str | None = None):
        return CliRunner().invoke(main, list(args), env=env, input=stdin)

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def clean_error(result, text: str) -> None:
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exception
    assert text in result.output and "Traceback" not in result.output


def test_create_with_a_hidden_prompt_or_stdin_and_list(cli, client, db) -> None:
    out = ok(cli("users", "create", "alice", "--admin", "--email", "alice@example.com",
                 stdin="correct horse\ncorrect horse\n"))
    assert "created alice" in out and "as an admin" in out
    assert "correct horse" not in out  # the prompt does not echo
    ok(cli("users", "create", "bob", "--password-stdin", stdin="battery staple\n"))
    ok(cli("users", "create", "robot", "--no-password"))
    rows = [json.loads(line) for line in ok(cli("users", "list", "--json")).splitlines()]
    assert [(r["username"], r["is_admin"], r["is_active"]) for r in rows] == [
        ("alice", True, True), ("bob", False, True), ("robot", False, True)]
    assert "bob" in ok(cli("users", "list"))
    assert login(client, "alice", "correct horse").status_code == 302
    assert login(client, "bob", "battery staple").status_code == 302
    with db.reading() as s:
        assert s.scalar(select(User.password_hash).where(User.username == "robot")) is None


def test_bad_input_is_a_one_line_error(cli) -> None:
    clean_error(cli("users", "create", "bad name", "--password-stdin", stdin="long enough\n"), "username")
    clean_error(cli("users", "create", "carl", "--password-stdin", stdin="short\n"), "password")
    clean_error(cli("users", "create", "carl", "--password-stdin", stdin=""), "empty")
    clean_error(cli("users", "create", "carl", stdin="one password\nanother one\n"), "Error")
    ok(cli("users", "create", "carl", "--password-stdin", stdin="long enough\n"))
    clean_error(cli("users", "create", "CARL", "--password-stdin", stdin="long enough\n"), "taken")
    clean_error(cli("users", "deactivate", "nobody"), "No user named nobody")
    clean_error(cli("tokens", "issue", "carl", "--expires-in", "soon"), "--expires-in")
    clean_error(cli("tokens", "issue", "carl", "--expires-at", "2001-01-01"), "future")
    clean_error(cli("tokens", "revoke", "cred_nothing"), "not found")


def test_tokens_issue_list_revoke(cli, client) -> None:
    ok(cli("users", "create", "alice", "--no-password"))
    result = cli("tokens", "issue", "alice", "--name", "ci", "--expires-in", "30d")
    token = ok(result).splitlines()[0]
    assert token.startswith("usr_") and result.stdout.strip() == token  # alone on standard output
    assert "not shown again" in result.stderr
    assert client.get("/api/me", headers=bearer(token)).json["username"] == "alice"  # cached from now on

    rows = [json.loads(line) for line in ok(cli("tokens", "list", "alice", "--json")).splitlines()]
    (row,) = rows
    assert row["name"] == "ci" and row["status"] == "active" and token not in json.dumps(rows)
    expires = utcnow() + timedelta(days=30)
    assert abs((expires - _parse(row["expires_at"])).total_seconds()) < 300
    assert token not in ok(cli("tokens", "list", "alice"))

    assert f"revoked {row['id']}" in ok(cli("tokens", "revoke", row["id"]))
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    assert json.loads(ok(cli("tokens", "list", "alice", "--json")))["status"] == "revoked"


def test_deactivate_activate_and_set_password_reach_the_app_at_once(cli, client, app) -> None:
    ok(cli("users", "create", "alice", "--admin", "--password-stdin", stdin="correct horse\n"))
    ok(cli("users", "create", "bob", "--admin", "--password-stdin", stdin="battery staple\n"))
    token = ok(cli("tokens", "issue", "alice")).splitlines()[0]
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    browser = app.test_client()
    login(browser, "alice", "correct horse")
    assert browser.get("/api/executions").status_code == 200

    ok(cli("users", "set-password", "alice", "--password-stdin", stdin="a new password\n"))
    assert browser.get("/api/executions").status_code == 401  # sessions end
    assert client.get("/api/me", headers=bearer(token)).status_code == 200  # tokens stay
    assert login(browser, "alice", "a new password").status_code == 302

    assert "deactivated alice" in ok(cli("users", "deactivate", "alice"))
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    assert browser.get("/api/executions").status_code == 401
    assert login(browser, "alice", "a new password").status_code == 401
    row = next(json.loads(line) for line in ok(cli("users", "list", "--json")).splitlines()
               if json.loads(line)["username"] == "alice")
    assert not row["is_active"] and row["deactivated_at"]

    ok(cli("users", "activate", "alice"))
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    ok(cli("users", "deactivate", "alice"))
    clean_error(cli("users", "deactivate", "bob"), "last active admin")


def _parse(iso: str):
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00"))
