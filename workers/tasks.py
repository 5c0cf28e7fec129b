"""Celery tasks. Each takes ids or nothing and calls one domain operation."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import requests
from celery import Task, shared_task

from orchestrator import archive, sweeper
from orchestrator.events.drain import ShardDrainer, backlog_shards
from orchestrator.liveness import record_beat
from orchestrator.models import utcnow
from orchestrator.notify import send_webhook
from workers.runtime import runtime_for

log = logging.getLogger(__name__)

ARCHIVE_TASK_SECONDS = 30.0


def _drainer(task: Task) -> ShardDrainer:
    rt = runtime_for(task.app)
    if rt.drainer is None:
        s = rt.settings
        notify = (lambda notice: notify_owner.delay(notice)) if s.notify_webhook_url else None
        rt.drainer = ShardDrainer(rt.db, rt.redis, s.redis_key_prefix, batch_size=s.ingest_batch_size,
                                  lease_seconds=s.ingest_lease_seconds, notify=notify)
    return rt.drainer


@shared_task(name="workers.tasks.drain", bind=True, ignore_result=True)
def drain(self: Task, shard: int) -> dict[str, Any]:
    """Apply what waits in one shard's stream (triggered by the front end after it accepts events)."""
    drainer = _drainer(self)
    stats = drainer.drain(int(shard))
    if stats.more:
        drain.delay(shard)  # to the back of the queue: other shards' drains go first
    elif not stats.lease_taken and (delay := drainer.retry_after(int(shard))) is not None:
        drain.apply_async((shard,), countdown=delay)  # in case the holder is dead: after its lease
    if stats.batches:
        log.info("shard %s: %d applied, %d duplicates, %d dead-lettered, batches %s", shard, stats.applied,
                 stats.duplicates, stats.dead_lettered, stats.batch_sizes)
    return {"applied": stats.applied, "batches": stats.batches, "dead_lettered": stats.dead_lettered}


@shared_task(name="workers.tasks.rescue_stalled_work", bind=True, ignore_result=True)
def rescue_stalled_work(self: Task) -> None:
    """Beat's safety net: drain shards a lost trigger left behind, release overdue work."""
    rt = runtime_for(self.app)
    s = rt.settings
    record_beat(rt.redis, s.redis_key_prefix)  # /readyz's proof that beat (and a worker) still run
    for shard in backlog_shards(rt.redis, s.redis_key_prefix, s.ingest_shards):
        drain.delay(shard)
    release_overdue_work.delay()


@shared_task(name="workers.tasks.release_overdue_work", bind=True, ignore_result=True)
def release_overdue_work(self: Task) -> None:
    """Subtasks past their timeout, or held by silent agents, go back for retry or fail."""
    rt = runtime_for(self.app)
    sweeper.release_overdue_work(rt.db, rt.redis, rt.settings, utcnow())


@shared_task(name="workers.tasks.archive_ended_executions", bind=True, ignore_result=True)
def archive_ended_executions(self: Task) -> None:
    """Move the event logs of executions that ended ARCHIVE_AFTER_DAYS ago to the archive, for
    ARCHIVE_TASK_SECONDS at most: a backlog must not hold a worker process away from the drains."""
    rt = runtime_for(self.app)
    s = rt.settings
    report = archive.archive_ended(rt.db, archive.open_store(s), utcnow(), timedelta(days=s.archive_after_days),
                                   s.archive_batch_size, until=time.monotonic() + ARCHIVE_TASK_SECONDS)
    if report and report[-1].done < report[-1].total:
        archive_ended_executions.delay()  # the rest, behind what waits in the queue


@shared_task(name="workers.tasks.notify_owner", bind=True, ignore_result=True, max_retries=8,
             autoretry_for=(requests.RequestException,), retry_backoff=True, retry_backoff_max=600)
def notify_owner(self: Task, notice: dict[str, Any]) -> None:
    s = runtime_for(self.app).settings
    if not s.notify_webhook_url:
        return
    status = send_webhook(s.notify_webhook_url, s.notify_webhook_secret, notice)
    if status >= 500:
        raise requests.RequestException(f"webhook answered {status}")
    if status >= 400:
        log.error("owner webhook refused the notice for %s with %s", notice.get("execution_id"), status)
