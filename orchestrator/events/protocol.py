"""The event path's wire format: Redis keys, sharding, dedup keys and the one message both halves use.

The front end (`accept`) writes an `Envelope` into the stream of its execution's shard; the worker
(`drain`) reads it back with `Envelope.decode`. Nothing else builds or parses these messages.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from orchestrator.publish import iso

DEDUP_SECONDS = 24 * 3600
OUTCOME_SECONDS = 24 * 3600
REPLY_SECONDS = 60
# Shards whose streams beat drains and ops reports, whatever INGEST_SHARDS is now: lowering it leaves
# events queued before on shards no new event goes to, and those are still applied and shown.
SHARDS_SWEPT = 64

GROUP = "appliers"
# One consumer name per shard: only the lease holder reads, so a dead holder's unacknowledged
# entries are this consumer's pending list, which the next holder reads first.
CONSUMER = "lease-holder"


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the event path, under one prefix."""

    prefix: str

    def stream(self, shard: int) -> str:
        return f"{self.prefix}events:{shard}"

    def dedup(self, agent_id: str, execution_id: str | None, key: str) -> str:
        # Scoped by agent: another agent reusing the same idempotency key never sees this outcome.
        return f"{self.prefix}dedup:{agent_id}:{execution_id or '-'}:{key}"

    def outcome(self, event_id: str) -> str:
        return f"{self.prefix}outcome:{event_id}"

    def reply(self, event_id: str) -> str:
        return f"{self.prefix}reply:{event_id}"

    def trigger_flag(self, shard: int) -> str:
        return f"{self.prefix}drain-flag:{shard}"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}lease:{shard}"

    def retry_flag(self, shard: int) -> str:
        # Set while a drain is scheduled for when the shard's current lease runs out.
        return f"{self.prefix}drain-retry:{shard}"

    def lease_tokens(self, shard: int) -> str:
        # The shard's fencing-token counter: only ever incremented (or raised), never reset or expired.
        return f"{self.prefix}lease-tokens:{shard}"

    def dead_letters(self) -> str:
        return f"{self.prefix}dead-letters"


def store_outcome(pipe: Any, keys: Keys, event_id: str, payload: bytes, awaited: bool = True) -> None:
    """Queue on `pipe` what makes an outcome known: stored for `GET /api/events/{id}`, and pushed to
    the POST that may be waiting for it (`awaited`)."""
    pipe.set(keys.outcome(event_id), payload, ex=OUTCOME_SECONDS)
    if awaited:
        pipe.rpush(keys.reply(event_id), payload)
        pipe.expire(keys.reply(event_id), REPLY_SECONDS)


def shard_of(routing_id: str, shards: int) -> int:
    """Events of one execution always land in one shard: that is what keeps them in order.

    An agent's liveness heartbeat, which names no execution, is routed by the agent's id."""
    return zlib.crc32(routing_id.encode()) % shards


def _canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


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
    return "c:" + hashlib.sha256(_canonical(body)).hexdigest()[:40]


def fingerprint(body: dict[str, Any]) -> str:
    """A digest of what the event says, without its idempotency key: a key reused with another
    body is told apart from a retry of the same one (the IETF Idempotency-Key draft's 422)."""
    return hashlib.sha256(_canonical({k: v for k, v in body.items() if k != "idempotency_key"})).hexdigest()[:32]


def wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """A validated event as it travels: times as ISO text, absent fields left out."""
    ts = body.get("agent_timestamp")
    if isinstance(ts, datetime):
        body = {**body, "agent_timestamp": ts.isoformat()}
    return {k: v for k, v in body.items() if v is not None}


class MalformedEntry(ValueError):
    """A stream entry that is not an envelope this version can read."""


@dataclass(frozen=True)
class Envelope:
    """An accepted event as it travels through Redis; `execution_id` is None for agent liveness."""

    id: str
    execution_id: str | None
    agent_id: str
    received_at: datetime
    body: dict[str, Any]
    # A POST waits for the outcome (one event per request); a batch's events have nobody waiting,
    # so the worker only stores their outcomes and pushes no reply.
    awaited: bool = True

    @property
    def routing_id(self) -> str:
        return self.execution_id or self.agent_id

    def encode(self) -> bytes:
        fields = {"id": self.id, "execution_id": self.execution_id, "agent_id": self.agent_id,
                  "received_at": iso(self.received_at), "body": self.body}
        if not self.awaited:
            fields["w"] = 0  # absent means awaited: entries queued before this field existed
        return orjson.dumps(fields)

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> Envelope:
        try:
            raw = orjson.loads(fields[b"e"])
            received = datetime.fromisoformat(raw["received_at"].replace("Z", "+00:00"))
            env = cls(id=raw["id"], execution_id=raw["execution_id"], agent_id=raw["agent_id"],
                      received_at=received, body=raw["body"], awaited=raw.get("w", 1) != 0)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
            raise MalformedEntry(str(exc)) from exc
        if not (isinstance(env.id, str) and isinstance(env.agent_id, str) and isinstance(env.body, dict)
                and received.tzinfo is not None):
            raise MalformedEntry("envelope fields have the wrong types")
        return env


def pending_outcome(event_id: str, execution_id: str | None, agent_id: str) -> bytes:
    """What the outcome key holds until the event is applied: whose it is, so that only they may ask."""
    return orjson.dumps({"event_id": event_id, "execution_id": execution_id, "agent_id": agent_id,
                         "state": "pending"})


def read_outcome(raw: bytes | None) -> tuple[bool, dict[str, Any] | None]:
    """(still pending, the stored record) from an outcome key's value."""
    if raw is None:
        return False, None
    if raw == b"pending":  # written before pending records named their agent
        return True, {}
    record = orjson.loads(raw)
    return record.get("state") == "pending", record


def rejected_outcome(env: Envelope, code: str, message: str) -> dict[str, Any]:
    """The outcome of an event that was accepted but not applied (stored and sent to the waiting POST)."""
    return {
        "event_id": env.id, "execution_id": env.execution_id, "agent_id": env.agent_id,
        "recorded_at": iso(env.received_at), "applied": False, "error": {"code": code, "message": message},
    }
