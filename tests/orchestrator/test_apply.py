"""apply_batch on the database directly: exactly-once, order, and what each event does."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from orchestrator.db import Database
from orchestrator.events.apply import apply_batch
from orchestrator.events.protocol import Envelope
from orchestrator.ids import event_id
from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask, ExecutionTask, utcnow
from tests.workers.helpers import Scene, claim, queued_execution


def env(scene: Scene, body: dict, *, eid: str | None = None) -> Envelope:
    return Envelope(eid or event_id(), scene.execution_id, scene.agent_id, utcnow(), body)


def apply(db: Database, envelopes: list[Envelope]):
    with db.unit_of_work() as s:
        return apply_batch(s, envelopes, utcnow())


def sub_row(db: Database, scene: Scene, sub_id: str) -> ExecutionSubtask:
    with db.reading() as s:
        return s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                       ExecutionSubtask.plan_subtask_id == sub_id))


def test_redelivered_batch_is_applied_once(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    batch = [env(scene, {"event_type": "heartbeat"}),
             env(scene, {"event_type": "task_complete", "task_id": "task_0_a"})]
    first = apply(db, batch)
    second = apply(db, batch)  # a worker died after commit, before acknowledging
    assert (first.applied, first.duplicates) == (2, 0)
    assert (second.applied, second.duplicates) == (0, 2)
    assert second.outcomes[batch[1].id]["next_task_id"] == "task_0_b"  # the stored outcome is replayed
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(ExecutionEvent).where(
            ExecutionEvent.source == "agent")) == 2
        task = s.scalar(select(ExecutionTask).where(ExecutionTask.execution_id == scene.execution_id))
        assert (task.subtasks_completed, task.progress_percent) == (1, 50)


def test_events_apply_in_order_within_a_batch(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    complete = env(scene, {"event_type": "task_complete", "task_id": "task_0_a"})
    late_error = env(scene, {"event_type": "task_error", "task_id": "task_0_a", "error_message": "too late"})
    result = apply(db, [complete, late_error])
    assert result.outcomes[complete.id]["status"] == "COMPLETED"
    assert result.outcomes[late_error.id]["applied"] is False
    assert result.outcomes[late_error.id]["error"]["code"] == "execution_finished"
    assert [t[1:] for t in result.after.transitions] == [("RUNNING", "COMPLETED")]


def test_dependents_wait_for_prerequisites(db, redis, migrated) -> None:
    scene = queued_execution(db, n_tasks=2, n_subtasks=1)
    assert sub_row(db, scene, "task_1_a").waiting_on == 1
    claim(db, redis, migrated, scene, "task_0_a")
    out = apply(db, [env(scene, {"event_type": "task_complete", "task_id": "task_0_a"})])
    assert list(out.outcomes.values())[0]["next_task_id"] == "task_1_a"
    assert sub_row(db, scene, "task_1_a").waiting_on == 0
    with db.reading() as s:
        ex = s.get(Execution, scene.execution_id)
        assert (ex.tasks_completed, ex.current_task_id) == (1, "task_1")


def test_only_work_made_ready_tells_idle_polls_to_look_again(db, redis, migrated) -> None:
    """`work_moved` (the ready-work version, orchestrator/ready_work.py) follows what became ready, not
    every subtask that ended: while work flows, a version raised by every completion sent every idle
    poll back to the database."""
    parallel = queued_execution(db, n_subtasks=2)
    with db.unit_of_work() as s:  # task_0_b no longer waits for task_0_a: both are ready at once
        s.execute(update(ExecutionSubtask).where(ExecutionSubtask.execution_id == parallel.execution_id,
                                                 ExecutionSubtask.plan_subtask_id == "task_0_b")
                  .values(prerequisite_ids=[], waiting_on=0))
    claim(db, redis, migrated, parallel, "task_0_a")
    done = apply(db, [env(parallel, {"event_type": "task_complete", "task_id": "task_0_a"})])
    assert done.after.released and not done.after.work_moved  # task_0_b was ready already

    chained = queued_execution(db, n_tasks=2, n_subtasks=1)
    claim(db, redis, migrated, chained, "task_0_a")
    done = apply(db, [env(chained, {"event_type": "task_complete", "task_id": "task_0_a"})])
    assert done.after.work_moved  # task_1_a's last prerequisite is done

    retried = queued_execution(db, n_subtasks=1, retry_policy={"max_attempts": 2, "backoff": "fixed",
                                                                "backoff_seconds": 5})
    claim(db, redis, migrated, retried, "task_0_a")
    failed = apply(db, [env(retried, {"event_type": "task_error", "task_id": "task_0_a", "error_message": "x"})])
    assert failed.after.work_moved  # back in the queue, ready once its backoff ends
    claim(db, redis, migrated, retried, "task_0_a")
    failed = apply(db, [env(retried, {"event_type": "task_error", "task_id": "task_0_a", "error_message": "x"})])
    assert not failed.after.work_moved  # no attempt left: nothing is ready again


def test_retry_backoff_follows_the_policy(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1, retry_policy={"max_attempts": 3, "backoff": "exponential",
                                                             "backoff_seconds": 10})
    claim(db, redis, migrated, scene, "task_0_a")
    before = utcnow()
    apply(db, [env(scene, {"event_type": "task_error", "task_id": "task_0_a", "error_message": "x"})])
    row = sub_row(db, scene, "task_0_a")
    assert (row.status, row.attempt, row.agent_id, row.error) == ("QUEUED", 2, None, "x")
    assert before + timedelta(seconds=9) < row.not_before < utcnow() + timedelta(seconds=11)
    claim(db, redis, migrated, scene, "task_0_a")
    apply(db, [env(scene, {"event_type": "task_error", "task_id": "task_0_a", "error_message": "x"})])
    row = sub_row(db, scene, "task_0_a")
    assert row.attempt == 3 and row.not_before > utcnow() + timedelta(seconds=18)  # 10 s, then 20 s


def test_block_records_suggestions_and_options(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    result = apply(db, [env(scene, {"event_type": "task_blocked", "task_id": "task_0_a",
                                    "error_message": "No answer", "suggestions": ["Call"]})])
    assert result.after.notifications[0]["suggestions"] == ["Call"]
    with db.reading() as s:
        ex = s.get(Execution, scene.execution_id)
        task = s.scalar(select(ExecutionTask).where(ExecutionTask.execution_id == scene.execution_id))
        assert ex.status == "BLOCKED" and "No answer" in ex.status_message
        assert task.status == "BLOCKED" and task.suggestions == ["Call"] and "skip_task" in task.next_step_options


def test_events_of_other_agents_are_refused(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    intruder = Envelope(event_id(), scene.execution_id, "agent_other", utcnow(),
                        {"event_type": "task_complete", "task_id": "task_0_a"})
    with db.unit_of_work() as s:
        from tests.factories import make_agent

        make_agent(s, "agent_other")
    result = apply(db, [intruder])
    assert result.outcomes[intruder.id]["error"]["code"] == "not_holder"
    assert sub_row(db, scene, "task_0_a").status == "RUNNING"


def test_unknown_execution_is_refused_without_a_row(db) -> None:
    ghost = Envelope(event_id(), "exec_missing", "agent_x", utcnow(), {"event_type": "heartbeat"})
    result = apply(db, [ghost])
    assert result.outcomes[ghost.id]["error"]["code"] == "not_found" and result.applied == 0


def test_a_batch_inserts_its_events_with_their_positions(db, redis, migrated) -> None:
    """The batch's event rows are inserted already numbered: no second write of each row."""
    from sqlalchemy import event

    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    batch = [env(scene, {"event_type": "heartbeat", "message": f"{i}"}) for i in range(5)]
    batch.append(env(scene, {"event_type": "task_complete", "task_id": "task_0_a"}))
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        apply(db, batch)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE EXECUTION_EVENTS")]
    with db.reading() as s:
        rows = s.execute(select(ExecutionEvent.id, ExecutionEvent.seq).where(
            ExecutionEvent.id.in_([e.id for e in batch])).order_by(ExecutionEvent.seq)).all()
    assert [r.id for r in rows] == [e.id for e in batch]  # in the batch's order
    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + len(batch)))


def test_first_delivery_skips_the_lookup_and_a_retry_still_finds_what_is_stored(db, redis, migrated) -> None:
    """The drain says "first delivery" for entries it read as new, and skips looking them up; an
    event that is stored after all (a commit whose answer was lost) fails the first try's insert,
    and the retry, which looks, counts it a duplicate."""
    from orchestrator.events.apply import WorkerMemory

    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    batch = [env(scene, {"event_type": "heartbeat"}), env(scene, {"event_type": "heartbeat"})]
    apply(db, batch[:1])
    tries: list[bool] = []

    def work(s):
        first = not tries
        tries.append(first)
        return apply_batch(s, batch, utcnow(), WorkerMemory(), first_delivery=first)

    from sqlalchemy.exc import IntegrityError

    result = db.transaction(work, attempts=3, retry_if=lambda exc: isinstance(exc, IntegrityError))
    assert tries == [True, False]
    assert (result.applied, result.duplicates) == (1, 1)


def test_a_worker_writes_an_agents_heartbeat_at_most_every_few_seconds() -> None:
    from orchestrator.events.apply import WorkerMemory

    memory = WorkerMemory(heartbeat_every=timedelta(seconds=5))
    t0 = utcnow()
    assert memory.heartbeats_due({"b": t0, "a": t0}) == [("a", t0), ("b", t0)]  # sorted: one lock order
    assert memory.heartbeats_due({"a": t0 + timedelta(seconds=4)}) == []
    later = t0 + timedelta(seconds=5)
    assert memory.heartbeats_due({"a": later, "c": later}) == [("a", later), ("c", later)]
