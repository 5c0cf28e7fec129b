"""Draining a shard: read a batch from its Redis stream, apply it, commit, then acknowledge.

Only the holder of the shard's lease reads it, so events of one execution are applied in the order
they were accepted (invariant 3). Entries are acknowledged (and deleted) only after the database
commit (invariant 1); a worker killed mid-batch leaves them pending, and the next lease holder
reads its pending list before anything new. Replies, pub/sub and hold releases follow the commit
(invariant 5).

A bad message is the message's problem, not the shard's: when a batch fails for a reason other
than an unreachable database or Redis, it is split until the entries that fail alone are found; the
rest is applied. A failing entry stays pending and is tried again, and once it has been delivered
`max_deliveries` times it is moved to the dead-letter stream (`dead_letters`), its outcome becomes
`rejected`, and the shard moves on. Entries that cannot even be decoded go there at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from redis.exceptions import LockError, ResponseError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from orchestrator.db import Database, is_transient
from orchestrator.events.apply import BatchResult, apply_batch
from orchestrator.events.dead_letters import DeadLetters
from orchestrator.events.protocol import (
    CONSUMER,
    GROUP,
    OUTCOME_SECONDS,
    REPLY_SECONDS,
    Envelope,
    Keys,
    MalformedEntry,
)
from orchestrator.holds import release_holds
from orchestrator.models import utcnow
from orchestrator.publish import publish
from orchestrator.state_machine import log_transition

log = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], None]
Entry = tuple[bytes, Envelope]
Raw = dict[bytes, dict[bytes, bytes]]

MAX_DELIVERIES = 3


@dataclass
class DrainStats:
    shard: int
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    lease_taken: bool = True
    more: bool = False  # stopped at the time budget with entries left: drain again soon


def ensure_group(r: redis.Redis, stream: str) -> None:
    try:
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_unavailable(exc: BaseException) -> bool:
    """The database or Redis cannot be reached (or the database keeps choosing us as a deadlock
    victim): no entry is to blame, so nothing may be set aside; the batch waits for the next drain."""
    if isinstance(exc, redis.RedisError | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or is_transient(exc))


def _worth_retrying(exc: DBAPIError) -> bool:
    # The batch rolls back whole, so another try is safe after a deadlock, a lost connection or a
    # racing duplicate insert.
    return isinstance(exc, IntegrityError) or exc.connection_invalidated or is_transient(exc)


class ShardDrainer:
    def __init__(self, db: Database, r: redis.Redis, prefix: str, *, batch_size: int, lease_seconds: int,
                 notify: Notify | None = None, max_deliveries: int = MAX_DELIVERIES) -> None:
        self.db = db
        self.redis = r
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.notify = notify
        self.max_deliveries = max_deliveries
        self.dead_letters = DeadLetters(r, prefix)

    def drain(self, shard: int, budget_seconds: float = 0.25, max_rounds: int = 20) -> DrainStats:
        """Drain `shard` until its stream is empty, or return at once if another worker holds it.

        A drain stops after `budget_seconds` with `more` set, so that a busy shard cannot keep a
        worker process from the other shards' triggers waiting behind it in the queue.
        """
        stats = DrainStats(shard)
        stream = self.keys.stream(shard)
        deadline = time.monotonic() + budget_seconds
        for _ in range(max_rounds):
            lock = self.redis.lock(self.keys.lease(shard), timeout=self.lease_seconds, blocking=False,
                                   thread_local=False)
            if not lock.acquire():
                stats.lease_taken = stats.batches > 0
                return stats
            try:
                ensure_group(self.redis, stream)
                self._drain_locked(shard, stream, lock, stats, deadline)
            finally:
                try:
                    lock.release()
                except LockError:
                    log.warning("lease on shard %s expired while draining", shard)
            # An event accepted after our last read may have found the trigger flag still set and
            # sent no trigger. Clearing the flag first means: whatever arrives from here on triggers
            # a drain itself, and whatever arrived before is seen by the length check.
            self.redis.delete(self.keys.trigger_flag(shard))
            if self.redis.xlen(stream) == 0:
                break
            if time.monotonic() >= deadline:
                stats.more = True
                break
        return stats

    def _drain_locked(self, shard: int, stream: str, lock: Any, stats: DrainStats, deadline: float) -> None:
        backlog = True  # first what a dead predecessor (or a failed try) read but never acknowledged
        while True:
            if not backlog:
                self.redis.delete(self.keys.trigger_flag(shard))
            resp = self.redis.xreadgroup(GROUP, CONSUMER, {stream: "0" if backlog else ">"}, count=self.batch_size)
            raw = resp[0][1] if resp else []
            raw = [(eid, f) for eid, f in raw if f]  # pending entries already deleted come back empty
            if not raw:
                if backlog:
                    backlog = False
                    continue
                return
            entries = self._decode(shard, stream, raw, stats)
            result, failed = self._apply_isolating(entries)
            pending = bool(failed)
            done = [eid for eid, _ in entries if eid not in failed]
            if done:
                pipe = self.redis.pipeline(transaction=False)
                pipe.xack(stream, GROUP, *done)
                pipe.xdel(stream, *done)
                pipe.execute()
            self._after_commit(result)
            moved = self._settle_failures(shard, stream, dict(raw), entries, failed)
            stats.dead_lettered += moved
            # Whatever failed and was not set aside is still pending: read it again (a new delivery).
            backlog = pending and moved < len(failed)
            stats.batches += 1
            stats.applied += result.applied
            stats.duplicates += result.duplicates
            stats.batch_sizes.append(len(raw))
            lock.reacquire()
            if time.monotonic() >= deadline:
                return

    def _decode(self, shard: int, stream: str, raw: list[tuple[bytes, dict[bytes, bytes]]],
                stats: DrainStats) -> list[Entry]:
        entries: list[Entry] = []
        for entry_id, fields in raw:
            try:
                entries.append((entry_id, Envelope.decode(fields)))
            except MalformedEntry as exc:
                log.error("shard %s: stream entry %r is not an envelope (%s); set aside", shard, entry_id, exc)
                self.dead_letters.add(shard, stream, entry_id, fields, None, "malformed", 1)
                stats.dead_lettered += 1
        return entries

    def _apply_isolating(self, entries: list[Entry]) -> tuple[BatchResult, dict[bytes, BaseException]]:
        """Apply `entries`; when the batch fails because of what it holds, apply it in halves, down to
        the single entries that fail alone. Returns the merged result and the failing entries."""
        if not entries:
            return BatchResult(), {}
        try:
            return self._apply([env for _, env in entries]), {}
        except Exception as exc:
            if is_unavailable(exc):
                raise
            if len(entries) == 1:
                return BatchResult(), {entries[0][0]: exc}
        mid = len(entries) // 2
        first, failed_first = self._apply_isolating(entries[:mid])
        second, failed_second = self._apply_isolating(entries[mid:])
        first.merge(second)
        return first, {**failed_first, **failed_second}

    def _apply(self, envelopes: list[Envelope]) -> BatchResult:
        return self.db.transaction(lambda session: apply_batch(session, envelopes, utcnow()), attempts=5,
                                   retry_if=_worth_retrying)

    def _settle_failures(self, shard: int, stream: str, raw: Raw, entries: list[Entry],
                         failed: dict[bytes, BaseException]) -> int:
        """Log each failing entry; set aside those delivered `max_deliveries` times. Returns how many."""
        if not failed:
            return 0
        deliveries = self._deliveries(stream, list(failed))
        moved = 0
        for entry_id, env in entries:
            exc = failed.get(entry_id)
            if exc is None:
                continue
            n = deliveries.get(entry_id, self.max_deliveries)
            log.error("shard %s: event %s (execution %s) failed to apply on delivery %d of %d: %s: %s", shard,
                      env.id, env.execution_id, n, self.max_deliveries, type(exc).__name__, exc,
                      exc_info=n >= self.max_deliveries)
            if n >= self.max_deliveries:
                self.dead_letters.add(shard, stream, entry_id, raw[entry_id], env, type(exc).__name__, n)
                moved += 1
        return moved

    def _deliveries(self, stream: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
        found: dict[bytes, int] = {}
        for rows in pipe.execute():
            for row in rows:
                found[row["message_id"]] = int(row["times_delivered"])
        return found

    def _after_commit(self, result: BatchResult) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for eid, outcome in result.outcomes.items():
            payload = orjson.dumps(outcome)
            pipe.set(self.keys.outcome(eid), payload, ex=OUTCOME_SECONDS)
            pipe.rpush(self.keys.reply(eid), payload)
            pipe.expire(self.keys.reply(eid), REPLY_SECONDS)
        pipe.execute()
        for execution_id, subtask_ids in result.released_holds.items():
            release_holds(self.redis, self.prefix, execution_id, subtask_ids)
        publish(self.redis, self.prefix, result.messages)
        for execution_id, old, new in result.transitions:
            log_transition(execution_id, old, new)
        for notice in result.notifications:
            log.warning("Execution %s blocked: %s (owner %s; options: %s)", notice["execution_id"],
                        notice["error_message"], notice["owner_id"], ", ".join(notice["next_step_options"]))
            if self.notify is not None:
                self.notify(notice)


def backlog_shards(r: redis.Redis, prefix: str, shards: int) -> list[int]:
    """Shards whose streams hold entries (new or unacknowledged): what the periodic sweep drains."""
    keys = Keys(prefix)
    pipe = r.pipeline(transaction=False)
    for shard in range(shards):
        pipe.xlen(keys.stream(shard))
    return [shard for shard, n in enumerate(pipe.execute()) if n]
