"""Positions of events in commit order: `ExecutionEvent.seq`, handed out as the transaction commits.

Why: the live stream's `?since=` and the event log need "everything committed after this event".
Event ids cannot say that: they are minted at acceptance, shards commit in their own transactions
in any order, and ids minted in one millisecond sort by randomness. A database SEQUENCE/IDENTITY
cannot either: values are drawn at insert time, so T1 draws 10, T2 draws 11, T2 commits first, and
a reader that has seen 11 and later asks for "after 11" never gets 10.

How: a one-row counter (`event_positions`). Right before a transaction commits, if it wrote
events, it increments the counter by their number (`UPDATE ... RETURNING`) in the final flush,
before that flush inserts the events, so that those rows are inserted with their positions (the
event worker's batches are, for instance); rows an earlier flush inserted get theirs with one
`UPDATE`. The counter's row lock is held until the commit, so the next event-writing
transaction draws its positions only after this one has committed: positions are handed out in
commit order, every transaction's are contiguous, and a reader that sees position n sees every
position below n. SQLite serialises writers anyway; on PostgreSQL this holds under READ COMMITTED
(the engine's default), where the waiting UPDATE re-reads the committed counter.

Cost: the lock serialises event-writing commits (not their work), so it is taken as late as it can
be: at the start of the final flush, held for that flush's statements and the COMMIT. Transactions
that insert no events (most poll claims) never touch the counter.

Events are tracked per session, in insertion order (`InstanceState.insert_order`), after each
flush; ORM bulk inserts (`session.execute(insert(ExecutionEvent), rows)`) are tracked in row order.
The event worker hands its rows to `add_events` as `EventRow`s (plain column dicts, not ORM
instances: building, tracking and flushing a hundred instances a batch cost it more than the rest of
its work); they are numbered by the same `_number` and inserted as the last statement.
Other ways of inserting events (an `insert()` with inline `.values()`, a raw connection) would
leave `seq` NULL, so the first is refused and the second is used only where rows come back with the
positions they had (`orchestrator/archive.py`'s restore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, case, event, func, insert, literal, select, true, update
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, UOWTransaction, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.base import instance_state

from orchestrator.models.events import EventPosition, ExecutionEvent

_PENDING = "event_positions.pending"  # session.info key: [(event id, row or None)] in insertion order
_COMMITTING = "event_positions.committing"  # session.info key: set during the final flush
_RANGE = "event_positions.range"  # InstanceState.info key: (first, last) of the row's transaction
_BULK = "event_positions.bulk"  # session.info key: rows `add_events` inserts at the commit
_EVENTS = ExecutionEvent.__table__
_COUNTER = EventPosition.__table__
_CHUNK = 1000  # rows per CASE update: three bind parameters each, far below SQLite's and psycopg's limits


class EventRow(dict[str, Any]):
    """An event on its way in through `add_events`: a value for every column of `execution_events`,
    by column name, and once numbered its transaction's commit range (`commit_range`). A Core insert
    of these goes through the columns' types, so what is encrypted at rest is encrypted exactly as
    for an ORM row. Build them with `event_row`."""

    __slots__ = ("span",)


# Every column with its scalar default (a callable one, `timestamp`'s, is applied by `event_row`):
# rows that all have every key make one executemany.
_BLANK: dict[str, Any] = {c.key: c.default.arg if c.default is not None and c.default.is_scalar else None
                          for c in _EVENTS.columns}
_CALLED = [(c.key, c.default.arg) for c in _EVENTS.columns if c.default is not None and c.default.is_callable]


def event_row(**values: Any) -> EventRow:
    """A new event row for `add_events`: `values` by column name, the columns' defaults for the rest."""
    row = EventRow(_BLANK)
    row.update(values)
    if len(row) != len(_BLANK):
        raise TypeError(f"not columns of {_EVENTS.name}: {sorted(row.keys() - _BLANK.keys())}")
    for key, default in _CALLED:
        if row[key] is None:
            row[key] = default(None)  # SQLAlchemy wraps a column default to take the execution context
    row.span = None
    return row


def install(sessions: sessionmaker[Session]) -> None:
    """Give every session of `sessions` the tracking and the positions at commit."""
    event.listen(sessions, "before_flush", _number_before_insert)
    event.listen(sessions, "after_flush", _track_flushed)
    event.listen(sessions, "do_orm_execute", _track_bulk_insert)
    event.listen(sessions, "before_commit", assign_positions)
    event.listen(sessions, "after_transaction_end", _forget)


def _pending(session: Session) -> list[tuple[str, ExecutionEvent | None]]:
    return session.info.setdefault(_PENDING, [])


def _track_flushed(session: Session, _ctx: UOWTransaction) -> None:
    # In after_flush, `session.new` still lists what this flush inserted; rows numbered on their way
    # in (`_number_before_insert`) need nothing more.
    rows = [o for o in session.new if isinstance(o, ExecutionEvent) and o.seq is None]
    if rows:
        rows.sort(key=lambda o: instance_state(o).insert_order)
        _pending(session).extend((o.id, o) for o in rows)


def _track_bulk_insert(state: ORMExecuteState) -> None:
    stmt = state.statement
    # ORM statements carry an annotated copy of the table, hence the name.
    if not (state.is_insert and isinstance(stmt, Insert) and stmt.table.name == _EVENTS.name):
        return
    params = state.parameters
    rows = params if isinstance(params, list) else [params] if params else []
    if not rows or any("id" not in r for r in rows):
        raise ValueError("insert events with session.add() or session.execute(insert(ExecutionEvent), rows) "
                         "so that they get their positions")
    _pending(state.session).extend((r["id"], None) for r in rows)


def _forget(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the whole transaction ended, committed or rolled back
        session.info.pop(_PENDING, None)
        session.info.pop(_BULK, None)


def add_events(session: Session, rows: list[EventRow]) -> None:
    """Insert `rows` (from `event_row`) as the last statements before the commit, with their
    positions, in one multi-row INSERT: the event worker's way, without the unit of work's cost per
    object. Their `seq` and commit range are set on them as they go in, so that what is published
    after the commit reads them (`position`, `commit_range`) without a query."""
    session.info.setdefault(_BULK, []).extend(rows)


def assign_positions(session: Session) -> None:
    """Number the events this transaction wrote, as the last thing before its COMMIT.

    Runs from `before_commit`, which `Database.unit_of_work` (the only place that commits) reaches
    through `session.commit()`. The final flush draws the positions before it inserts (see
    `_number_before_insert`); rows an earlier flush inserted are numbered in place. Deadlocks: the
    counter lock comes after every lock the transaction took before its final flush, and that flush
    only writes rows of executions the transaction has already locked, so whoever holds the counter
    waits on nobody who waits on it.
    """
    if session.in_nested_transaction():
        return  # releasing a savepoint: the positions wait for the real commit
    if not session.info.get(_PENDING) and not _has_new_events(session) and not session.info.get(_BULK):
        return  # the common cheap case: no events, no counter
    session.info[_COMMITTING] = True
    try:
        session.flush()
    finally:
        session.info.pop(_COMMITTING, None)
    pending = _flushed_without_position(session)
    bulk = session.info.pop(_BULK, [])
    if pending or bulk:
        _number(session, pending, bulk)
    if bulk:
        _insert(session, bulk)


def _insert(session: Session, rows: list[EventRow]) -> None:
    # Every row has every column (`event_row`): one executemany.
    session.connection().execute(insert(_EVENTS), rows)


def _flushed_without_position(session: Session) -> list[tuple[str, ExecutionEvent | None]]:
    # A rolled-back savepoint drops rows: only those still stored count.
    return [(eid, row) for eid, row in session.info.pop(_PENDING, [])
            if row is None or instance_state(row).persistent]


def _number_before_insert(session: Session, _ctx: UOWTransaction, _instances: Any) -> None:
    """In the final flush: draw positions for the events about to be inserted (and for any an earlier
    flush inserted), and set them on the rows, so that the INSERT carries them."""
    if not session.info.get(_COMMITTING):
        return
    fresh = sorted((o for o in session.new if isinstance(o, ExecutionEvent) and o.seq is None),
                   key=lambda o: instance_state(o).insert_order)
    if fresh:
        _number(session, _flushed_without_position(session), fresh)


def _number(session: Session, flushed: list[tuple[str, ExecutionEvent | None]],
            fresh: Sequence[ExecutionEvent | EventRow]) -> None:
    """Positions for `flushed` (stored rows, numbered with an UPDATE) then `fresh` (rows not yet
    inserted: ORM instances the flush is about to insert, or `add_events`' rows; numbered on the
    row), in that order: the order they were written in."""
    last = _draw(session, len(flushed) + len(fresh))
    first = last - len(flushed) - len(fresh) + 1
    positions = {eid: first + i for i, (eid, _) in enumerate(flushed)}
    ids = list(positions)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        # Only rows without a position: a committed position never changes, even if an upsert
        # skipped a tracked id because its row was already stored (that costs a gap, nothing more).
        session.connection().execute(update(_EVENTS).where(_EVENTS.c.id.in_(chunk), _EVENTS.c.seq.is_(None))
                                     .values(seq=case({eid: positions[eid] for eid in chunk}, value=_EVENTS.c.id)))
    for eid, row in flushed:
        if row is not None:
            # Committed state, not a change: nothing is flushed again, and code after the commit
            # (publishing) reads `row.seq` without a query.
            set_committed_value(row, "seq", positions[eid])
            instance_state(row).info[_RANGE] = (first, last)
    for i, row in enumerate(fresh, start=first + len(flushed)):
        if isinstance(row, EventRow):
            row["seq"] = i
            row.span = (first, last)
        else:
            row.seq = i
            instance_state(row).info[_RANGE] = (first, last)


def position(row: ExecutionEvent | EventRow, default: int | None = None) -> int | None:
    """`row`'s `seq` as this process knows it, never a query (after the commit an ORM row is
    detached): `default` when an ORM row's `seq` is not loaded."""
    if isinstance(row, EventRow):
        return row["seq"]
    return instance_state(row).dict.get("seq", default)


def commit_range(row: ExecutionEvent | EventRow) -> tuple[int, int] | None:
    """The positions the transaction that wrote `row` drew (first, last), when this process wrote it.

    The live stream's relay orders messages by position; this tells it which positions came from
    one commit, so that the ones not published (not every event is) do not look like a gap."""
    if isinstance(row, EventRow):
        return row.span
    return instance_state(row).info.get(_RANGE)


def _has_new_events(session: Session) -> bool:
    return any(isinstance(o, ExecutionEvent) for o in session.new)


def _draw(session: Session, n: int) -> int:
    """Take `n` positions; return the last. Locks the counter row until the transaction ends."""
    bump = (update(_COUNTER).where(_COUNTER.c.id == 1).values(last_seq=_COUNTER.c.last_seq + n)
            .returning(_COUNTER.c.last_seq))
    conn = session.connection()  # not session.execute: this may run inside a flush
    last = conn.execute(bump).scalar()
    if last is None:
        _seed(session)
        last = conn.execute(bump).scalar_one()
    return int(last)


def _seed(session: Session) -> None:
    # The migration creates the row; only a wiped table (the test suite empties every table) lacks
    # it. Seeding from the highest stored position keeps positions unique either way; a concurrent
    # seeder's row wins and ours is dropped.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    highest = select(literal(1), func.coalesce(func.max(_EVENTS.c.seq), 0)).where(true())
    stmt: Any = dialect_insert(_COUNTER).from_select(["id", "last_seq"], highest).on_conflict_do_nothing()
    session.connection().execute(stmt)

