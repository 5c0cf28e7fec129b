"""The Celery app, built from the same Settings object as the Flask app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis
from celery import Celery

from orchestrator.embedded_redis import celery_broker_url
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's lowercase settings for `settings` (what the Flask app keeps in config["CELERY"])."""
    assert settings.redis_url, "resolve the Redis URL before building Celery"
    broker = celery_broker_url(settings.redis_url)
    return {
        "broker_url": broker,
        "result_backend": None,
        "task_ignore_result": True,
        # A task is acknowledged after it ran, so a killed worker's task is delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "global_keyprefix": f"{settings.redis_key_prefix}celery:",
            "visibility_timeout": 3600,
        },
        "task_default_queue": "orchestrator",
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "rescue-stalled-work": {"task": "workers.tasks.rescue_stalled_work",
                                    "schedule": float(settings.sweep_interval_seconds)},
            "archive-ended-executions": {"task": "workers.tasks.archive_ended_executions",
                                         "schedule": float(settings.archive_interval_seconds)},
        },
        # Beat keeps its schedule in memory: a fixed interval gains nothing from a file (a restarted
        # beat just sweeps one interval later; the sweep is idempotent), and a file ties beat to a
        # writable local folder, which production's environment does not provide.
        "beat_scheduler": "celery.beat:Scheduler",
        "timezone": "UTC",
        "enable_utc": True,
    }


def create_celery(settings: Settings, name: str = "orchestrator", config: dict[str, Any] | None = None) -> Celery:
    app = Celery(name, include=["workers.tasks"])
    app.config_from_object(config or celery_config(settings))
    # Tasks reach the database and Redis through this, never through a module-level global.
    app.orchestrator_settings = settings  # type: ignore[attr-defined]
    return app


def drain_trigger(celery_app: Celery) -> Callable[[int], None]:
    """Queue a drain of a shard whose stream just took new events.

    The events are in the stream when this runs: a broker that fails now (Redis going down between
    the two calls) must not turn their acceptance into an error, or the agent would take them for
    lost. Beat's safety net drains a shard left with a backlog (`rescue_stalled_work`)."""

    def trigger(shard: int) -> None:
        try:
            celery_app.send_task("workers.tasks.drain", args=[shard])
        except (kombu.exceptions.OperationalError, redis.RedisError) as exc:
            log.warning("drain of shard %s not queued (%s); beat's sweep drains it", shard, exc)

    return trigger
