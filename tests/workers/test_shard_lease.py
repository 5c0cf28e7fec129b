"""Shard leases: a dead holder's shard resumes within seconds, a long batch keeps its lease, and a
holder whose lease ran out while it stalled cannot commit over the holder after it (fencing).

Recovery times are printed (`pytest -s`). Their bound is generous on purpose: it is the acceptance
of the fault (a 30 s lease kept a dead worker's shard for half a minute), not a benchmark.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter

import pytest
import redis as redis_lib
from sqlalchemy import select

from orchestrator.db import Database
from orchestrator.events import drain as drain_module
from orchestrator.events.accept import Ingestor
from orchestrator.events.dead_letters import DeadLetters
from orchestrator.events.drain import ShardDrainer, ensure_group
from orchestrator.events.protocol import GROUP, Keys, shard_of
from orchestrator.models import ExecutionEvent, ShardFence, utcnow
from orchestrator.settings import Settings
from tests.conftest import WorkerProcess, settings_env
from tests.workers.helpers import Scene, hold_database_write_lock, own_key_prefix, pending_count, queued_execution
from workers.celery_app import create_celery

RECOVERY_BOUND_SECONDS = 15


@pytest.fixture
def isolated(migrated):
    """Settings with the default lease and a key prefix of their own (the session's worker never
    drains these shards)."""
    env = settings_env(migrated)
    env.pop("INGEST_LEASE_SECONDS")  # the suite shortens it; these tests measure the default
    with own_key_prefix(Settings.from_env(env), "orchlease") as pair:
        yield pair


def _queue(settings: Settings, r: redis_lib.Redis, scene: Scene, n: int, trigger=None) -> tuple[int, list[str]]:
    """Queue `n` heartbeats of the scene's execution: (its shard, the event ids)."""
    ingestor = Ingestor(r, settings.redis_key_prefix, settings.ingest_shards, trigger=trigger or (lambda shard: None))
    items = [(scene.execution_id, scene.agent_id, {"event_type": "heartbeat", "message": f"beat {i}"})
             for i in range(n)]
    accepted = ingestor.accept_many(items, utcnow())
    return shard_of(scene.execution_id, settings.ingest_shards), [a.event_id for a in accepted]


def _scene(db: Database, isolated: tuple[Settings, redis_lib.Redis], n: int) -> tuple:
    """(settings, redis, a queued execution, its shard, the ids of `n` heartbeats queued there)."""
    settings, r = isolated
    scene = queued_execution(db)
    shard, ids = _queue(settings, r, scene, n)
    return settings, r, scene, shard, ids


def _stored(db: Database, execution_id: str) -> list[str]:
    with db.reading() as s:
        return list(s.scalars(select(ExecutionEvent.id).where(ExecutionEvent.execution_id == execution_id,
                                                              ExecutionEvent.source == "agent")))


def _fence(db: Database, shard: int) -> int | None:
    with db.reading() as s:
        return s.scalar(select(ShardFence.token).where(ShardFence.shard == shard))


def _drainer(db: Database, settings: Settings, r: redis_lib.Redis, **kw) -> ShardDrainer:
    kw.setdefault("batch_size", 500)
    kw.setdefault("lease_seconds", settings.ingest_lease_seconds)
    return ShardDrainer(db, r, settings.redis_key_prefix, **kw)


def _resume(drainer: ShardDrainer, db: Database, shard: int, execution_id: str, n: int, since: float) -> float:
    """Drain `shard` as often as triggers would until the execution's `n` events are stored; returns
    the seconds from `since` (the holder's death) to then."""
    deadline = since + 60
    while time.monotonic() < deadline:
        drainer.drain(shard)
        if len(_stored(db, execution_id)) >= n:
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError(f"shard {shard} did not resume within 60 s")


def _assert_each_stored_once(db: Database, execution_id: str, event_ids: list[str]) -> None:
    stored = Counter(_stored(db, execution_id))
    assert set(stored) == set(event_ids) and set(stored.values()) == {1}


def test_a_dead_holders_shard_resumes_within_seconds(db, isolated) -> None:
    """The holder read a batch and died without a word: no release, no acknowledgement."""
    settings, r, scene, shard, ids = _scene(db, isolated, 50)
    drainer = _drainer(db, settings, r)
    stream = drainer.keys.stream(shard)
    ensure_group(r, stream)
    dead = drainer.leases.acquire(shard)
    assert dead is not None and len(dead.read(stream, ">", 500)) == 50
    died = time.monotonic()

    recovery = _resume(drainer, db, shard, scene.execution_id, 50, died)

    print(f"\nshard resumed {recovery:.2f} s after its holder died (lease {settings.ingest_lease_seconds} s)")
    assert recovery < RECOVERY_BOUND_SECONDS
    _assert_each_stored_once(db, scene.execution_id, ids)
    assert r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0






@pytest.mark.integration
def test_a_killed_workers_shard_resumes_within_seconds(db, isolated, session_dir) -> None:
    """A real worker, stuck inside its transaction (renewing its lease all along), is SIGKILLed."""
    settings, r = isolated
    scene = queued_execution(db)
    celery_app = create_celery(settings)
    stream = Keys(settings.redis_key_prefix).stream(shard_of(scene.execution_id, settings.ingest_shards))
    doomed = WorkerProcess(settings, session_dir / f"doomed-{secrets.token_hex(2)}.log", concurrency=1).start()
    engine, lock = hold_database_write_lock(settings, scene.execution_id)
    try:
        shard, ids = _queue(settings, r, scene, 200,
                            trigger=lambda s: celery_app.send_task("workers.tasks.drain", args=[s]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pending_count(r, stream) == 0:
            time.sleep(0.05)
        assert pending_count(r, stream) > 0  # read, and stuck applying it
        # Longer than the lease: the worker kept it by renewing while its transaction waited.
        time.sleep(settings.ingest_lease_seconds + 1)
        assert r.exists(Keys(settings.redis_key_prefix).lease(shard))
        doomed.kill()
        died = time.monotonic()
    finally:
        lock.rollback()
        lock.close()
        engine.dispose()
    assert _stored(db, scene.execution_id) == []

    recovery = _resume(_drainer(db, settings, r), db, shard, scene.execution_id, 200, died)

    print(f"\nshard resumed {recovery:.2f} s after SIGKILL of its worker (lease {settings.ingest_lease_seconds} s)")
    assert recovery < RECOVERY_BOUND_SECONDS
    _assert_each_stored_once(db, scene.execution_id, ids)
    assert r.xlen(stream) == 0 and pending_count(r, stream) == 0


def test_a_long_batch_keeps_its_lease(db, isolated, monkeypatch) -> None:
    settings, r, scene, shard, ids = _scene(db, isolated, 10)
    holder = _drainer(db, settings, r, lease_seconds=1)
    rival = _drainer(db, settings, r, lease_seconds=1)
    lease_key = holder.keys.lease(shard)
    rival_got_it: list[bool] = []
    real_apply = drain_module.apply_batch

    def slow_apply(session, envelopes, *args, **kwargs):
        result = real_apply(session, envelopes, *args, **kwargs)
        token = r.get(lease_key)
        for _ in range(6):  # three times the lease, inside the transaction
            time.sleep(0.5)
            rival_got_it.append(rival.drain(shard).lease_taken)
            assert r.get(lease_key) == token
        return result

    monkeypatch.setattr(drain_module, "apply_batch", slow_apply)
    stats = holder.drain(shard)

    assert rival_got_it == [False] * 6
    assert stats.applied == 10 and not stats.superseded
    _assert_each_stored_once(db, scene.execution_id, ids)
    assert r.xlen(holder.keys.stream(shard)) == 0


def test_a_late_holder_cannot_commit_over_a_new_one(db, isolated, monkeypatch) -> None:
    """Holder A reads six events and stalls before its transaction does anything; its lease runs
    out; holder B takes the shard, commits two of them and acknowledges them. Then A goes on: its
    batch (two duplicates, four new events) is refused whole, and nothing of it is acknowledged or
    set aside. The rest is applied afterwards, each event once."""
    settings, r, scene, shard, ids = _scene(db, isolated, 6)
    a = _drainer(db, settings, r, batch_size=100)
    b = _drainer(db, settings, r, batch_size=2)
    stream = a.keys.stream(shard)
    a_inside, b_done = threading.Event(), threading.Event()
    a_batches: list[int] = []
    real_apply = drain_module.apply_batch

    def stalling_apply(session, envelopes, *args, **kwargs):
        if threading.current_thread().name == "holder-a":
            a_batches.append(len(envelopes))
            if len(a_batches) == 1:  # stalled before any statement: it holds no database lock
                a_inside.set()
                assert b_done.wait(30)
        return real_apply(session, envelopes, *args, **kwargs)

    monkeypatch.setattr(drain_module, "apply_batch", stalling_apply)
    a_stats: list = []
    thread = threading.Thread(target=lambda: a_stats.append(a.drain(shard)), name="holder-a")
    thread.start()
    assert a_inside.wait(30)
    r.delete(a.keys.lease(shard))  # what its expiry would do while A's whole process stood still

    b_stats = b.drain(shard, budget_seconds=0)  # one batch, then B stops
    b_done.set()
    thread.join(30)

    assert b_stats.applied == 2 and not b_stats.superseded
    (stats,) = a_stats
    assert stats.superseded and (stats.applied, stats.batches, stats.dead_lettered) == (0, 0, 0)
    assert a_batches == [6]  # refused whole: not split in search of a poison entry
    assert sorted(_stored(db, scene.execution_id)) == sorted(ids[:2])  # A committed nothing
    assert r.xlen(stream) == 4 and r.xpending(stream, GROUP)["pending"] == 4  # and acknowledged nothing
    assert _fence(db, shard) == 2
    assert DeadLetters(r, settings.redis_key_prefix).count() == 0

    assert b.drain(shard).applied == 4
    _assert_each_stored_once(db, scene.execution_id, ids)
    assert r.xlen(stream) == 0 and r.xpending(stream, GROUP)["pending"] == 0
    assert _fence(db, shard) == 3


def test_token_counter_behind_the_database_catches_up(db, isolated) -> None:
    """Redis came back without its counters (a new Redis, or an AOF a second behind): the first batch
    is refused, the refusal lifts the counter past the database's token, and the same drain goes on
    under a fresh token, since no newer holder exists."""
    settings, r, scene, shard, ids = _scene(db, isolated, 5)
    with db.unit_of_work() as s:
        s.add(ShardFence(shard=shard, token=1000))
    drainer = _drainer(db, settings, r)

    stats = drainer.drain(shard)

    assert stats.applied == 5 and not stats.superseded
    _assert_each_stored_once(db, scene.execution_id, ids)
    assert _fence(db, shard) == 1001
    assert r.xlen(drainer.keys.stream(shard)) == 0


def test_a_drain_that_finds_the_lease_taken_schedules_one_more_after_it(db, isolated) -> None:
    settings, r, scene, shard, ids = _scene(db, isolated, 3)
    dead = _drainer(db, settings, r).leases.acquire(shard)  # a holder that will never drain
    assert dead is not None
    drainer = _drainer(db, settings, r)
    assert not drainer.drain(shard).lease_taken
    delay = drainer.retry_after(shard)
    assert delay is not None and 0 < delay <= settings.ingest_lease_seconds + 1
    assert drainer.retry_after(shard) is None  # one is scheduled: no second one
    time.sleep(delay)
    assert drainer.drain(shard).applied == 3
    assert drainer.retry_after(shard) is None  # nothing waits
