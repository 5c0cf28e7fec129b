"""Celery tasks. Each takes ids or nothing and calls one domain operation."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="workers.tasks.sweep", ignore_result=True)
def sweep() -> None:
    """Periodic safety net (Celery beat); the agent-loop issue fills in timeouts and stale streams."""
    log.debug("sweep")
