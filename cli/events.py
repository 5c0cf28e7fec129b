"""`orchestrator events dead-letters [list | requeue ID | drop ID]`: events the workers set aside.

ID is the event id (what `GET /api/events/{id}` names) or the dead-letter entry id.
"""

from __future__ import annotations

import json

import click
import redis as redis_lib

from cli.errors import one_line_errors
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.events.dead_letters import DeadLetters
from orchestrator.settings import Settings
from workers.celery_app import create_celery, drain_trigger


@click.group()
def events() -> None:
    """The event path: what could not be applied."""


def _dead_letters() -> tuple[Settings, DeadLetters]:
    settings = Settings.from_env()
    settings = settings.replace(redis_url=resolved_redis_url(settings.redis_url, settings.data_dir))
    return settings, DeadLetters(redis_lib.Redis.from_url(settings.redis_url or ""), settings.redis_key_prefix)


@events.group("dead-letters", invoke_without_command=True)
@click.pass_context
def dead_letters(ctx: click.Context) -> None:
    """Events that could not be applied (listed when no subcommand is given)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_dead_letters)


@dead_letters.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_dead_letters(limit: int = 100, as_json: bool = False) -> None:
    """The oldest first: id, event, execution, agent, shard, reason, deliveries, when."""
    _, store = _dead_letters()
    rows = store.list(limit)
    for dl in rows:
        if as_json:
            click.echo(json.dumps(dl.to_dict()))
        else:
            click.echo(f"{dl.id}  {dl.event_id or '-'}  execution={dl.execution_id or '-'}  agent={dl.agent_id or '-'}"
                       f"  shard={dl.shard}  reason={dl.reason}  deliveries={dl.deliveries}  at={dl.failed_at}")
    if not as_json:
        click.echo(f"{store.count()} dead letter(s)", err=True)


@dead_letters.command("requeue")
@click.argument("ident")
@one_line_errors()
def requeue(ident: str) -> None:
    """Put one back at the end of its shard (after the cause is fixed) and trigger a drain."""
    settings, store = _dead_letters()
    celery_app = create_celery(settings)
    dl = store.requeue(ident, settings.ingest_shards, drain_trigger(celery_app))
    click.echo(f"requeued {dl.event_id or dl.id}")


@dead_letters.command("drop")
@click.argument("ident")
@one_line_errors()
def drop(ident: str) -> None:
    """Forget one for good (its outcome stays `rejected`)."""
    _, store = _dead_letters()
    dl = store.drop(ident)
    click.echo(f"dropped {dl.event_id or dl.id}")
