"""`orchestrator keys rotate [--resume] [--drop-old]` and `orchestrator keys generate`: the keys of the
personal data encrypted at rest (`orchestrator/encryption.py`, `orchestrator/encryption_keys.py`)."""

from __future__ import annotations

import click

from orchestrator.db import Database
from orchestrator.encryption import RELOAD_CHECK_SECONDS, EncryptionKeyError, fingerprint, new_key
from orchestrator.encryption_keys import add_key, check_keys, drop_old_keys, reencrypt
from orchestrator.settings import Settings


@click.group()
def keys() -> None:
    """Encryption keys of the personal data stored in the database."""


def _progress(table: str, done: int, total: int, rotated: int) -> None:
    click.echo(f"  {table}: {done}/{total} rows, {rotated} values re-encrypted")


@keys.command("rotate")
@click.option("--resume", is_flag=True, help="Add no key: finish re-encrypting under the newest one.")
@click.option("--drop-old", is_flag=True, help="Then remove the older keys, once nothing is left under them.")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows per transaction.")
@click.option("--grace", default=15.0, show_default=True, type=click.FloatRange(0),
              help="Seconds --drop-old gives running processes to take up the newest key before its last pass.")
def rotate(resume: bool, drop_old: bool, batch_size: int, grace: float) -> None:
    """Put a new key first in the key file and re-encrypt every stored value under it, in batches.

    Running web and worker processes read the key file again by themselves (within a few seconds when
    they write, at once when they meet a value under a key they do not know); none needs a restart.
    Interrupted, `--resume` goes on where it stopped. The older keys stay in the file to decrypt
    until `--drop-old`.
    """
    db = Database(Settings.from_env())
    try:
        check_keys(db)
        if not resume:
            click.echo(f"new key {add_key(db.keyring)} added first in {db.keyring.path}; running processes "
                       f"encrypt with it within {RELOAD_CHECK_SECONDS:.0f} s")
        click.echo("re-encrypting under the newest key:")
        total = reencrypt(db, batch_size=batch_size, progress=_progress)
        click.echo(f"done: {total} values re-encrypted; every value is now under key {fingerprint(db.keyring.keys[0])}")
        if drop_old:
            _drop_old(db, batch_size, grace)
    except EncryptionKeyError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.dispose()


def _drop_old(db: Database, batch_size: int, grace: float) -> None:
    click.echo(f"dropping the older keys: a last pass after {grace:.0f} s for what running processes wrote meanwhile")
    dropped = drop_old_keys(db, batch_size=batch_size, grace_seconds=grace, progress=_progress)
    if not dropped:
        click.echo("no older key to drop")
    elif db.keyring.path is None:
        click.echo(f"every value is under the first key of ENCRYPTION_KEYS: remove the others ({', '.join(dropped)}) "
                   "from it and restart the processes")
    else:
        click.echo(f"dropped {len(dropped)} older keys ({', '.join(dropped)}) from {db.keyring.path}")


@keys.command("generate")
def generate() -> None:
    """Print a new key, for an ENCRYPTION_KEYS list (newest first)."""
    click.echo(new_key())
