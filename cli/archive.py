"""`orchestrator archive run [--older-than 90d] [--dry-run]` and `orchestrator archive restore EXECUTION`:
the event logs of long-ended executions, moved to files and back (`orchestrator/archive.py`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import click

from cli.errors import one_line_errors
from orchestrator.archive import Progress, archive_ended, open_store, restore
from orchestrator.db import Database
from orchestrator.encryption import EncryptionKeyError
from orchestrator.encryption_keys import check_keys
from orchestrator.models import utcnow
from orchestrator.settings import Settings

_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(value: str) -> timedelta:
    """`90d`, `36h`, `45m` (a bare number is days)."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm]?)\s*", value)
    if not match:
        raise click.BadParameter(f"{value!r} is not an age such as 90d, 36h or 45m")
    return timedelta(**{_UNITS[match[2] or "d"]: int(match[1])})


@contextmanager
def _database(settings: Settings) -> Iterator[Database]:
    """The database, its keys checked; keys, folders and settings that fail say so in one line."""
    db = Database(settings)
    try:
        check_keys(db)
        yield db
    except (EncryptionKeyError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()


@click.group()
def archive() -> None:
    """Event logs of executions that ended long ago: archive them to files, restore one."""


def _ran(step: Progress) -> None:
    click.echo(f"[{step.done}/{step.total}] {step.execution_id}: {step.events} events -> {step.location}")


def _would(step: Progress) -> None:
    click.echo(f"[{step.done}/{step.total}] {step.execution_id}: {step.events} events would be archived")


@archive.command("run")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Executions that ended at least this long ago (90d, 36h, 45m). [default: ARCHIVE_AFTER_DAYS]")
@click.option("--dry-run", is_flag=True, help="List what would be archived; change nothing.")
@one_line_errors()
def run(older_than: str | None, dry_run: bool) -> None:
    """Move the events of executions that ended (COMPLETED, FAILED, CANCELLED) before AGE to the archive
    (ARCHIVE_LOCATION): one encrypted, compressed JSON Lines file per execution, rows deleted in batches of
    ARCHIVE_BATCH_SIZE. Beat does the same every ARCHIVE_INTERVAL_SECONDS; an interrupted run is finished
    by the next one."""
    settings = Settings.from_env()
    age = parse_age(older_than) if older_than else timedelta(days=settings.archive_after_days)
    with _database(settings) as db:
        report = archive_ended(db, open_store(settings), utcnow(), age, settings.archive_batch_size,
                               dry_run=dry_run, progress=_would if dry_run else _ran)
    events = sum(step.events for step in report)
    if not report:
        click.echo(f"nothing to archive: no execution ended more than {age} ago keeps its events")
    elif dry_run:
        click.echo(f"dry run: {len(report)} executions, {events} events would be archived")
    else:
        click.echo(f"archived {len(report)} executions, {events} events")


@archive.command("restore")
@click.argument("execution_id")
@one_line_errors()
def restore_command(execution_id: str) -> None:
    """Put an archived execution's events back in the database (same ids, positions and values), then delete
    its archive file. It stays out of the archive for ARCHIVE_AFTER_DAYS after the restore."""
    settings = Settings.from_env()

    def progress(step: Progress) -> None:
        click.echo(f"{step.execution_id}: {step.done}/{step.total} events restored")

    with _database(settings) as db:
        count = restore(db, open_store(settings), execution_id, utcnow(), settings.archive_batch_size, progress)
    click.echo(f"{execution_id}: {count} events restored")
