"""Archival of old event logs (orchestrator/archive.py), with the clock moved forward instead of waited for."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator import archive
from orchestrator.archive import (
    ArchiveDamaged,
    FolderStore,
    S3Store,
    archive_ended,
    archive_execution,
    open_store,
    restore,
)
from orchestrator.db import Database
from orchestrator.errors import Conflict
from orchestrator.models import Execution, ExecutionEvent
from orchestrator.settings import Settings
from tests.factories import make_agent, make_execution, make_user

T0 = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
DAYS_90 = timedelta(days=90)
_EVENTS = ExecutionEvent.__table__


def _event(execution_id: str, n: int, agent_id: str) -> ExecutionEvent:
    """An event with every column set, the encrypted ones to values worth comparing."""
    return ExecutionEvent(
        id=f"evt_{execution_id}_{n:04d}", execution_id=execution_id, agent_id=agent_id, source="agent",
        event_type="task_failed", task_id="task_0", subtask_id="task_0_a", status="error",
        message=f"mail carol@example.com about step {n} ✓", output_data={"rows": [n, 1.5, None], "ok": True},
        error_type="SMTPError", error_message="550 mailbox unavailable", human_review_required=bool(n % 2),
        suggestions=[{"option": "retry", "n": n}], outcome={"status": "FAILED", "n": n},
        timestamp=T0 + timedelta(microseconds=n), agent_timestamp=T0 - timedelta(seconds=n, microseconds=7),
    )


def _scene(db: Database, events: int = 5) -> dict[str, str]:
    """Three executions with events: one that ended long ago, one that ended lately, one still running."""
    ids = {}
    with db.unit_of_work() as s:
        owner = make_user(s)
        agent = make_agent(s, "agent_arch")
        for name, status, ended in (("old", "COMPLETED", T0), ("recent", "FAILED", T0 + timedelta(days=60)),
                                    ("running", "RUNNING", None)):
            ex = make_execution(s, owner, status=status, execution_id=f"exec_{name}")
            ex.completed_at = ended
            ids[name] = ex.id
            for n in range(events):
                s.add(_event(ex.id, n, agent.id))
    return ids


def _rows(db: Database, execution_id: str) -> list[dict[str, Any]]:
    """Every column of the execution's event rows, decrypted, in position order."""
    with db.reading() as s:
        return [dict(r._mapping) for r in s.execute(
            select(_EVENTS).where(_EVENTS.c.execution_id == execution_id).order_by(_EVENTS.c.seq))]


def _execution(db: Database, execution_id: str) -> Execution:
    with db.reading() as s:
        ex = s.get(Execution, execution_id)
        assert ex is not None
        return ex


def test_ended_logs_move_to_encrypted_files_and_come_back_whole(db: Database, tmp_path: Path) -> None:
    ids = _scene(db)
    before = {name: _rows(db, eid) for name, eid in ids.items()}
    assert len(before["old"]) == 6  # five events and the execution's creation
    store = FolderStore(tmp_path / "archive")
    now = T0 + DAYS_90 + timedelta(days=1)

    assert archive_ended(db, store, now - timedelta(days=2), DAYS_90, batch=2) == []  # not yet 90 days
    lines: list[archive.Progress] = []
    report = archive_ended(db, store, now, DAYS_90, batch=2, progress=lines.append)

    assert [(p.execution_id, p.events, p.done, p.total) for p in report] == [("exec_old", 6, 1, 1)]
    assert lines == report
    old = _execution(db, ids["old"])
    assert (old.archived_at, old.archived_events, old.archive_location) == (now, 6, report[0].location)
    assert old.status == "COMPLETED" and old.completed_at == T0  # the summary stays
    assert _rows(db, ids["old"]) == []
    assert _rows(db, ids["recent"]) == before["recent"] and _rows(db, ids["running"]) == before["running"]
    (path,) = (tmp_path / "archive").iterdir()
    assert str(path) == old.archive_location and path.name.startswith("exec_old.")
    content = path.read_bytes()
    assert b"carol" not in content and b"\x1f\x8b" not in content  # encrypted, not merely gzipped
    assert archive_ended(db, store, now, DAYS_90, batch=2) == []  # nothing left to do

    assert restore(db, store, ids["old"], now + timedelta(days=1), batch=4) == 6
    assert _rows(db, ids["old"]) == before["old"]  # ids, positions, times, decrypted values: all of it
    old = _execution(db, ids["old"])
    assert (old.archived_at, old.archive_location, old.archived_events) == (None, None, None)
    assert old.restored_at == now + timedelta(days=1) and not path.exists()
    # A restored log stays for another 90 days after its restore, then goes again.
    assert archive_ended(db, store, now + timedelta(days=30), DAYS_90, batch=2) == []
    again = archive_ended(db, store, now + timedelta(days=92), DAYS_90, batch=2)
    assert [p.execution_id for p in again] == ["exec_old", "exec_recent"]


def test_a_dry_run_counts_and_changes_nothing(db: Database, tmp_path: Path) -> None:
    ids = _scene(db, events=3)
    store = FolderStore(tmp_path / "archive")
    report = archive_ended(db, store, T0 + timedelta(days=200), DAYS_90, batch=10, dry_run=True)
    assert [(p.execution_id, p.events, p.location) for p in report] == [("exec_old", 4, None),
                                                                         ("exec_recent", 4, None)]
    assert len(_rows(db, ids["old"])) == 4 and _execution(db, ids["old"]).archive_location is None
    assert not (tmp_path / "archive").exists()


def test_a_run_with_a_deadline_stops_between_executions(db: Database, tmp_path: Path) -> None:
    _scene(db, events=1)
    store = FolderStore(tmp_path / "archive")
    now = T0 + timedelta(days=200)
    (first,) = archive_ended(db, store, now, DAYS_90, batch=10, until=0.0)  # long passed: one, then stop
    assert (first.execution_id, first.done, first.total) == ("exec_old", 1, 2)
    (second,) = archive_ended(db, store, now, DAYS_90, batch=10, until=0.0)
    assert (second.execution_id, second.done, second.total) == ("exec_recent", 1, 1)


def test_a_crash_while_deleting_is_finished_by_the_next_run(db: Database, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _scene(db, events=7)
    before = _rows(db, ids["old"])
    store = FolderStore(tmp_path / "archive")
    now = T0 + DAYS_90 + timedelta(days=1)
    real_delete = archive._delete_rows

    def crash_after_one_batch(db_: Database, execution_id: str, event_ids: list[str], batch: int) -> None:
        real_delete(db_, execution_id, event_ids[:batch], batch)
        raise RuntimeError("killed")

    monkeypatch.setattr(archive, "_delete_rows", crash_after_one_batch)
    with pytest.raises(RuntimeError):
        archive_ended(db, store, now, DAYS_90, batch=3)
    half = _execution(db, ids["old"])
    assert half.archive_location is not None and half.archived_at is None and len(_rows(db, ids["old"])) == 5
    monkeypatch.setattr(archive, "_delete_rows", real_delete)

    # Resumed from its file even by a run whose cutoff would not pick the execution any more.
    report = archive_ended(db, store, now, timedelta(days=3650), batch=3)
    assert [(p.execution_id, p.events, p.location) for p in report] == [("exec_old", 8, half.archive_location)]
    assert _rows(db, ids["old"]) == [] and _execution(db, ids["old"]).archived_at == now
    restore(db, store, ids["old"], now, batch=3)
    assert _rows(db, ids["old"]) == before


def test_a_crash_before_the_claim_leaves_the_rows_and_the_next_run_archives(db: Database, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ids = _scene(db, events=2)
    store = FolderStore(tmp_path / "archive")
    now = T0 + DAYS_90 + timedelta(days=1)
    real_claim = archive._claim
    monkeypatch.setattr(archive, "_claim", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        archive_ended(db, store, now, DAYS_90, batch=10)
    assert len(_rows(db, ids["old"])) == 3 and _execution(db, ids["old"]).archive_location is None
    monkeypatch.setattr(archive, "_claim", real_claim)
    (report,) = archive_ended(db, store, now, DAYS_90, batch=10)
    assert report.events == 3 and _rows(db, ids["old"]) == []


class _RacingStore(FolderStore):
    """A store whose first write lets another run archive the same execution meanwhile."""

    def __init__(self, root: Path, db: Database, now: datetime) -> None:
        super().__init__(root)
        self.db, self.now, self.raced = db, now, False

    def write(self, name: str, chunks: Iterable[bytes]) -> str:
        if not self.raced:
            self.raced = True
            location = super().write(name, chunks)  # complete, before the other run deletes anything
            archive_execution(self.db, FolderStore(self.root), "exec_old", self.now, 2)
            return location
        return super().write(name, chunks)


def test_of_two_racing_runs_one_claims_and_the_other_drops_its_file(db: Database, tmp_path: Path) -> None:
    ids = _scene(db, events=4)
    before = _rows(db, ids["old"])
    now = T0 + DAYS_90 + timedelta(days=1)
    store = _RacingStore(tmp_path / "archive", db, now)
    assert archive_execution(db, store, ids["old"], now, 2) is None
    winner = _execution(db, ids["old"])
    assert [str(p) for p in (tmp_path / "archive").iterdir()] == [winner.archive_location]
    restore(db, store, ids["old"], now, batch=100)
    assert _rows(db, ids["old"]) == before


def test_a_damaged_archive_restores_nothing(db: Database, tmp_path: Path) -> None:
    ids = _scene(db, events=3)
    store = FolderStore(tmp_path / "archive")
    now = T0 + DAYS_90 + timedelta(days=1)
    (report, _) = archive_ended(db, store, now, DAYS_90 - timedelta(days=70), batch=10)
    path = Path(report.location or "")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][:40] + b"\n")
    with pytest.raises(ArchiveDamaged, match="cannot be decrypted"):
        restore(db, store, ids["old"], now, batch=1)
    path.write_bytes(b"".join(lines[:-1]))  # the last chunk lost: no end of the gzip stream, no end line
    with pytest.raises(ArchiveDamaged, match="not an archive|cut short"):
        restore(db, store, ids["old"], now, batch=1)
    assert _rows(db, ids["old"]) == [] and _execution(db, ids["old"]).archive_location == report.location
    path.unlink()
    with pytest.raises(ArchiveDamaged, match="missing"):
        restore(db, store, ids["old"], now, batch=1)
    with pytest.raises(Conflict, match="not archived"):
        restore(db, store, ids["running"], now, batch=1)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3-compatible service over real HTTP on a free port: moto's server, standing in for MinIO or AWS."""
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    for key, value in {"AWS_ACCESS_KEY_ID": "archive-test", "AWS_SECRET_ACCESS_KEY": "archive-test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="orch-archive")
    yield url
    server.stop()


def test_an_s3_bucket_holds_the_archive_and_gives_it_back(db: Database, base_settings: Settings,
                                                          s3_endpoint: str) -> None:
    ids = _scene(db, events=4)
    before = _rows(db, ids["old"])
    settings = base_settings.replace(archive_location="s3://orch-archive/events/2026",
                                     archive_s3_endpoint_url=s3_endpoint)
    store = open_store(settings)
    assert isinstance(store, S3Store)
    now = T0 + DAYS_90 + timedelta(days=1)
    (report,) = archive_ended(db, store, now, DAYS_90, batch=2)
    assert report.location and report.location.startswith("s3://orch-archive/events/2026/exec_old.")
    assert _rows(db, ids["old"]) == []
    obj = store.client.get_object(Bucket="orch-archive", Key=report.location.removeprefix("s3://orch-archive/"))
    assert b"carol" not in obj["Body"].read()
    assert restore(db, store, ids["old"], now, batch=3) == 5
    assert _rows(db, ids["old"]) == before
    assert store.client.list_objects_v2(Bucket="orch-archive").get("KeyCount") == 0  # deleted once restored
    with pytest.raises(ArchiveDamaged, match="missing"):
        list(store.read(report.location))
