"""What the stack looks like now: shard backlogs, dead letters, executions by state, agents, heartbeats.

One snapshot feeds three readers: a Prometheus scrape (`metrics.SnapshotCollector`), `/readyz`
(`orchestrator/readiness.py`) and the dashboard's ops view (`summary`). It costs one Redis round trip
(every shard's length and first entry, the dead letters, the heartbeats) and two small queries (one
GROUP BY over executions' states, one count of agents), whatever the load: nothing is computed per
event.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from orchestrator.db import Database
from orchestrator.events.protocol import SHARDS_SWEPT, Keys
from orchestrator.liveness import beat_key, live_workers, workers_key
from orchestrator.metrics import ShardBacklog, Snapshot, totals
from orchestrator.models import Agent, Execution, utcnow
from orchestrator.settings import Settings

# The counters the ops view turns into rates (events/s accepted and applied).
RATE_COUNTERS = ("orchestrator_events_accepted", "orchestrator_events_applied", "orchestrator_events_dead_lettered")


def redis_side(r: redis.Redis, settings: Settings, now: float) -> dict[str, Any]:
    """Shard backlogs (length, age of the oldest entry), dead letters and heartbeats, in one round trip.
    Every shard in use, and a retired one (at or past INGEST_SHARDS) while events queued before the
    setting was lowered still wait there.

    A stream entry's id starts with the millisecond it was added, and entries leave the stream only
    once applied (or set aside), so the first entry's id dates the oldest work still waiting."""
    keys = Keys(settings.redis_key_prefix)
    looked = max(settings.ingest_shards, SHARDS_SWEPT)
    pipe = r.pipeline(transaction=False)
    for shard in range(looked):
        pipe.xlen(keys.stream(shard))
        pipe.xrange(keys.stream(shard), count=1)
    pipe.xlen(keys.dead_letters())
    pipe.get(beat_key(settings.redis_key_prefix))
    pipe.zrange(workers_key(settings.redis_key_prefix), 0, -1, withscores=True)
    replies = pipe.execute()
    shards = []
    for shard in range(looked):
        length, first = replies[2 * shard], replies[2 * shard + 1]
        if shard >= settings.ingest_shards and not length:
            continue
        age = max(0.0, now - int(first[0][0].split(b"-")[0]) / 1000) if first else 0.0
        shards.append(ShardBacklog(shard, int(length), age))
    dead, beat_raw, worker_rows = replies[2 * looked:]
    beats = {name.decode(): float(at) for name, at in worker_rows}
    return {"shards": shards, "dead_letters": int(dead), "beat": _float_or_none(beat_raw), "workers": beats}


def database_side(session: Session, online_since: Any) -> dict[str, Any]:
    """Executions by state (one GROUP BY on the state index) and agents online (heard from since `online_since`)."""
    states = {state: int(n) for state, n in session.execute(
        select(Execution.status, func.count()).group_by(Execution.status))}
    total, online = session.execute(select(
        func.count(), func.count().filter(Agent.last_heartbeat >= online_since)).select_from(Agent)).one()
    return {"executions": states, "agents_total": int(total), "agents_online": int(online or 0)}


def take_snapshot(db: Database, r: redis.Redis, settings: Settings, now: float | None = None) -> Snapshot:
    now = time.time() if now is None else now
    side = redis_side(r, settings, now)
    with db.reading() as s:
        rows = database_side(s, utcnow() - timedelta(seconds=settings.heartbeat_window_seconds))
    beats: dict[str, float] = side["workers"]
    newest = max(beats.values(), default=None)
    return Snapshot(
        shards=side["shards"], dead_letters=side["dead_letters"], executions=rows["executions"],
        agents_online=rows["agents_online"], agents_total=rows["agents_total"],
        workers_alive=live_workers(beats, settings.sweep_interval_seconds, now=now),
        worker_heartbeat_age_seconds=None if newest is None else max(0.0, now - newest),
        beat_age_seconds=None if side["beat"] is None else max(0.0, now - side["beat"]),
    )


def summary(snap: Snapshot, now: float | None = None) -> dict[str, Any]:
    """The ops view's JSON: the snapshot, and counter totals the page turns into rates between polls."""
    counts = totals(RATE_COUNTERS)
    return {
        "time": time.time() if now is None else now,
        "totals": {"accepted": counts["orchestrator_events_accepted"],
                   "applied": counts["orchestrator_events_applied"],
                   "dead_lettered": counts["orchestrator_events_dead_lettered"]},
        "shards": [{"shard": s.shard, "backlog": s.length, "oldest_age_seconds": round(s.oldest_age_seconds, 3)}
                   for s in snap.shards],
        "dead_letters": snap.dead_letters,
        "executions": snap.executions,
        "agents": {"online": snap.agents_online, "total": snap.agents_total},
        "workers_alive": snap.workers_alive,
        "worker_heartbeat_age_seconds": snap.worker_heartbeat_age_seconds,
        "beat_age_seconds": snap.beat_age_seconds,
    }


def _float_or_none(raw: bytes | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
