"""Is the stack ready to do its work? `/readyz`'s answer: "ready", "degraded" or "down", with reasons.

down (503): the database or Redis cannot be reached: nothing can be accepted or applied.
degraded (200): requests are served but something needs an operator: no worker heartbeat (events
are accepted but nobody applies them), beat late (timeouts, silent agents and stalled shards go
unhandled), a shard whose oldest entry is older than READY_BACKLOG_SECONDS (a stuck or overloaded
shard), dead letters waiting.

A worker or beat that never beat is "unknown" (counted as ok) while the reader itself is younger than
three intervals, as a fresh stack's are; after that, "late".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis
from sqlalchemy import text

from orchestrator.db import Database
from orchestrator.liveness import LATE_AFTER_INTERVALS, beat_state
from orchestrator.metrics import Snapshot
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

Status = Literal["ready", "degraded", "down"]


@dataclass
class Readiness:
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        found = {c["status"] for c in self.checks.values()}
        if "down" in found:
            return "down"
        return "degraded" if "degraded" in found else "ready"

    def add(self, name: str, status: str, reason: str, **detail: Any) -> None:
        self.checks[name] = {"status": status, "reason": reason, **detail}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks}


def assess(db: Database, r: redis.Redis, settings: Settings, take: Callable[[], Snapshot], *,
           up_since: float, now: float | None = None) -> Readiness:
    """Check the database and Redis, then read the snapshot (`take`) for the rest."""
    now = time.time() if now is None else now
    out = Readiness()
    try:
        with db.reading() as session:
            session.execute(text("SELECT 1"))
        out.add("database", "ok", "reachable")
    except Exception as exc:
        log.warning("readiness: database unreachable (%s)", type(exc).__name__)
        out.add("database", "down", "unreachable")
    try:
        r.ping()
        out.add("redis", "ok", "reachable")
    except redis.RedisError as exc:
        log.warning("readiness: Redis unreachable (%s)", type(exc).__name__)
        out.add("redis", "down", "unreachable")
    if out.status == "down":
        return out
    try:
        snap = take()
    except Exception:
        log.exception("readiness: snapshot failed")
        out.add("snapshot", "down", "could not read the stack's state")
        return out
    _judge(out, snap, settings, now, up_since)
    return out


def _judge(out: Readiness, snap: Snapshot, settings: Settings, now: float, up_since: float) -> None:
    interval = settings.sweep_interval_seconds
    limit = LATE_AFTER_INTERVALS * interval
    if snap.workers_alive:
        out.add("worker", "ok", f"{snap.workers_alive} worker(s) beat within {limit:g} s",
                alive=snap.workers_alive, age_seconds=_round(snap.worker_heartbeat_age_seconds))
    elif snap.worker_heartbeat_age_seconds is None and now - up_since <= limit:
        out.add("worker", "unknown", "no worker heartbeat yet", alive=0)
    else:
        out.add("worker", "degraded", f"no worker heartbeat within {limit:g} s: events are not applied",
                alive=0, age_seconds=_round(snap.worker_heartbeat_age_seconds))
    last = None if snap.beat_age_seconds is None else now - snap.beat_age_seconds
    state = beat_state(last, interval, now=now, up_since=up_since)
    reasons = {"ok": f"swept within {limit:g} s", "unknown": "no sweep yet",
               "late": f"no sweep within {limit:g} s: timeouts and stalled shards go unhandled"}
    out.add("beat", "degraded" if state == "late" else state, reasons[state], age_seconds=_round(snap.beat_age_seconds))
    oldest = max(snap.shards, key=lambda s: s.oldest_age_seconds, default=None)
    threshold = settings.ready_backlog_seconds
    if oldest is not None and oldest.oldest_age_seconds > threshold:
        out.add("backlog", "degraded", f"shard {oldest.shard}'s oldest entry waits {oldest.oldest_age_seconds:.0f} s "
                f"(over {threshold} s)", shard=oldest.shard, oldest_age_seconds=_round(oldest.oldest_age_seconds),
                entries=sum(s.length for s in snap.shards))
    else:
        out.add("backlog", "ok", f"no entry older than {threshold} s", entries=sum(s.length for s in snap.shards),
                oldest_age_seconds=_round(oldest.oldest_age_seconds if oldest else 0.0))
    if snap.dead_letters:
        out.add("dead_letters", "degraded", f"{snap.dead_letters} event(s) set aside for an operator",
                count=snap.dead_letters)
    else:
        out.add("dead_letters", "ok", "none", count=0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
