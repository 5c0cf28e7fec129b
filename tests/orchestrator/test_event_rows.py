"""The event worker's rows (`EventRow`, not ORM instances): numbered with the rest of their transaction,
encrypted at rest like any event, published with their positions; and outcomes that follow the batch."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select, text

from orchestrator.db import Database
from orchestrator.encryption import _keyring
from orchestrator.event_positions import EventRow, commit_range, event_row, position
from orchestrator.events.apply import WorkerMemory, apply_batch
from orchestrator.events.protocol import Envelope
from orchestrator.ids import event_id
from orchestrator.models import ExecutionEvent, utcnow
from orchestrator.publish import EventMessage, for_client, resolved
from tests.workers.helpers import Scene, claim, queued_execution


def env(scene: Scene, body: dict) -> Envelope:
    return Envelope(event_id(), scene.execution_id, scene.agent_id, utcnow(), body)


def test_event_row_has_every_column_and_refuses_others() -> None:
    row = event_row(id="evt_1", execution_id="exec_1", event_type="note")
    assert set(row) == {c.key for c in ExecutionEvent.__table__.columns}
    assert (row["source"], row["human_review_required"], row["seq"]) == ("agent", False, None)
    assert row["timestamp"] is not None and commit_range(row) is None and position(row) is None
    with pytest.raises(TypeError, match="not_a_column"):
        event_row(id="evt_2", not_a_column=1)


def test_worker_rows_are_numbered_with_the_transition_they_cause(db: Database, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    batch = [env(scene, {"event_type": "task_started", "task_id": "task_0_a", "message": "on it"}),
             env(scene, {"event_type": "task_complete", "task_id": "task_0_a", "output_data": {"sent": 1}})]
    with db.unit_of_work() as s:
        result = apply_batch(s, batch, utcnow(), WorkerMemory(), first_delivery=True)
    assert [t[1:] for t in result.after.transitions] == [("RUNNING", "COMPLETED")]
    events = [m for m in result.after.messages if isinstance(m, EventMessage)]
    rows = [m.row for m in events if isinstance(m.row, EventRow)]
    assert [r["id"] for r in rows] == [e.id for e in batch]
    with db.reading() as s:
        stored = dict(s.execute(select(ExecutionEvent.id, ExecutionEvent.seq)
                                .where(ExecutionEvent.execution_id == scene.execution_id)).all())
    # Every event of the transaction (the agent's two and the status change) has its stored position,
    # the positions are contiguous, and each message carries its row's position and commit range.
    out = [resolved(m) for m in events]
    assert len(out) == 3 and all(o["seq"] == stored[o["event_id"]] for o in out)
    seqs = sorted(o["seq"] for o in out)
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    for o in out:
        first, last = o["commit_range"]
        assert first <= o["seq"] <= last
    assert all("commit_range" not in for_client(m) for m in events)


def test_worker_rows_are_encrypted_at_rest(db: Database, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    ev = env(scene, {"event_type": "heartbeat", "message": "call 555-0100", "output_data": {"to": "a@b.example"}})
    with db.unit_of_work() as s:
        apply_batch(s, [ev], utcnow(), WorkerMemory(), first_delivery=True)
    with db.reading() as s:
        raw = s.execute(text("SELECT message, output_data, outcome, error_message FROM execution_events "
                             "WHERE id = :id"), {"id": ev.id}).one()
        row = s.get(ExecutionEvent, ev.id)
        assert row is not None
        assert (row.message, row.output_data, row.outcome["event_id"]) == ("call 555-0100", {"to": "a@b.example"},
                                                                           ev.id)
    keys = _keyring(db.engine.dialect)
    assert "555" not in raw.message and "a@b" not in raw.output_data and ev.id not in raw.outcome
    assert keys.decrypt(raw.message) == b"call 555-0100"
    assert orjson.loads(keys.decrypt(raw.output_data)) == {"to": "a@b.example"}
    assert raw.error_message is None  # nothing to encrypt: stored as NULL


def test_next_step_follows_the_batch(db: Database, redis, migrated) -> None:
    # The next ready subtask is looked up once per execution while the batch moves none of its
    # subtasks, and again once it does.
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    batch = [env(scene, {"event_type": "heartbeat"}),
             env(scene, {"event_type": "task_started", "task_id": "task_0_a"}),
             env(scene, {"event_type": "task_complete", "task_id": "task_0_a"}),
             env(scene, {"event_type": "heartbeat"})]
    with db.unit_of_work() as s:
        result = apply_batch(s, batch, utcnow(), WorkerMemory(), first_delivery=True)
    assert [result.outcomes[e.id]["next_task_id"] for e in batch] == [None, None, "task_0_b", "task_0_b"]
