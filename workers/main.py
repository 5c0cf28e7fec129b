"""Worker and beat entry point: `celery -A workers.main worker` (what `orchestrator worker` runs)."""

from __future__ import annotations

from celery.signals import worker_process_init

from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.settings import Settings
from workers.celery_app import create_celery
from workers.runtime import reset_runtime

_settings = Settings.from_env()
_settings = _settings.replace(redis_url=resolved_redis_url(_settings.redis_url, _settings.data_dir))
celery = create_celery(_settings)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    reset_runtime(celery)
