"""Archival: the event log of an execution that ended long ago leaves the hot table for a file.

Why: events are most of the database (guide §8: about 1 GB a month), and nobody reads an old log
but now and then. An execution that ended (COMPLETED, FAILED, CANCELLED) more than
ARCHIVE_AFTER_DAYS ago keeps its row, tasks and subtasks (its summary), and its events move to one
file under ARCHIVE_LOCATION; the row says where (`archive_location`), when (`archived_at`) and how
many (`archived_events`). `restore` puts them back, same ids, positions (`seq`) and values.

The file, `<execution id>.<random>.jsonl.gz.fernet`: lines, each a Fernet token made with the
database's keyring (newest key), whose plaintexts, joined, are one gzip stream of JSON Lines: a
header (`archive_format`, `execution_id`), every event row in position order (all its columns,
encrypted ones decrypted, times in ISO 8601), then `{"archive_end": <count>}`. Event data is
personal data, encrypted at rest, so the archive is too; chunks of about 1 MiB keep both ends
streaming. A key that `keys rotate --drop-old` drops can no longer open the archives written under
it: restore those first (or keep the old key).

How, for each execution, so that no step holds a lock for long and a crash anywhere is resumed:
1. its events are read in pages, written to a file under a fresh name, fsynced and renamed into
   place; nothing is deleted yet, so the file has every committed event;
2. one short transaction claims the execution for that file (`archive_location`, only where none is
   set): of two runs racing, the loser deletes its own file and moves on;
3. the rows named in the file are deleted in batches of ARCHIVE_BATCH_SIZE, a transaction each;
4. `archived_at` is set. An execution with a location and no `archived_at` is picked up again by
   the next run, which reads the ids back from its file and goes on from step 3.
An event applied after step 1 (an agent's late report on a finished execution) is not in the file
and stays in the table; the event log shows it beside the note that the rest is archived.
A restored execution is not archived again for ARCHIVE_AFTER_DAYS after its restore (`restored_at`).
Positions are unique forever, so restored rows take their old ones back; a live stream replaying
`?since=` an event does not see them (they are older than anything it would be asked for).
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson
from sqlalchemy import and_, delete, func, insert, or_, select, update

from orchestrator.db import Database
from orchestrator.encryption import EncryptionKeyError, Keyring
from orchestrator.errors import Conflict, NotFound
from orchestrator.models import Execution, ExecutionEvent, UTCDateTime
from orchestrator.settings import Settings
from orchestrator.state_machine import FINISHED_STATES

log = logging.getLogger(__name__)

ARCHIVE_FORMAT = 1
SUFFIX = ".jsonl.gz.fernet"
_CHUNK_BYTES = 1 << 20  # compressed bytes per Fernet token
_EVENTS = ExecutionEvent.__table__
_TIMES = frozenset(c.key for c in _EVENTS.columns if isinstance(c.type, UTCDateTime))


class ArchiveDamaged(Conflict):
    code = "archive_damaged"


class ArchiveStore(Protocol):
    """Where archive files live; a location is what `write` returned, kept on the execution."""

    def write(self, name: str, chunks: Iterable[bytes]) -> str: ...

    def read(self, location: str) -> Iterator[bytes]: ...

    def delete(self, location: str) -> None: ...


class FolderStore:
    """Archive files in a local folder (the default: `<data dir>/archive`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, chunks: Iterable[bytes]) -> str:
        """Write the file whole under a temporary name, fsync it, rename it into place: a location
        handed out always names a complete file."""
        self.root.mkdir(parents=True, exist_ok=True)
        path, tmp = self.root / name, self.root / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # personal data: owner only
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return str(path)

    def read(self, location: str) -> Iterator[bytes]:
        if "://" in location:
            raise ArchiveDamaged(f"The archive {location} is not in a folder: set ARCHIVE_LOCATION to its store.",
                                 location=location)
        try:
            with open(location, "rb") as fh:
                yield from fh
        except FileNotFoundError:
            raise ArchiveDamaged(f"The archive file {location} is missing.", location=location) from None

    def delete(self, location: str) -> None:
        Path(location).unlink(missing_ok=True)


class S3Store:
    """Archive files as objects in an S3-compatible bucket (`s3://bucket/prefix`), through boto3.

    An object appears whole or not at all, so no temporary name is needed; the file is spooled to
    local disk first (past 64 MiB) so that the upload knows its size. Credentials and region come
    from boto3's usual sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, ...);
    ARCHIVE_S3_ENDPOINT_URL names another S3-compatible service (MinIO, Ceph, ...).
    """

    def __init__(self, url: str, client: Any) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client

    def _key(self, location: str) -> str:
        bucket, _, key = location.removeprefix("s3://").partition("/")
        if not location.startswith("s3://") or bucket != self.bucket:
            raise ArchiveDamaged(f"The archive {location} is not in the bucket {self.bucket}.", location=location)
        return key

    def write(self, name: str, chunks: Iterable[bytes]) -> str:
        key = f"{self.prefix}/{name}" if self.prefix else name
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as tmp:
            for chunk in chunks:
                tmp.write(chunk)
            tmp.seek(0)
            self.client.upload_fileobj(tmp, self.bucket, key)
        return f"s3://{self.bucket}/{key}"

    def read(self, location: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(location))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ArchiveDamaged(f"The archive file {location} is missing.", location=location) from None
            raise
        yield from body.iter_lines(keepends=True)

    def delete(self, location: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(location))


def open_store(settings: Settings) -> ArchiveStore:
    """The store ARCHIVE_LOCATION names: a folder, or `s3://bucket/prefix` (boto3 needed: the `s3` extra)."""
    location = settings.archive_location
    if location.startswith("s3://"):
        try:
            import boto3
        except ImportError:
            raise ValueError("ARCHIVE_LOCATION names an S3 bucket: install boto3 (pip install "
                             "'agent-orchestrator[s3]')") from None
        return S3Store(location, boto3.client("s3", endpoint_url=settings.archive_s3_endpoint_url))
    if "://" in location:
        raise ValueError(f"ARCHIVE_LOCATION must be a folder or s3://bucket/prefix, got {location!r}")
    return FolderStore(Path(location))


# --- the file format ------------------------------------------------------------------------------

def _seal(lines: Iterable[bytes], keyring: Keyring) -> Iterator[bytes]:
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    buf = bytearray()
    for line in lines:
        buf += gz.compress(line)
        if len(buf) >= _CHUNK_BYTES:
            yield keyring.encrypt(bytes(buf)).encode("ascii") + b"\n"
            buf.clear()
    buf += gz.flush()
    yield keyring.encrypt(bytes(buf)).encode("ascii") + b"\n"


def _unseal(chunks: Iterable[bytes], keyring: Keyring, location: str) -> Iterator[dict[str, Any]]:
    gz = zlib.decompressobj(31)
    rest = b""
    try:
        for chunk in chunks:
            if chunk.strip():
                rest += gz.decompress(keyring.decrypt(chunk.strip().decode("ascii")))
                *lines, rest = rest.split(b"\n")
                yield from (orjson.loads(line) for line in lines)
    except (zlib.error, orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveDamaged(f"The archive file {location} is damaged: {exc}.", location=location) from None
    except EncryptionKeyError:
        raise ArchiveDamaged(f"The archive file {location} cannot be decrypted with the encryption keys: it is "
                             "damaged, or was written under a key since dropped.", location=location) from None
    if rest or not gz.eof:
        raise ArchiveDamaged(f"The archive file {location} is cut short.", location=location)


def _event_record(row: Any) -> bytes:
    return orjson.dumps(dict(row._mapping))  # orjson writes datetimes in ISO 8601, microseconds kept


def _event_values(record: dict[str, Any]) -> dict[str, Any]:
    values = {c.key: record.get(c.key) for c in _EVENTS.columns}
    for key in _TIMES:
        if values[key] is not None:
            values[key] = datetime.fromisoformat(values[key])
    return values


def archived_events(store: ArchiveStore, keyring: Keyring, location: str,
                    execution_id: str) -> Iterator[dict[str, Any]]:
    """The event rows of an archive file, in position order, as column values. Raises ArchiveDamaged,
    after the last event, when the file is not whole or not this execution's."""
    records = _unseal(store.read(location), keyring, location)
    header = next(records, None)
    if not header or header.get("archive_format") != ARCHIVE_FORMAT or header.get("execution_id") != execution_id:
        raise ArchiveDamaged(f"{location} is not an archive of execution {execution_id}.", location=location)
    for count, record in enumerate(records):
        if "archive_end" in record:
            if record["archive_end"] != count or next(records, None) is not None:
                break
            return
        yield _event_values(record)
    raise ArchiveDamaged(f"The archive file {location} is cut short.", location=location)


# --- archiving ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """One execution done (or, in a dry run, found): what `archive` and `restore` report as they go."""

    execution_id: str
    events: int
    location: str | None
    done: int
    total: int


def due_for_archival(db: Database, now: datetime, older_than: timedelta) -> list[str]:
    """Executions that ended before `now - older_than` and keep their log in the table (not restored
    within that time either), oldest first; then any archival a crash left under way."""
    cutoff = now - older_than
    due = and_(Execution.status.in_(FINISHED_STATES), Execution.completed_at < cutoff,
               Execution.archive_location.is_(None),
               or_(Execution.restored_at.is_(None), Execution.restored_at < cutoff))
    under_way = and_(Execution.archive_location.is_not(None), Execution.archived_at.is_(None))
    with db.reading() as s:
        return list(s.scalars(select(Execution.id).where(or_(due, under_way))
                              .order_by(Execution.completed_at, Execution.id)))


def _event_lines(db: Database, execution_id: str, page: int, ids: list[str]) -> Iterator[bytes]:
    yield orjson.dumps({"archive_format": ARCHIVE_FORMAT, "execution_id": execution_id}) + b"\n"
    last = None
    while True:
        q = select(_EVENTS).where(_EVENTS.c.execution_id == execution_id, _EVENTS.c.seq.is_not(None))
        if last is not None:
            q = q.where(_EVENTS.c.seq > last)
        with db.reading() as s:  # a short read per page: nothing is held while the file is written
            rows = s.execute(q.order_by(_EVENTS.c.seq).limit(page)).all()
        for row in rows:
            ids.append(row.id)
            yield _event_record(row) + b"\n"
        if len(rows) < page:
            break
        last = rows[-1].seq
    yield orjson.dumps({"archive_end": len(ids)}) + b"\n"


def _claim(db: Database, execution_id: str, location: str, events: int) -> bool:
    with db.unit_of_work() as s:
        done = s.execute(update(Execution).where(Execution.id == execution_id, Execution.archive_location.is_(None))
                         .values(archive_location=location, archived_events=events)
                         .execution_options(synchronize_session=False))
        return done.rowcount == 1


def _delete_rows(db: Database, execution_id: str, ids: list[str], batch: int) -> None:
    for start in range(0, len(ids), batch):
        with db.unit_of_work() as s:
            s.execute(delete(_EVENTS).where(_EVENTS.c.execution_id == execution_id,
                                            _EVENTS.c.id.in_(ids[start:start + batch])))


def archive_execution(db: Database, store: ArchiveStore, execution_id: str, now: datetime,
                      batch: int) -> tuple[str, int] | None:
    """Move one execution's events to the store (or finish a move a crash left half done); return
    the file's location and its number of events, or None when another run claimed the execution first."""
    with db.reading() as s:
        ex = s.get(Execution, execution_id)
    if ex is None:
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    if ex.archived_at is not None and ex.archive_location is not None:
        return ex.archive_location, ex.archived_events or 0
    location = ex.archive_location
    if location is None:
        ids: list[str] = []
        name = f"{execution_id}.{secrets.token_hex(4)}{SUFFIX}"
        location = store.write(name, _seal(_event_lines(db, execution_id, batch, ids), db.keyring))
        if not _claim(db, execution_id, location, len(ids)):
            store.delete(location)
            return None
    else:  # resumed: the claimed file is whole (it was written before the claim)
        ids = [e["id"] for e in archived_events(store, db.keyring, location, execution_id)]
    _delete_rows(db, execution_id, ids, batch)
    with db.unit_of_work() as s:
        s.execute(update(Execution).where(Execution.id == execution_id, Execution.archive_location == location)
                  .values(archived_at=now).execution_options(synchronize_session=False))
    return location, len(ids)


def event_count(db: Database, execution_id: str) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(_EVENTS).where(_EVENTS.c.execution_id == execution_id)) or 0


def archive_ended(db: Database, store: ArchiveStore, now: datetime, older_than: timedelta, batch: int, *,
                  dry_run: bool = False, progress: Callable[[Progress], None] | None = None,
                  until: float | None = None) -> list[Progress]:
    """Archive every execution due (`due_for_archival`), one after the other; a dry run only counts.

    `until` (a `time.monotonic()` value) ends the run, between two executions, once passed: the
    last step's `done < total` then says that more are due."""
    due = due_for_archival(db, now, older_than)
    report = []
    for n, execution_id in enumerate(due, 1):
        if until is not None and n > 1 and time.monotonic() >= until:
            break
        if dry_run:
            step = Progress(execution_id, event_count(db, execution_id), None, n, len(due))
        else:
            moved = archive_execution(db, store, execution_id, now, batch)
            if moved is None:
                continue  # another run has it
            log.info("archived the %d events of %s to %s", moved[1], execution_id, moved[0])
            step = Progress(execution_id, moved[1], moved[0], n, len(due))
        report.append(step)
        if progress is not None:
            progress(step)
    return report


# --- restoring ------------------------------------------------------------------------------------

def _insert_missing(db: Database, rows: list[dict[str, Any]]) -> None:
    with db.unit_of_work() as s:
        present = set(s.scalars(select(_EVENTS.c.id).where(_EVENTS.c.id.in_([r["id"] for r in rows]))))
        fresh = [r for r in rows if r["id"] not in present]  # a restore that crashed put these back already
        if fresh:
            # Through the connection, with their own positions: not the session's numbering of new events.
            s.connection().execute(insert(_EVENTS), fresh)


def restore(db: Database, store: ArchiveStore, execution_id: str, now: datetime, batch: int,
            progress: Callable[[Progress], None] | None = None) -> int:
    """Put an archived execution's events back in the table, in batches; then forget and delete the
    file. The file is read through once first, so that a damaged one restores nothing."""
    with db.reading() as s:
        ex = s.get(Execution, execution_id)
    if ex is None:
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    location = ex.archive_location
    if location is None:
        raise Conflict(f"The events of execution {execution_id} are not archived.", execution_id=execution_id)
    total = sum(1 for _ in archived_events(store, db.keyring, location, execution_id))
    rows: list[dict[str, Any]] = []
    done = 0
    for row in archived_events(store, db.keyring, location, execution_id):
        rows.append(row)
        if len(rows) == batch:
            _insert_missing(db, rows)
            done, rows = done + len(rows), []
            if progress is not None:
                progress(Progress(execution_id, done, location, done, total))
    if rows:
        _insert_missing(db, rows)
    with db.unit_of_work() as s:
        s.execute(update(Execution).where(Execution.id == execution_id, Execution.archive_location == location)
                  .values(archived_at=None, archive_location=None, archived_events=None, restored_at=now)
                  .execution_options(synchronize_session=False))
    store.delete(location)
    return total
