"""Per-process connections of a worker, opened on first use (never at import time)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import redis
from celery import Celery
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.db import Database
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    # The shard drainer, kept for the process's life: it remembers which streams have their group.
    drainer: Any = None

    @cached_property
    def db(self) -> Database:
        return Database(self.settings)

    @cached_property
    def redis(self) -> redis.Redis:
        assert self.settings.redis_url
        return redis.Redis.from_url(self.settings.redis_url)


def runtime_for(app: Celery) -> WorkerRuntime:
    rt = getattr(app, "_orchestrator_runtime", None)
    if rt is None:
        rt = WorkerRuntime(app.orchestrator_settings)  # type: ignore[attr-defined]
        app._orchestrator_runtime = rt  # type: ignore[attr-defined]
    return rt


def reset_runtime(app: Celery) -> None:
    """Forget connections inherited from a parent process (called after the worker forks)."""
    app.__dict__.pop("_orchestrator_runtime", None)


def warm_up(app: Celery) -> None:
    """Open this process's database and Redis connections now, not under the first event: connecting
    was most of the first event's 150 ms after a start (docs/performance-stream.md). Best effort: a
    service that is down is met again, and reported, by the first task."""
    rt = runtime_for(app)
    try:
        with rt.db.engine.connect() as conn:  # the engine the drains write through
            conn.execute(text("SELECT 1"))
        rt.redis.ping()
    except (SQLAlchemyError, redis.RedisError) as exc:
        log.warning("worker warm-up: %s unavailable (%s); the first task connects", type(exc).__name__, exc)
