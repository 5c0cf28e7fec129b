"""`orchestrator users ...` and `orchestrator tokens ...`: operators' accounts and their API tokens.

Users are named by username here (the API names them by id). Passwords are read from a hidden
prompt, or from the first line of standard input with --password-stdin; never from an argument,
which would land in the shell's history and in `ps`. A token is printed once, alone on standard
output, when it is issued; listings show its id, name and first characters only.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import click
import redis as redis_lib

from cli.errors import REDIS_AFTER_COMMIT, one_line_errors
from orchestrator.db import Database
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.models import utcnow
from orchestrator.settings import Settings
from orchestrator.users import Accounts, NewUser, token_view, user_view

_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@contextmanager
def _accounts() -> Iterator[Accounts]:
    settings = Settings.from_env()
    db = Database(settings)
    r = redis_lib.Redis.from_url(resolved_redis_url(settings.redis_url, settings.data_dir))
    try:
        yield Accounts(db, r, settings.redis_key_prefix)
    finally:
        r.close()
        db.dispose()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("--password-stdin: standard input is empty.")
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _echo_rows(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    for row in rows:
        click.echo(json.dumps(row) if as_json else line(row))


# -- users ------------------------------------------------------------------------------------------

@click.group()
def users() -> None:
    """Operators' accounts (who can log in to the dashboard and hold API tokens)."""


@users.command("create")
@click.argument("username")
@click.option("--admin", is_flag=True, help="may manage users and see every execution")
@click.option("--display-name", default=None)
@click.option("--email", default=None)
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@click.option("--no-password", is_flag=True, help="no dashboard login; API tokens only")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def create_user(username: str, admin: bool, display_name: str | None, email: str | None, password_stdin: bool,
                no_password: bool) -> None:
    """Create user USERNAME (asks for its password)."""
    password = None if no_password else _password(password_stdin)
    with _accounts() as accounts:
        user = accounts.create(NewUser(username, password, admin, display_name, email))
    click.echo(f"created {user.username} ({user.id}){' as an admin' if user.is_admin else ''}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def list_users(as_json: bool) -> None:
    """Every user: username, id, admin, active."""
    with _accounts() as accounts:
        rows = [user_view(u) for u in accounts.list()]
    _echo_rows(rows, as_json, lambda u: (
        f"{u['username']}  {u['id']}  {'admin' if u['is_admin'] else 'operator'}  "
        f"{'active' if u['is_active'] else 'deactivated ' + (u['deactivated_at'] or '')}  created={u['created_at']}"))


def _access_command(verb: str, help_text: str) -> None:
    @users.command(verb, help=help_text)
    @click.argument("username")
    @one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
    def command(username: str) -> None:
        with _accounts() as accounts:
            getattr(accounts, verb)(accounts.id_of(username))
        click.echo(f"{verb}d {username}")


_access_command("deactivate", "Deactivate USERNAME: its sessions, tokens, stream tokens and open streams stop "
                              "working at once.")
_access_command("activate", "Activate USERNAME again (its tokens that were not revoked work again; it logs in anew).")


@users.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def set_password(username: str, password_stdin: bool) -> None:
    """Set USERNAME's password; its dashboard sessions end (its API tokens stay)."""
    password = _password(password_stdin)
    with _accounts() as accounts:
        accounts.set_password(accounts.id_of(username), password)
    click.echo(f"password of {username} set; its dashboard sessions have ended")


# -- tokens -----------------------------------------------------------------------------------------

def _expiry(expires_in: str | None, expires_at: datetime | None) -> datetime | None:
    if expires_in is not None and expires_at is not None:
        raise click.UsageError("Give --expires-in or --expires-at, not both.")
    if expires_at is not None:
        return expires_at.astimezone() if expires_at.tzinfo is None else expires_at  # naive: local time
    if expires_in is None:
        return None
    match = _DURATION.fullmatch(expires_in.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter("a duration such as 90m, 12h, 30d or 8w", param_hint="--expires-in")
    return utcnow() + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group()
def tokens() -> None:
    """Users' API tokens (`Authorization: Bearer <token>`)."""


@tokens.command("issue")
@click.argument("username")
@click.option("--name", default=None, help="what the token is for, shown in listings")
@click.option("--expires-in", default=None, help="e.g. 90m, 12h, 30d, 8w")
@click.option("--expires-at", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="a date or time (local time)")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def issue(username: str, name: str | None, expires_in: str | None, expires_at: datetime | None) -> None:
    """Issue a token to USERNAME: printed once, alone on standard output; keep it now."""
    expiry = _expiry(expires_in, expires_at)
    with _accounts() as accounts:
        cred, token = accounts.issue_token(accounts.id_of(username), name, expiry)
    click.echo(token)
    view = token_view(cred)
    click.echo(f"issued {view['id']} ({view['name'] or 'no name'}) to {username}, "
               f"expires {view['expires_at'] or 'never'}; it is not shown again", err=True)


@tokens.command("list")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def list_tokens(username: str, as_json: bool) -> None:
    """USERNAME's tokens, newest first: id, name, first characters, status, expiry."""
    with _accounts() as accounts:
        rows = [token_view(t) for t in accounts.tokens(accounts.id_of(username))]
    _echo_rows(rows, as_json, lambda t: (
        f"{t['id']}  {t['name'] or '-'}  {t['prefix']}…  {t['status']}  created={t['created_at']}  "
        f"expires={t['expires_at'] or 'never'}"))


@tokens.command("revoke")
@click.argument("token_id")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def revoke(token_id: str) -> None:
    """Revoke token TOKEN_ID (see `tokens list`): refused at once by every web process."""
    with _accounts() as accounts:
        accounts.revoke_token(accounts.owner_of_token(token_id), token_id)
    click.echo(f"revoked {token_id}")
