"""Beat's archival: the schedule entry, and the task run by a real worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from orchestrator.models import Execution, User, utcnow
from orchestrator.settings import Settings
from tests.factories import make_execution, make_user
from workers.celery_app import celery_config, create_celery


def test_beat_schedules_the_archival_every_interval(migrated: Settings) -> None:
    entry = celery_config(migrated.replace(archive_interval_seconds=7200))["beat_schedule"]["archive-ended-executions"]
    assert entry == {"task": "workers.tasks.archive_ended_executions", "schedule": 7200.0}


@pytest.mark.integration
def test_the_task_archives_what_ended_long_ago(db, migrated: Settings, worker) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        for name, days in (("exec_task_old", 91), ("exec_task_new", 89)):
            ex = make_execution(s, s.get(User, owner.id), status="COMPLETED", execution_id=name)
            ex.completed_at = utcnow() - timedelta(days=days)
    create_celery(migrated).send_task("workers.tasks.archive_ended_executions")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with db.reading() as s:
            old, new = s.get(Execution, "exec_task_old"), s.get(Execution, "exec_task_new")
        if old.archived_at is not None:
            break
        time.sleep(0.2)
    assert old.archived_at is not None and old.archived_events == 1, (migrated.data_dir / "archive")
    assert old.archive_location.startswith(str(migrated.data_dir / "archive"))
    assert new.archived_at is None and new.archive_location is None
