"""Is beat still sweeping? Its periodic sweep leaves the time in Redis; readers compare its age.

The key is written by `rescue_stalled_work` as a worker runs it, so a fresh key proves the whole
loop: beat sent the sweep and a worker ran it. A late one means beat is gone (or no worker reads
the queue); either way timeouts, silent agents and stalled shards are no longer taken care of.

Each worker also beats on its own (`record_worker`, from a thread of its main process,
workers/main.py): an idle worker is alive too, and a stack whose workers are all gone accepts
events that nobody applies. `/readyz` reads both (orchestrator/readiness.py).
"""

from __future__ import annotations

import time
from typing import Literal

import redis

BeatState = Literal["ok", "late", "unknown"]

# Beat fires every interval; allowing three absorbs a slow sweep or a busy queue without crying wolf.
LATE_AFTER_INTERVALS = 3


def beat_key(prefix: str) -> str:
    return f"{prefix}beat:last"


def record_beat(r: redis.Redis, prefix: str, now: float | None = None) -> None:
    """Note that a sweep ran now (Unix seconds)."""
    r.set(beat_key(prefix), repr(time.time() if now is None else now))


def last_beat(r: redis.Redis, prefix: str) -> float | None:
    """When the last sweep ran (Unix seconds), or None if none has since this prefix was used."""
    raw = r.get(beat_key(prefix))
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def beat_state(last: float | None, interval_seconds: float, *, now: float, up_since: float) -> BeatState:
    """Say "ok", "late", or "unknown" (no sweep recorded yet, while the reader itself is young).

    `up_since` is when the reader started: a freshly started stack has had no sweep yet (beat's
    first comes one interval after it starts), so a missing key only turns "late" once the reader
    has been up for as long as a late key would take. Ages use wall clocks of two hosts (worker
    and web); NTP keeps them well inside three intervals of each other.
    """
    limit = LATE_AFTER_INTERVALS * interval_seconds
    if last is None:
        return "unknown" if now - up_since <= limit else "late"
    return "ok" if now - last <= limit else "late"


# -- workers: each leaves its own heartbeat -------------------------------------------------------------

def workers_key(prefix: str) -> str:
    """A sorted set: worker name → when it last said it is alive (Unix seconds)."""
    return f"{prefix}workers"


def record_worker(r: redis.Redis, prefix: str, name: str, now: float | None = None) -> None:
    """Note that the worker `name` is alive now; entries silent for a day are dropped on the way."""
    now = time.time() if now is None else now
    pipe = r.pipeline(transaction=False)
    pipe.zadd(workers_key(prefix), {name: now})
    pipe.zremrangebyscore(workers_key(prefix), "-inf", now - 86400)
    pipe.execute()


def forget_worker(r: redis.Redis, prefix: str, name: str) -> None:
    """A worker that stops cleanly says so: readiness sees it gone at once, not three intervals later."""
    r.zrem(workers_key(prefix), name)


def worker_heartbeats(r: redis.Redis, prefix: str) -> dict[str, float]:
    """Each known worker's last heartbeat (Unix seconds)."""
    return {name.decode(): float(at) for name, at in r.zrange(workers_key(prefix), 0, -1, withscores=True)}


def live_workers(beats: dict[str, float], interval_seconds: float, *, now: float) -> int:
    """How many workers beat within three intervals (the same allowance as beat's)."""
    limit = LATE_AFTER_INTERVALS * interval_seconds
    return sum(1 for at in beats.values() if now - at <= limit)
