"""The event log of an archived execution says that it was archived, rather than look empty."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.archive import FolderStore, archive_ended
from orchestrator.models import ExecutionEvent, User, utcnow
from tests.factories import make_execution


def test_an_archived_log_says_so_and_shows_what_came_later(client, db, people, tmp_path) -> None:
    with db.unit_of_work() as s:
        ex = make_execution(s, s.get(User, people.mark_id), status="COMPLETED", execution_id="exec_gone")
        ex.completed_at = utcnow() - timedelta(days=91)
    url = "/api/executions/exec_gone/events"
    hot = client.get(url, headers=people.headers()["mark"]).get_json()
    assert [e["event_type"] for e in hot["events"]] == ["execution_created"]
    assert (hot["archived"], hot["archived_at"], hot["archived_events"]) == (False, None, None)

    (step,) = archive_ended(db, FolderStore(tmp_path), utcnow(), timedelta(days=90), batch=100)
    with db.unit_of_work() as s:  # an agent's late report, applied after the archival: it stays in the table
        s.add(ExecutionEvent(id="evt_late", execution_id="exec_gone", source="agent", event_type="heartbeat"))
    mine = client.get(url, headers=people.headers()["mark"]).get_json()
    assert [e["event_id"] for e in mine["events"]] == ["evt_late"]
    assert mine["archived"] is True and mine["archived_events"] == 1
    assert mine["archived_at"].endswith("Z") and mine["archive_location"] is None  # the file is the admins' business
    theirs = client.get(url, headers=people.headers()["admin"]).get_json()
    assert theirs["archive_location"] == step.location
    assert client.get(url, headers=people.headers()["eve"]).status_code == 404
