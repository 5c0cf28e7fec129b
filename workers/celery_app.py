"""The Celery app, built from the same Settings object as the Flask app."""

from __future__ import annotations

from typing import Any

from celery import Celery

from orchestrator.embedded_redis import celery_broker_url
from orchestrator.settings import Settings


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
