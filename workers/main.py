"""Worker and beat entry point: `celery -A workers.main worker` (what `orchestrator worker` runs).

Importing this does nothing: Celery's `-A workers.main` looks up `workers.main.app`, and that first
access builds the app from the environment (starting the embedded Redis when REDIS_URL is unset).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from functools import cache

import redis
from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import start_http_server

from orchestrator.db import Database
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.encryption import EncryptionKeyError
from orchestrator.encryption_keys import check_keys
from orchestrator.liveness import forget_worker, record_worker
from orchestrator.log_masking import install_log_masking
from orchestrator.metrics import host_registry
from orchestrator.settings import Settings
from workers.celery_app import create_celery
from workers.runtime import reset_runtime, warm_up

log = logging.getLogger(__name__)


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
    warm_up(celery_app())


class _Heartbeat:
    """The worker's heartbeat for /readyz: its main process notes in Redis, every sweep interval, that
    it is alive (orchestrator/liveness.py). A thread of its own, so that a long task delays nothing."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.settings: Settings = celery_app().orchestrator_settings  # type: ignore[attr-defined]
        self.redis = redis.Redis.from_url(self.settings.redis_url or "")
        self.stopped = threading.Event()

    def run(self) -> None:
        prefix = self.settings.redis_key_prefix
        while not self.stopped.is_set():
            try:
                record_worker(self.redis, prefix, self.name)
            except redis.RedisError as exc:  # Redis away: the worker itself will notice soon enough
                log.warning("worker heartbeat not recorded (%s)", exc)
            self.stopped.wait(self.settings.sweep_interval_seconds)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(redis.RedisError):
            forget_worker(self.redis, self.settings.redis_key_prefix, self.name)
        self.redis.close()


_heartbeat: list[_Heartbeat] = []


@worker_ready.connect
def _start_heartbeat(sender: object = None, **_: object) -> None:
    beat = _Heartbeat(str(getattr(sender, "hostname", None) or f"{socket.gethostname()}-{os.getpid()}"))
    threading.Thread(target=beat.run, name="orchestrator-heartbeat", daemon=True).start()
    _heartbeat.append(beat)
    port = beat.settings.worker_metrics_port
    if port:
        # Where the web runs on another host (a container of its own), Prometheus scrapes the workers here:
        # the pool's processes write to this host's folder, which this adds up (orchestrator/metrics.py).
        start_http_server(port, registry=host_registry())


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    while _heartbeat:
        _heartbeat.pop().stop()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_logs(**_: object) -> None:
    # Celery configures logging itself, in the worker and in beat: mask what its handlers write.
    install_log_masking()
