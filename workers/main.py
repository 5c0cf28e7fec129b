"""Worker and beat entry point: `celery -A workers.main worker` (what `orchestrator worker` runs).

Importing this does nothing: Celery's `-A workers.main` looks up `workers.main.app`, and that first
access builds the app from the environment (starting the embedded Redis when REDIS_URL is unset).
"""

from __future__ import annotations

from functools import cache

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_process_init

from orchestrator.db import Database
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.encryption import EncryptionKeyError
from orchestrator.encryption_keys import check_keys
from orchestrator.log_masking import install_log_masking
from orchestrator.settings import Settings
from workers.celery_app import create_celery
from workers.runtime import reset_runtime


@cache
def celery_app() -> Celery:
    """The worker's Celery app, built once per process from the environment."""
    settings = Settings.from_env()
    settings = settings.replace(redis_url=resolved_redis_url(settings.redis_url, settings.data_dir))
    return create_celery(settings)


def __getattr__(name: str) -> Celery:
    # PEP 562: Celery's find_app reads `module.app`, then `module.celery`; both mean the one app.
    if name in ("app", "celery"):
        return celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@worker_init.connect
def _check_encryption_keys(**_: object) -> None:
    # Before the pool starts: a worker whose keys cannot read the stored data must not start. Celery
    # logs and swallows a handler's exceptions, but not SystemExit.
    db = Database(celery_app().orchestrator_settings)  # type: ignore[attr-defined]
    try:
        check_keys(db)
    except EncryptionKeyError as exc:
        raise SystemExit(f"worker not started: {exc}") from None
    finally:
        db.dispose()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    reset_runtime(celery_app())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_logs(**_: object) -> None:
    # Celery configures logging itself, in the worker and in beat: mask what its handlers write.
    install_log_masking()
