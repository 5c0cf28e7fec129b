"""Engine, sessions and the unit of work: the one place that commits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import event_positions
from orchestrator.errors import Conflict
from orchestrator.settings import Settings

T = TypeVar("T")


def is_transient(exc: DBAPIError) -> bool:
    """A deadlock victim or a serialisation failure: the transaction rolled back whole; try again."""
    text = str(exc.orig).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "lock timeout"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web process read while a worker writes; the busy timeout makes writers queue
    # instead of failing with "database is locked"; SQLite enforces foreign keys only when asked.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: two writers then wait for each other instead
    # of deadlocking when both try to upgrade a read lock (this is the SQLite claim guard).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, immediate: bool = True, **kwargs: Any) -> Engine:
    """An engine for `url`; on SQLite, `immediate` makes every transaction take the write lock."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and url != "sqlite://":
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN

        if immediate:
            event.listen(engine, "begin", _sqlite_begin)
        else:
            event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    elif url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgres://")
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


class Database:
    """Owns the engine of one settings object; `unit_of_work()` is how every change is committed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Every committing session numbers the events it wrote, in commit order, as it commits.
        event_positions.install(self._sessions)
        # On SQLite, readers get their own engine so that they never queue behind the write lock.
        self._read_engine = (
            make_engine(settings.database_url, immediate=False) if self.engine.dialect.name == "sqlite"
            else self.engine
        )
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A session whose work commits when the block ends and rolls back if it raises.

        The commit first gives the events the block inserted their positions (`ExecutionEvent.seq`,
        `orchestrator/event_positions.py`); they are readable on the rows after the block."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def transaction(self, work: Callable[[Session], T], attempts: int = 3,
                    retry_if: Callable[[DBAPIError], bool] = is_transient) -> T:
        """Run `work` in a unit of work, again (from scratch) when the database picked it as a
        deadlock victim: concurrent claimers and workers lock rows in orders that can cross.
        `retry_if` widens what counts as worth another try."""
        for attempt in range(attempts):
            try:
                with self.unit_of_work() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == attempts - 1 or not retry_if(exc):
                    raise
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries only; it never commits. Objects read stay usable after the block
        (closing detaches them with their loaded state; a rollback would expire it)."""
        session = self._read_sessions()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()


def _is_unique_violation(exc: IntegrityError) -> bool:
    orig = exc.orig
    # psycopg names the SQLSTATE; sqlite3 only says it in the message.
    return getattr(orig, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(orig)


def flush_new(session: Session, conflict: Conflict) -> None:
    """Flush rows just added under keys checked to be free. Another transaction may have inserted the same
    key since that check (two creates racing on PostgreSQL); its unique violation becomes `conflict` rather
    than a 500. The session's transaction is then unusable, which is fine: the caller's unit of work rolls
    back on the raise."""
    try:
        session.flush()
    except IntegrityError as exc:
        if not _is_unique_violation(exc):
            raise
        raise conflict from exc
