"""The front end's half of the event path: accept an event into Redis, then wait for its outcome.

Accepting is one atomic Lua call per event (dedupe, mark pending, XADD to the execution's shard),
so an answered 2xx means the event is in Redis (invariant 1), and a retried POST finds the first
one's id instead of adding a second event. No database transaction is opened here (invariant 6);
`held_subtask_from_db` is the read-only fallback for a cold hold cache.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.errors import Conflict
from orchestrator.ids import event_id as new_event_id
from orchestrator.models import ExecutionSubtask
from orchestrator.publish import iso

DEDUP_SECONDS = 24 * 3600
OUTCOME_SECONDS = 24 * 3600
REPLY_SECONDS = 60
PENDING = b"pending"

# KEYS: dedup key, stream key, outcome key (by the new id)
# ARGV: new event id, payload, dedup ttl, outcome ttl
_ACCEPT = """
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], 'pending', 'EX', ARGV[4])
redis.call('XADD', KEYS[2], '*', 'e', ARGV[2])
return {1, ARGV[1]}
"""


class NotHolder(Conflict):
    code = "not_holder"


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the event path, under one prefix."""

    prefix: str

    def stream(self, shard: int) -> str:
        return f"{self.prefix}events:{shard}"

    def dedup(self, execution_id: str, key: str) -> str:
        return f"{self.prefix}dedup:{execution_id}:{key}"

    def outcome(self, event_id: str) -> str:
        return f"{self.prefix}outcome:{event_id}"

    def reply(self, event_id: str) -> str:
        return f"{self.prefix}reply:{event_id}"

    def trigger_flag(self, shard: int) -> str:
        return f"{self.prefix}drain-flag:{shard}"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}lease:{shard}"


GROUP = "appliers"
# One consumer name per shard: only the lease holder reads, so a dead holder's unacknowledged
# entries are this consumer's pending list, which the next holder reads first.
CONSUMER = "lease-holder"


def shard_of(execution_id: str, shards: int) -> int:
    """Events of one execution always land in one shard: that is what keeps them in order."""
    return zlib.crc32(execution_id.encode()) % shards


def dedup_key(body: dict[str, Any]) -> str | None:
    """The agent's idempotency_key; else a digest of the content when it carries its own time.

    Without an `agent_timestamp` two identical reports may be two real events (the same error on
    two attempts), so content alone identifies an event only together with the agent's clock.
    """
    explicit = body.get("idempotency_key")
    if explicit:
        return "k:" + hashlib.sha256(str(explicit).encode()).hexdigest()[:40]
    if not body.get("agent_timestamp"):
        return None
    return "c:" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:40]


@dataclass(frozen=True)
class Accepted:
    event_id: str
    execution_id: str
    duplicate: bool


@dataclass
class Ingestor:
    """Accepts events into the shard streams and triggers the worker that drains them."""

    redis: redis.Redis
    prefix: str
    shards: int
    trigger: Callable[[int], None]  # enqueue drain(shard); the web layer passes Celery's send_task

    def __post_init__(self) -> None:
        self.keys = Keys(self.prefix)
        self._accept = self.redis.register_script(_ACCEPT)

    def accept(self, execution_id: str, agent_id: str, body: dict[str, Any], received_at: datetime) -> Accepted:
        return self.accept_many([(execution_id, agent_id, body)], received_at)[0]

    def accept_many(
        self, items: Sequence[tuple[str, str, dict[str, Any]]], received_at: datetime
    ) -> list[Accepted]:
        """Accept events in one round trip, in the given order; then trigger each touched shard once."""
        pipe = self.redis.pipeline(transaction=False)
        planned: list[tuple[str, str, int]] = []
        for execution_id, agent_id, body in items:
            eid = new_event_id()
            shard = shard_of(execution_id, self.shards)
            envelope = {
                "id": eid, "execution_id": execution_id, "agent_id": agent_id,
                "received_at": iso(received_at), "body": body,
            }
            key = dedup_key(body) or f"none:{eid}"
            self._accept(
                keys=[self.keys.dedup(execution_id, key), self.keys.stream(shard), self.keys.outcome(eid)],
                args=[eid, orjson.dumps(envelope, default=str), DEDUP_SECONDS, OUTCOME_SECONDS],
                client=pipe,
            )
            planned.append((eid, execution_id, shard))
        results = pipe.execute()
        accepted: list[Accepted] = []
        shards: set[int] = set()
        for (_, execution_id, shard), (is_new, eid) in zip(planned, results, strict=True):
            eid = eid.decode() if isinstance(eid, bytes) else eid
            accepted.append(Accepted(eid, execution_id, duplicate=not is_new))
            if is_new:
                shards.add(shard)
        for shard in sorted(shards):
            self._trigger_once(shard)
        return accepted

    def find_duplicate(self, execution_id: str, body: dict[str, Any]) -> Accepted | None:
        """The earlier acceptance of the same event, if any (a retried POST must not be refused
        because the first one already finished the subtask)."""
        key = dedup_key(body)
        if key is None:
            return None
        raw = self.redis.get(self.keys.dedup(execution_id, key))
        return Accepted(raw.decode(), execution_id, duplicate=True) if raw is not None else None

    def _trigger_once(self, shard: int) -> None:
        # A burst of events makes one drain task, not thousands; the drain clears the flag each time
        # it reads, so an event that arrives after its last read triggers anew.
        if self.redis.set(self.keys.trigger_flag(shard), b"1", nx=True, px=250):
            self.trigger(shard)

    def wait_outcome(self, event_id: str, timeout_ms: int) -> dict[str, Any] | None:
        """The outcome the worker pushed for `event_id`, or None when it did not come in time."""
        if timeout_ms > 0:
            got = self.redis.blpop([self.keys.reply(event_id)], timeout=timeout_ms / 1000)
            if got is not None:
                return orjson.loads(got[1])
        return self.outcome(event_id)

    def outcome(self, event_id: str) -> dict[str, Any] | None:
        """The stored outcome; None while pending or when Redis no longer knows the event."""
        return self.lookup(event_id)[1]

    def lookup(self, event_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(still pending, stored outcome) in one read; (False, None) when Redis no longer knows it."""
        raw = self.redis.get(self.keys.outcome(event_id))
        if raw is None or raw == PENDING:
            return raw == PENDING, None
        return False, orjson.loads(raw)


def held_subtask_from_db(session: Session, execution_id: str, agent_id: str, ref: str) -> str | None:
    """The plan subtask id that `ref` (a subtask id, or a task id with one held subtask) names,
    if `agent_id` holds it; a read-only lookup for when the Redis hold cache has no entry."""
    rows = session.execute(
        select(ExecutionSubtask.plan_subtask_id, ExecutionSubtask.agent_id, ExecutionSubtask.status).where(
            ExecutionSubtask.execution_id == execution_id,
            (ExecutionSubtask.plan_subtask_id == ref) | (ExecutionSubtask.execution_task_id == f"{execution_id}:{ref}"),
        )
    ).all()
    exact = [r for r in rows if r.plan_subtask_id == ref]
    candidates = exact or [r for r in rows if r.agent_id == agent_id and r.status == "RUNNING"]
    if len(candidates) == 1 and candidates[0].agent_id == agent_id and candidates[0].status == "RUNNING":
        return candidates[0].plan_subtask_id
    return None
