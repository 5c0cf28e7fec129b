"""`orchestrator agents ...`: an agent's request signing (orchestrator/signing.py), from the host.

The same as `POST /api/agents/{id}/signing-secret` and `PATCH /api/agents/{id}`, for an operator at
the console (as an admin: any agent). A new secret is printed once, alone on standard output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click
import redis as redis_lib

from cli.errors import REDIS_AFTER_COMMIT, one_line_errors
from orchestrator.agents import rotate_signing_secret, set_signing
from orchestrator.credentials import Principal
from orchestrator.db import Database
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.revocation import announce
from orchestrator.settings import Settings
from orchestrator.signing import SIGNING_MODES

_CONSOLE = Principal("user", "cli", is_admin=True)
T = TypeVar("T")


def _change(change: Callable[..., T]) -> T:
    """Run `change(session)`, commit, then tell the web processes, which cache signing with the principal."""
    settings = Settings.from_env()
    db = Database(settings)
    try:
        with db.unit_of_work() as s:
            result = change(s)
    finally:
        db.dispose()
    r = redis_lib.Redis.from_url(resolved_redis_url(settings.redis_url, settings.data_dir))
    try:
        announce(r, settings.redis_key_prefix)
    finally:
        r.close()
    return result


@click.group()
def agents() -> None:
    """Agents' request signing."""


@agents.command("signing-secret")
@click.argument("agent_id")
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def signing_secret(agent_id: str) -> None:
    """Issue AGENT_ID a new signing secret (printed once); the old one stops working at once."""
    click.echo(_change(lambda s: rotate_signing_secret(s, _CONSOLE, agent_id)[1]))


@agents.command("signing")
@click.argument("agent_id")
@click.argument("mode", type=click.Choice(SIGNING_MODES))
@one_line_errors(redis_hint=REDIS_AFTER_COMMIT)
def signing(agent_id: str, mode: str) -> None:
    """Make AGENT_ID's requests need a signature (required) or only check one it sends (optional)."""
    _change(lambda s: set_signing(s, _CONSOLE, agent_id, mode))
    click.echo(f"{agent_id}: signing {mode}")
