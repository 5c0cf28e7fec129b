"""The dead-letter stream: events that could not be applied, set aside so that their shard moves on.

Each entry keeps the original message as it was in the shard's stream, where it came from, and the
kind of failure (the detail is in the worker's log, never here or in an answer). Operators list,
requeue (after a fix) or drop them with `orchestrator events dead-letters` or the admin API, by the
event id or the dead-letter entry id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from orchestrator.errors import NotFound
from orchestrator.events import protocol
from orchestrator.events.protocol import Envelope, MalformedEntry, pending_outcome, rejected_outcome, store_outcome
from orchestrator.metrics import instruments
from orchestrator.models import utcnow
from orchestrator.publish import iso

REJECTED_MESSAGE = "The event could not be applied; it was set aside for an operator to look at."


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the entry id in the dead-letter stream
    event_id: str | None
    execution_id: str | None
    agent_id: str | None
    shard: int
    reason: str
    deliveries: int
    failed_at: str
    payload: bytes

    def to_dict(self) -> dict[str, Any]:
        """What operators see: where it came from and why, not the payload (it may hold personal data)."""
        return {"id": self.id, "event_id": self.event_id, "execution_id": self.execution_id,
                "agent_id": self.agent_id, "shard": self.shard, "reason": self.reason,
                "deliveries": self.deliveries, "failed_at": self.failed_at, "payload_bytes": len(self.payload)}


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    raw = fields.get(name)
    return raw.decode() if raw else None


def _dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(), event_id=_text(fields, b"event_id"), execution_id=_text(fields, b"execution_id"),
        agent_id=_text(fields, b"agent_id"), shard=int(fields.get(b"shard", b"0")),
        reason=_text(fields, b"reason") or "unknown", deliveries=int(fields.get(b"deliveries", b"0")),
        failed_at=_text(fields, b"failed_at") or "", payload=fields.get(b"e", b""),
    )


class DeadLetters:
    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.redis = r
        self.keys = protocol.Keys(prefix)

    def add(self, shard: int, stream: str, entry_id: bytes, fields: dict[bytes, bytes], env: Envelope | None,
            reason: str, deliveries: int) -> None:
        """Move a stream entry here, in one MULTI: it leaves its shard and its outcome becomes `rejected`."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letters(), {
            "e": fields.get(b"e", b""), "shard": shard, "entry_id": entry_id, "reason": reason,
            "deliveries": deliveries, "failed_at": iso(utcnow()) or "",
            "event_id": env.id if env else "", "execution_id": (env.execution_id or "") if env else "",
            "agent_id": env.agent_id if env else "",
        })
        pipe.xack(stream, protocol.GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        if env is not None:
            store_outcome(pipe, self.keys, env.id, orjson.dumps(rejected_outcome(env, "rejected", REJECTED_MESSAGE)))
        pipe.execute()
        instruments().events_dead_lettered.labels(reason).inc()

    def count(self) -> int:
        return int(self.redis.xlen(self.keys.dead_letters()))

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest first."""
        return [_dead_letter(i, f) for i, f in self.redis.xrange(self.keys.dead_letters(), count=limit)]

    def _scan(self) -> Iterator[DeadLetter]:
        start = "-"
        while True:
            rows = self.redis.xrange(self.keys.dead_letters(), min=start, count=500)
            for entry_id, fields in rows:
                yield _dead_letter(entry_id, fields)
            if len(rows) < 500:
                return
            start = "(" + rows[-1][0].decode()

    def find(self, ident: str) -> DeadLetter:
        """The entry whose event id or entry id is `ident`."""
        for dl in self._scan():
            if ident in (dl.id, dl.event_id):
                return dl
        raise NotFound(f"No dead letter {ident}.", id=ident)

    def requeue(self, ident: str, shards: int, trigger: Callable[[int], None] | None = None) -> DeadLetter:
        """Put the original message back at the end of its execution's shard, pending again."""
        dl = self.find(ident)
        try:
            shard = protocol.shard_of(Envelope.decode({b"e": dl.payload}).routing_id, shards)
        except MalformedEntry:
            shard = dl.shard % shards  # it will come back here; requeueing it is the operator's call
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.stream(shard), {"e": dl.payload})
        if dl.event_id:
            pipe.set(self.keys.outcome(dl.event_id), pending_outcome(dl.event_id, dl.execution_id, dl.agent_id or ""),
                     ex=protocol.OUTCOME_SECONDS)
            pipe.delete(self.keys.reply(dl.event_id))
        pipe.xdel(self.keys.dead_letters(), dl.id)
        pipe.execute()
        if trigger is not None:
            trigger(shard)
        return dl

    def drop(self, ident: str) -> DeadLetter:
        dl = self.find(ident)
        self.redis.xdel(self.keys.dead_letters(), dl.id)
        return dl
