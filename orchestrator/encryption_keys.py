"""The database's side of the encryption keys: the startup check, and rotation.

Which columns are encrypted is read from the models (every column typed `EncryptedText` or
`EncryptedJSON`), so a column encrypted tomorrow is checked and rotated with the others.

Rotation (`orchestrator keys rotate`) puts a new key first in the key file, then re-encrypts, table by
table in batches of rows, every value that only an older key opens. Each batch is its own
transaction and writes a value only while it is still the one it read, so the web and the workers go
on meanwhile, and an interrupted run resumes by running again (`--resume`: values already under the
newest key are skipped). Running processes pick the new key up by themselves (`orchestrator/encryption.py`).
Old keys leave the file (`--drop-old`) only after a last pass has found nothing left under them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Column, Table, Text, bindparam, func, inspect, select, tuple_, update
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.exc import DBAPIError, IntegrityError

from orchestrator.db import Database, is_unreachable
from orchestrator.encryption import EncryptedJSON, EncryptedText, EncryptionKeyError, Keyring, fingerprint, new_key
from orchestrator.models import Base, EncryptionCheck
from orchestrator.settings import write_encryption_keys

log = logging.getLogger(__name__)

CHECK_TEXT = "orchestrator: the keys of this database"
# Progress of a pass: table, rows done, rows in the table, values re-encrypted so far in it.
Progress = Callable[[str, int, int, int], None]


def _read_check(db: Database) -> str | None:
    with db.reading() as session:
        if not inspect(session.connection()).has_table(EncryptionCheck.__tablename__):
            return None  # not migrated to 0006 yet: nothing is encrypted
        check = session.get(EncryptionCheck, 1)  # decrypting it raises EncryptionKeyError
        return check.token if check is not None else ""


def _write_check(db: Database) -> str | None:
    try:
        with db.unit_of_work() as session:
            session.add(EncryptionCheck(id=1, token=CHECK_TEXT))
    except IntegrityError:  # another process wrote it first: ours must read theirs
        return _read_check(db)
    return CHECK_TEXT


def check_keys(db: Database) -> None:
    """Refuse to go on with keys that cannot read what this database holds: such a process would fail
    on every stored payload, and write new ones that the other processes cannot read.

    The first process to find no check row writes one under its newest key. A database that cannot
    be reached just now is let be: the process answers 503 until it can, as it does without this check.
    """
    try:
        token = _read_check(db)
        if token == "":
            token = _write_check(db)
    except EncryptionKeyError:
        raise _refusal(db.keyring) from None
    except DBAPIError as exc:
        if not is_unreachable(exc):
            raise
        log.warning("encryption keys not checked: the database cannot be reached (%s)", type(exc.orig).__name__)
        return
    if token not in (None, CHECK_TEXT):
        raise _refusal(db.keyring)


def _refusal(keyring: Keyring) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"the encryption keys from {keyring.source} cannot read this database: its data was encrypted under "
        "another key. Restore the key file that was in use (or set ENCRYPTION_KEYS to its keys), then start "
        "again; a process going on with these keys would write data that no other process could read.")


def encrypted_columns() -> list[tuple[Table, list[Column]]]:
    """Every table with encrypted columns, and those columns, in the models' order."""
    found = []
    for table in Base.metadata.sorted_tables:
        cols = [c for c in table.columns if isinstance(c.type, EncryptedText | EncryptedJSON)]
        if cols:
            found.append((table, cols))
    return found


def _reencrypt_table(db: Database, table: Table, cols: list[Column], batch_size: int,
                     progress: Progress | None) -> int:
    # The columns as the database has them (tokens, plain TEXT): nothing here decrypts more than the
    # rotation itself needs.
    pk_cols = list(table.primary_key.columns)
    raw = sql_table(table.name, *(sql_column(c.name, c.type) for c in pk_cols),
                    *(sql_column(c.name, Text()) for c in cols))
    pk = [raw.c[c.name] for c in pk_cols]
    keyring = db.keyring
    with db.engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(raw)) or 0
    done = rotated = 0
    after: tuple | None = None
    while True:
        with db.engine.begin() as conn:
            query = select(raw).order_by(*pk).limit(batch_size)
            if after is not None:
                query = query.where(tuple_(*pk) > tuple_(*after))
            rows = conn.execute(query).all()
            for col in cols:
                changes = [{**{f"pk_{c.name}": row._mapping[c.name] for c in pk_cols},
                            "old_value": row._mapping[col.name], "new_value": keyring.rotate(row._mapping[col.name])}
                           for row in rows
                           if row._mapping[col.name] is not None and not keyring.is_current(row._mapping[col.name])]
                if changes:
                    # Only while the value is still the one read: a worker's newer write stays (and is
                    # not counted; a later pass finds it if it is under an older key).
                    rotated += conn.execute(update(raw).where(*(c == bindparam(f"pk_{c.name}") for c in pk),
                                                              raw.c[col.name] == bindparam("old_value"))
                                            .values({col.name: bindparam("new_value")}), changes).rowcount
        if not rows:
            if done == 0 and progress is not None:
                progress(table.name, 0, total, 0)
            break
        done += len(rows)
        after = tuple(rows[-1]._mapping[c.name] for c in pk_cols)
        if progress is not None:
            progress(table.name, done, total, rotated)
    return rotated


def reencrypt(db: Database, *, batch_size: int = 500, progress: Progress | None = None) -> int:
    """Encrypt again under the newest key every value that only an older key opens; returns how many.

    Batches of `batch_size` rows, each in its own transaction; safe to interrupt and to run again."""
    return sum(_reencrypt_table(db, table, cols, batch_size, progress) for table, cols in encrypted_columns())


def add_key(keyring: Keyring) -> str:
    """Put a new key first in the key file (the others stay, to decrypt); returns its fingerprint."""
    if keyring.path is None:
        raise EncryptionKeyError(
            "the keys come from ENCRYPTION_KEYS, which this command cannot change: put a new key "
            "(`orchestrator keys generate`) first in that list, restart every process with it, then run "
            "`orchestrator keys rotate --resume`")
    keyring.reload_if_changed()
    key = new_key()
    write_encryption_keys(keyring.path, (key, *keyring.keys))
    keyring.reload_if_changed()
    return fingerprint(key)


def drop_old_keys(db: Database, *, batch_size: int = 500, grace_seconds: float = 15.0,
                  progress: Progress | None = None, sleep: Callable[[float], None] = time.sleep) -> tuple[str, ...]:
    """Re-encrypt what is left under older keys, then remove them from the key file; returns their
    fingerprints. (With ENCRYPTION_KEYS nothing is removed: every value is under the first key, and the
    others can be taken out of the list.)

    A process that read the key file before the newest key was added writes under the old one until
    it looks again (`RELOAD_CHECK_SECONDS`), and its open transaction commits after that: the grace
    lets both happen before the pass that has to find everything. The old keys stay in this process's
    memory for one more pass after they leave the file, for what committed in between."""
    keyring = db.keyring
    reencrypt(db, batch_size=batch_size, progress=progress)
    sleep(grace_seconds)
    reencrypt(db, batch_size=batch_size, progress=progress)
    old = tuple(fingerprint(k) for k in keyring.keys[1:])
    if keyring.path is not None and old:
        write_encryption_keys(keyring.path, keyring.keys[:1])
        reencrypt(db, batch_size=batch_size, progress=progress)
    return old
