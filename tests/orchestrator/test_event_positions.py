"""Event positions (`ExecutionEvent.seq`) follow commit order, whatever the ids say; replay by them is exact."""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, event, insert, select

from orchestrator.credentials import Principal
from orchestrator.db import Database
from orchestrator.event_log import record_event
from orchestrator.models import ExecutionEvent, utcnow
from orchestrator.models.events import EventPosition
from orchestrator.publish import channel, event_message, for_client, publish, resolved
from tests.factories import make_execution, make_user
from web.live import UnknownSince, missed_events, since_position

ADMIN = Principal("user", "user_root", is_admin=True)


def on_distinct_shards(db: Database, n: int) -> list[str]:
    """Ids of `n` executions the event path would route to `n` different shards (and workers)."""
    shards = max(db.settings.ingest_shards, n)  # the streams of a deployment with at least n shards
    ids: dict[int, str] = {}
    i = 0
    while len(ids) < n:
        candidate = f"exec_shard_{i}"
        ids.setdefault(zlib.crc32(candidate.encode()) % shards, candidate)
        i += 1
    return list(ids.values())


def scene(db: Database, n: int) -> tuple[str, list[str]]:
    with db.unit_of_work() as s:
        owner = make_user(s)
        executions = [make_execution(s, owner, execution_id=eid).id for eid in on_distinct_shards(db, n)]
    return owner.id, executions


def stored_in_order(db: Database) -> list[tuple[str, int]]:
    with db.reading() as s:
        return [(eid, seq) for eid, seq in s.execute(select(ExecutionEvent.id, ExecutionEvent.seq)
                                                      .order_by(ExecutionEvent.seq))]


def assert_gap_free(seqs: list[int]) -> None:
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def assert_replay_exact(db: Database, order: list[str]) -> None:
    """From every event, the replay returns exactly the events committed after it, in commit order."""
    with db.reading() as s:
        for i, since in enumerate(order):
            after = since_position(s, ADMIN, since)
            assert [ev.id for ev, _ in missed_events(s, ADMIN, None, after, 10_000)] == order[i + 1:]


def write(db: Database, execution_id: str, n: int, *, between: Callable[[], None] = lambda: None,
          tag: str = "") -> list[ExecutionEvent]:
    """`n` events in one unit of work; `between` runs after they are inserted, before the commit."""
    with db.unit_of_work() as s:
        rows = [record_event(s, execution_id, "note", utcnow(), message=f"{tag}{i}") for i in range(n)]
        s.flush()
        between()
    return rows


def test_positions_follow_commit_order_not_id_order(db: Database) -> None:
    _, (ex_a, ex_b) = scene(db, 2)
    # PostgreSQL lets B commit while A is open; SQLite's write lock makes B wait for A instead, so
    # there the interleaving cannot happen and the test checks the plain order.
    interleaved = db.dialect != "sqlite"
    a_inserted, b_committed, prefix_checked = threading.Event(), threading.Event(), threading.Event()
    rows: dict[str, list[ExecutionEvent]] = {}

    def a_waits() -> None:
        a_inserted.set()
        if interleaved:
            assert b_committed.wait(10) and prefix_checked.wait(10)
        else:
            time.sleep(0.2)

    def writer_a() -> None:
        rows["a"] = write(db, ex_a, 3, between=a_waits, tag="a")

    def writer_b() -> None:
        assert a_inserted.wait(10)
        time.sleep(0.002)  # a later millisecond: B's ids sort after A's
        rows["b"] = write(db, ex_b, 2, tag="b")
        b_committed.set()

    threads = [threading.Thread(target=writer_a), threading.Thread(target=writer_b)]
    for t in threads:
        t.start()
    if interleaved:
        assert b_committed.wait(10)
        # B committed, A not yet: what a reader sees is gap-free and holds B, not A.
        visible = stored_in_order(db)
        assert_gap_free([seq for _, seq in visible])
        assert [eid for eid, _ in visible][-2:] == [r.id for r in rows["b"]]
        prefix_checked.set()
    for t in threads:
        t.join(20)
    a_ids, b_ids = [r.id for r in rows["a"]], [r.id for r in rows["b"]]
    assert max(a_ids) < min(b_ids)  # A minted and inserted first
    committed = b_ids + a_ids if interleaved else a_ids + b_ids
    order = [eid for eid, _ in stored_in_order(db)]
    assert order[-5:] == committed
    assert_gap_free([seq for _, seq in stored_in_order(db)])
    # The rows carry their positions after the commit, without a query.
    assert [r.seq for r in rows["a"] + rows["b"]] == [dict(stored_in_order(db))[i] for i in a_ids + b_ids]
    assert_replay_exact(db, order)


def test_concurrent_writers_get_unique_gap_free_positions_in_commit_order(db: Database) -> None:
    _, executions = scene(db, 4)
    transactions: list[list[ExecutionEvent]] = []
    problems: list[Any] = []
    writing = threading.Event()
    writing.set()

    def writer(k: int) -> None:
        rnd = random.Random(k)
        for _ in range(4):
            rows = write(db, executions[k % len(executions)], rnd.randint(1, 3),
                         between=lambda: time.sleep(rnd.uniform(0, 0.02)), tag=f"w{k}.")
            transactions.append(rows)

    def reader() -> None:
        # Any reader, at any moment, sees positions 1..n with nothing missing: what it has not
        # seen yet can only come after what it has.
        while writing.is_set():
            seqs = [seq for _, seq in stored_in_order(db)]
            if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                problems.append(seqs)
            time.sleep(0.002)

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    writing.clear()
    watcher.join(10)
    assert problems == []

    stored = stored_in_order(db)
    assert_gap_free([seq for _, seq in stored])
    for rows in transactions:
        # One transaction's events are contiguous (nobody drew in between) and in insertion order.
        assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + len(rows)))
    assert len(transactions) == 24 and len(stored) == len(executions) + sum(len(rows) for rows in transactions)
    assert_replay_exact(db, [eid for eid, _ in stored])


def test_same_millisecond_events_replay_in_insertion_order(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _, (ex,) = scene(db, 1)
    # One millisecond, randomness sorting backwards: id order is the reverse of insertion order.
    ids = iter(f"evt_0000000000ff{9 - i:010x}" for i in range(10))
    monkeypatch.setattr("orchestrator.event_log.event_id", lambda: next(ids))
    with db.unit_of_work() as s:
        inserted = [record_event(s, ex, "note", utcnow(), message=str(i)).id for i in range(2)]
        s.flush()
        inserted += [record_event(s, ex, "note", utcnow(), message=str(i)).id for i in range(2, 5)]
    assert inserted == sorted(inserted, reverse=True)
    with db.reading() as s:
        created = s.scalar(select(ExecutionEvent.id).where(ExecutionEvent.event_type == "execution_created"))
        replayed = missed_events(s, ADMIN, ex, since_position(s, ADMIN, created), 100)
    assert [ev.id for ev, _ in replayed] == inserted
    assert_gap_free([ev.seq for ev, _ in replayed])


def test_transactions_without_events_leave_the_counter_alone(db: Database) -> None:
    _, (ex,) = scene(db, 1)
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        with db.unit_of_work() as s:
            from orchestrator.models import Execution

            s.get(Execution, ex).status_message = "no events here"
        assert not any("event_positions" in st for st in statements)
        write(db, ex, 2)
        assert sum("event_positions" in st for st in statements) == 1  # one UPDATE ... RETURNING
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)


def test_rolled_back_work_takes_no_positions(db: Database) -> None:
    _, (ex,) = scene(db, 1)
    with pytest.raises(RuntimeError), db.unit_of_work() as s:
        record_event(s, ex, "note", utcnow())
        s.flush()
        raise RuntimeError("changed my mind")
    with db.unit_of_work() as s:
        kept = record_event(s, ex, "note", utcnow(), message="kept")
        with s.begin_nested() as savepoint:
            record_event(s, ex, "note", utcnow(), message="dropped")
            s.flush()
            savepoint.rollback()
        with s.begin_nested():
            released = record_event(s, ex, "note", utcnow(), message="savepoint released")
        assert released.seq is None  # positions wait for the real commit, not a savepoint's
        later = record_event(s, ex, "note", utcnow(), message="later")
    stored = stored_in_order(db)
    assert [eid for eid, _ in stored][-3:] == [kept.id, released.id, later.id]
    assert_gap_free([seq for _, seq in stored])


def test_bulk_inserts_are_numbered_and_inline_values_refused(db: Database) -> None:
    _, (ex,) = scene(db, 1)
    rows = [{"id": f"evt_0000000000aa{9 - i:010x}", "execution_id": ex, "event_type": "note", "timestamp": utcnow()}
            for i in range(3)]
    with db.unit_of_work() as s:
        s.execute(insert(ExecutionEvent), rows)
    stored = stored_in_order(db)
    assert [eid for eid, _ in stored][-3:] == [r["id"] for r in rows]
    assert_gap_free([seq for _, seq in stored])
    with pytest.raises(ValueError, match="positions"), db.unit_of_work() as s:
        s.execute(insert(ExecutionEvent).values(id="evt_x", execution_id=ex, event_type="note", timestamp=utcnow()))


def test_a_missing_counter_row_is_reseeded_above_what_is_stored(db: Database) -> None:
    _, (ex,) = scene(db, 1)
    write(db, ex, 3)
    with db.unit_of_work() as s:
        s.execute(delete(EventPosition))
    write(db, ex, 2)
    assert_gap_free([seq for _, seq in stored_in_order(db)])


def test_unknown_or_foreign_since_is_refused(db: Database) -> None:
    owner_id, (ex,) = scene(db, 1)
    (ev,) = write(db, ex, 1)
    with db.reading() as s:
        assert since_position(s, Principal("user", owner_id), ev.id) == ev.seq
        for who, since in ((Principal("user", "user_eve"), ev.id), (ADMIN, "evt_unknown")):
            with pytest.raises(UnknownSince):
                since_position(s, who, since)


def test_messages_built_before_the_commit_publish_their_position(db: Database, redis, base_settings) -> None:
    owner_id, (ex,) = scene(db, 1)
    with db.unit_of_work() as s:
        ev = record_event(s, ex, "note", utcnow())
        msg = event_message(ev, owner_id)
    assert msg["seq"] is None and resolved(msg)["seq"] == ev.seq is not None
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(base_settings.redis_key_prefix))
    try:
        assert pubsub.get_message(timeout=2) is None  # the subscribe confirmation
        publish(redis, base_settings.redis_key_prefix, [msg])
        got = pubsub.get_message(timeout=5)
    finally:
        pubsub.close()
    assert orjson.loads(got["data"]) == {**msg, "seq": ev.seq, "commit_range": [ev.seq, ev.seq]}
    assert for_client(msg) == {k: v for k, v in msg.items() if k != "owner_id"} | {"seq": ev.seq}


def test_the_event_log_pages_newest_first_in_commit_order(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.execution_views import list_events

    owner_id, (ex,) = scene(db, 1)
    ids = iter(f"evt_0000000000ff{9 - i:010x}" for i in range(10))  # each one sorts before the last
    monkeypatch.setattr("orchestrator.event_log.event_id", lambda: next(ids))
    written = [r.id for _ in range(3) for r in write(db, ex, 2)]
    me = Principal("user", owner_id)
    with db.reading() as s:
        first, before = list_events(s, me, ex, 4, None)
        rest, end = list_events(s, me, ex, 4, before)
    # Id order would be the other way round.
    assert [e["event_id"] for e in first + rest[:2]] == written[::-1]
    assert rest[2]["event_type"] == "execution_created" and len(rest) == 3 and end is None
