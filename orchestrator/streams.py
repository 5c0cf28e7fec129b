"""Draining a shard: read a batch from its Redis stream, apply it, commit, then acknowledge.

Only the holder of the shard's lease reads it, so events of one execution are applied in the order
they were accepted (invariant 3). Entries are acknowledged (and deleted) only after the database
commit (invariant 1); a worker killed mid-batch leaves them pending, and the next lease holder
reads its pending list before anything new. Replies, pub/sub and hold releases follow the commit
(invariant 5).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from redis.exceptions import LockError, ResponseError
from sqlalchemy.exc import DBAPIError, IntegrityError

from orchestrator.apply import BatchResult, Envelope, apply_batch
from orchestrator.db import Database, is_transient
from orchestrator.holds import release_holds
from orchestrator.ingest import CONSUMER, GROUP, OUTCOME_SECONDS, REPLY_SECONDS, Keys
from orchestrator.models import utcnow
from orchestrator.publish import publish
from orchestrator.state_machine import log_transition

log = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], None]


@dataclass
class DrainStats:
    shard: int
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    lease_taken: bool = True
    more: bool = False  # stopped at the time budget with entries left: drain again soon


def ensure_group(r: redis.Redis, stream: str) -> None:
    try:
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _parse(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> tuple[list[Envelope], list[bytes]]:
    envelopes, bad = [], []
    for entry_id, fields in entries:
        try:
            raw = orjson.loads(fields[b"e"])
            envelopes.append(Envelope(
                id=raw["id"], execution_id=raw["execution_id"], agent_id=raw["agent_id"],
                received_at=datetime.fromisoformat(raw["received_at"].replace("Z", "+00:00")), body=raw["body"],
            ))
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            log.error("dropping malformed stream entry %r", entry_id)
            bad.append(entry_id)
    return envelopes, bad


class ShardDrainer:
    def __init__(self, db: Database, r: redis.Redis, prefix: str, *, batch_size: int, lease_seconds: int,
                 notify: Notify | None = None) -> None:
        self.db = db
        self.redis = r
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.notify = notify

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
        backlog = True  # first what a dead predecessor read but never acknowledged
        while True:
            if not backlog:
                self.redis.delete(self.keys.trigger_flag(shard))
            resp = self.redis.xreadgroup(GROUP, CONSUMER, {stream: "0" if backlog else ">"}, count=self.batch_size)
            entries = resp[0][1] if resp else []
            entries = [(eid, f) for eid, f in entries if f]  # pending entries already deleted come back empty
            if not entries:
                if backlog:
                    backlog = False
                    continue
                return
            envelopes, _malformed = _parse(entries)  # acknowledged below with the rest
            result = self._apply_with_retry(envelopes) if envelopes else BatchResult()
            ids = [eid for eid, _ in entries]
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(stream, GROUP, *ids)
            pipe.xdel(stream, *ids)
            pipe.execute()
            self._after_commit(result)
            stats.batches += 1
            stats.applied += result.applied
            stats.duplicates += result.duplicates
            stats.batch_sizes.append(len(entries))
            lock.reacquire()
            if time.monotonic() >= deadline:
                return

    def _apply_with_retry(self, envelopes: list[Envelope]) -> BatchResult:
        # The batch rolls back whole, so another try is safe after a deadlock, a lost connection or a
        # racing duplicate insert; anything else propagates and the entries stay pending.
        return self.db.transaction(lambda session: apply_batch(session, envelopes, utcnow()), attempts=5,
                                   retry_if=_worth_retrying)

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


def _worth_retrying(exc: DBAPIError) -> bool:
    return isinstance(exc, IntegrityError) or exc.connection_invalidated or is_transient(exc)


def backlog_shards(r: redis.Redis, prefix: str, shards: int) -> list[int]:
    """Shards whose streams hold entries (new or unacknowledged): what the periodic sweep drains."""
    keys = Keys(prefix)
    pipe = r.pipeline(transaction=False)
    for shard in range(shards):
        pipe.xlen(keys.stream(shard))
    return [shard for shard, n in enumerate(pipe.execute()) if n]
