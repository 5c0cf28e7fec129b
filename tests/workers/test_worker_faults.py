"""Fault tests for the pipeline: a worker killed in the middle of a batch loses nothing and
applies nothing twice; events accepted while no worker runs wait in Redis until one does."""

from __future__ import annotations

import secrets
import time

import pytest
from sqlalchemy import func, select

from orchestrator.events.accept import Ingestor
from orchestrator.events.protocol import Keys, shard_of
from orchestrator.models import ExecutionEvent, ExecutionSubtask, utcnow
from tests.conftest import WorkerProcess
from tests.workers.helpers import claim, hold_database_write_lock, own_key_prefix, pending_count, queued_execution
from workers.celery_app import create_celery

pytestmark = pytest.mark.integration


@pytest.fixture
def isolated(migrated, session_dir):
    """Settings with a key prefix of their own, so the session's worker never sees these events."""
    with own_key_prefix(migrated.replace(ingest_batch_size=1000), "orchfault") as pair:
        yield pair


def _agent_events(db, execution_id: str) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(ExecutionEvent).where(
            ExecutionEvent.execution_id == execution_id, ExecutionEvent.source == "agent"))






def test_worker_killed_mid_batch_loses_nothing(db, isolated, session_dir, worker) -> None:
    settings, r = isolated
    scene = queued_execution(db, n_subtasks=2)
    claim(db, r, settings, scene, "task_0_a")
    celery_app = create_celery(settings)
    ingestor = Ingestor(r, settings.redis_key_prefix, settings.ingest_shards,
                        trigger=lambda shard: celery_app.send_task("workers.tasks.drain", args=[shard]))
    stream = Keys(settings.redis_key_prefix).stream(shard_of(scene.execution_id, settings.ingest_shards))

    doomed = WorkerProcess(settings, session_dir / f"doomed-{secrets.token_hex(2)}.log", concurrency=1).start()
    engine, lock = hold_database_write_lock(settings, scene.execution_id)
    try:
        items = [(scene.execution_id, scene.agent_id, {"event_type": "heartbeat", "message": f"beat {i}"})
                 for i in range(300)]
        items.append((scene.execution_id, scene.agent_id, {"event_type": "task_complete", "task_id": "task_0_a"}))
        accepted = ingestor.accept_many(items, utcnow())
        assert len({a.event_id for a in accepted}) == 301
        # Wait until the doomed worker has read the batch (it is pending) and is stuck applying it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pending_count(r, stream) == 0:
            time.sleep(0.05)
        assert pending_count(r, stream) > 0
        time.sleep(0.3)
        doomed.kill()
    finally:
        lock.rollback()
        lock.close()
        engine.dispose()
    assert _agent_events(db, scene.execution_id) == 0  # nothing of the batch committed

    survivor = WorkerProcess(settings, session_dir / f"survivor-{secrets.token_hex(2)}.log", concurrency=1).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _agent_events(db, scene.execution_id) < 301:
            # What beat does every few seconds: drain shards that still hold entries.
            celery_app.send_task("workers.tasks.rescue_stalled_work")
            time.sleep(1)
        assert _agent_events(db, scene.execution_id) == 301
        assert r.xlen(stream) == 0 and pending_count(r, stream) == 0
        # Delivered again after the kill, applied once: the subtask completed once, each event stored once.
        celery_app.send_task("workers.tasks.rescue_stalled_work")
        time.sleep(1.5)
        assert _agent_events(db, scene.execution_id) == 301
        with db.reading() as s:
            sub = s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                           ExecutionSubtask.plan_subtask_id == "task_0_a"))
            assert sub.status == "COMPLETE"
    finally:
        survivor.stop()
