"""Engine, sessions and the unit of work: the one place that commits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from orchestrator import event_positions
from orchestrator.encryption import Keyring, use_keyring
from orchestrator.errors import Conflict
from orchestrator.settings import Settings

T = TypeVar("T")
log = logging.getLogger(__name__)

# How a lost connection shows. SQLAlchemy flags most losses itself (`connection_invalidated`, from
# psycopg's `broken`/`closed`); these catch the rest. SQLSTATE prefixes: 57P01 admin shutdown (what
# `pg_terminate_backend` sends), 57P02 crash shutdown, class 08 "connection exception".
_LOST_STATES = ("57P01", "57P02", "08")
_LOST_TEXTS = ("terminating connection", "server closed the connection", "consuming input failed",
               "connection is closed", "connection is lost", "connection has been closed",
               "could not receive data from server", "could not send data to server", "no connection to the server")
# Connecting failed: the server is down, restarting (57P03) or full (53300). psycopg words its own
# failures "connection failed: ..." (refused, timeout, unknown host).
_CONNECT_STATES = ("57P03", "53300")
_CONNECT_TEXTS = ("connection failed", "connection refused", "could not connect", "connection timeout expired",
                  "the database system is starting up", "the database system is shutting down")
# libpq waits as long as the kernel does (minutes) for an unreachable host; a request should fail
# over to a 503 sooner. A connect_timeout in the URL wins.
CONNECT_TIMEOUT_SECONDS = 10


def is_transient(exc: DBAPIError) -> bool:
    """A deadlock victim or a serialisation failure: the transaction rolled back whole; try again."""
    text = str(exc.orig).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "lock timeout"))


def _connection_error(exc: DBAPIError, states: tuple[str, ...], texts: tuple[str, ...]) -> bool:
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    state = getattr(exc.orig, "sqlstate", None) or ""  # psycopg's; sqlite3 has none
    text = str(exc.orig).lower()
    return (bool(state) and state.startswith(states)) or any(t in text for t in texts)


def is_connection_lost(exc: DBAPIError) -> bool:
    """The connection died under the statement (a failover, a restart, `pg_terminate_backend`): the
    server rolled its transaction back, and a fresh connection may well work."""
    return exc.connection_invalidated or _connection_error(exc, _LOST_STATES, _LOST_TEXTS)


def is_unreachable(exc: BaseException) -> bool:
    """The database cannot be reached just now: no connection could be made, one was lost, or the
    pool had none free in time. Worth a later retry by the client; nothing about the request is wrong."""
    if isinstance(exc, PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and (
        is_connection_lost(exc) or _connection_error(exc, _CONNECT_STATES, _CONNECT_TEXTS))


# Set by `Database.transaction` around each try; the engine's "commit" event marks it just before the
# COMMIT goes out. Until then a lost connection leaves nothing behind; from then on the commit may
# have happened. (A contextvar: the event knows the connection, not the transaction's caller.)
_commit_sent: ContextVar[list[bool] | None] = ContextVar("commit_sent", default=None)


def _note_commit_sent(_conn: Any) -> None:
    sent = _commit_sent.get()
    if sent is not None:
        sent.append(True)


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
    # Pessimistic disconnect handling: checkout pings a pooled connection first and replaces it if it is
    # dead. A failed ping (or a connection lost mid-statement) also marks every connection opened
    # before it stale (SQLAlchemy's `Pool._invalidate`), so after a failover the rest are replaced on
    # checkout without a ping each. What pings cannot catch, a connection dying inside a
    # transaction, `Database.transaction` retries.
    kwargs.setdefault("pool_pre_ping", True)
    if "connect_timeout=" not in url:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **kwargs.get("connect_args", {})}
    return create_engine(url, **kwargs)


class Database:
    """Owns the engine of one settings object; `unit_of_work()` is how every change is committed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The keys of the encrypted columns, which read them through the engines' dialects.
        self.keyring = Keyring.from_settings(settings)
        self.engine = make_engine(settings.database_url)
        use_keyring(self.engine, self.keyring)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Every committing session numbers the events it wrote, in commit order, as it commits.
        event_positions.install(self._sessions)
        event.listen(self.engine, "commit", _note_commit_sent)  # what `transaction` may retry
        # On SQLite, readers get their own engine so that they never queue behind the write lock.
        self._read_engine = (
            make_engine(settings.database_url, immediate=False) if self.engine.dialect.name == "sqlite"
            else self.engine
        )
        use_keyring(self._read_engine, self.keyring)
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
        `retry_if` widens what counts as worth another try; `attempts` bounds those tries.

        A connection lost before the COMMIT went out (a failover, a restart) gets one more try on
        top, on a fresh connection: the server rolled the whole transaction back, so nothing of the
        first try stays. A connection lost during the COMMIT is not retried, since the commit may have
        happened; nor is a second loss in a row, an outage rather than a blip (`is_unreachable`)."""
        tries, reconnected = 0, False
        while True:
            tries += 1
            sent: list[bool] = []
            token = _commit_sent.set(sent)
            try:
                with self.unit_of_work() as session:
                    return work(session)
            except DBAPIError as exc:
                if not sent and not reconnected and is_connection_lost(exc):
                    # SQLAlchemy invalidated the pool's older connections with this one: the next
                    # checkout connects afresh.
                    log.warning("database connection lost (%s); retrying on a fresh one", type(exc.orig).__name__)
                    reconnected = True
                    continue
                if tries >= attempts or not retry_if(exc):
                    raise
                time.sleep(0.02 * tries)
            finally:
                _commit_sent.reset(token)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for queries only; it never commits. Objects read stay usable after the block
        (closing detaches them with their loaded state; a rollback would expire it).

        Not retried: the block cannot be run twice. A dead pooled connection is replaced at checkout
        (`pool_pre_ping`); one lost in the middle of the block raises, and the web answers 503."""
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
