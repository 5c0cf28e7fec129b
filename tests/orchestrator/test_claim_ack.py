"""A claim is final only once its agent acknowledges it: lost answers are answered again, and a claim
nobody reports on goes back to the queue without costing an attempt."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from orchestrator.db import Database
from orchestrator.events.apply import apply_batch
from orchestrator.events.protocol import Envelope
from orchestrator.holds import holder, record_hold
from orchestrator.ids import event_id
from orchestrator.models import Agent, Execution, ExecutionEvent, ExecutionSubtask, utcnow
from orchestrator.scheduling import ClaimResult, claim_work
from orchestrator.sweeper import release_overdue_work
from tests.factories import make_agent
from tests.workers.helpers import Scene, queued_execution


def poll(db: Database, agent_id: str, actions: set[str] | None = None) -> ClaimResult:
    with db.unit_of_work() as s:
        return claim_work(s, agent_id, actions, utcnow())


def subtask(db: Database, scene: Scene, subtask_id: str) -> ExecutionSubtask:
    with db.reading() as s:
        return s.get(ExecutionSubtask, f"{scene.execution_id}:{subtask_id}")


def report(db: Database, scene: Scene, event_type: str, subtask_id: str | None = None) -> None:
    """Apply one of the scene agent's events, as the worker does."""
    body = {"event_type": event_type, **({"task_id": subtask_id} if subtask_id else {})}
    with db.unit_of_work() as s:
        apply_batch(s, [Envelope(event_id(), scene.execution_id, scene.agent_id, utcnow(), body)], utcnow())


def age_claim(db: Database, scene: Scene, subtask_id: str, seconds: float) -> None:
    """Move the claim into the past while the agent keeps polling (its heartbeat stays fresh)."""
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:{subtask_id}").claimed_at = utcnow() - timedelta(seconds=seconds)
        s.get(Agent, scene.agent_id).last_heartbeat = utcnow()


def events_of(db: Database, scene: Scene, event_type: str) -> list[ExecutionEvent]:
    with db.reading() as s:
        return list(s.scalars(select(ExecutionEvent).where(ExecutionEvent.execution_id == scene.execution_id,
                                                          ExecutionEvent.event_type == event_type)))


# -- the poll answers an unacknowledged claim again --------------------------------------------------


def test_a_lost_answer_is_answered_again_same_subtask_same_attempt(db) -> None:
    scene = queued_execution(db, n_subtasks=2)
    for sub in ("task_0_a", "task_0_b"):  # both ready: a second poll could have taken task_0_b
        with db.unit_of_work() as s:
            s.get(ExecutionSubtask, f"{scene.execution_id}:{sub}").waiting_on = 0
    first = poll(db, scene.agent_id)  # committed; its answer never reaches the agent
    claimed_at = subtask(db, scene, "task_0_a").claimed_at
    again = poll(db, scene.agent_id)
    assert again.payload == {**first.payload, "redelivered": True}
    assert again.payload["next_task"]["attempt"] == 1
    # The hold is written again (the first one may be what failed); nothing else moves.
    assert again.after.holds == [(scene.execution_id, "task_0_a", scene.agent_id)]
    assert (again.after.transitions, again.after.messages, again.after.released) == ([], [], {})
    sub = subtask(db, scene, "task_0_a")
    assert (sub.status, sub.agent_id, sub.attempt, sub.claimed_at) == ("RUNNING", scene.agent_id, 1, claimed_at)
    assert subtask(db, scene, "task_0_b").status == "QUEUED"


def test_the_agents_first_event_acknowledges_the_claim(db) -> None:
    scene = queued_execution(db, n_subtasks=2)
    assert poll(db, scene.agent_id).payload["next_task"]["task_id"] == "task_0_a"
    report(db, scene, "heartbeat")  # names no subtask: not an acknowledgement
    assert subtask(db, scene, "task_0_a").acknowledged_at is None
    report(db, scene, "task_started", "task_0_a")
    assert subtask(db, scene, "task_0_a").acknowledged_at is not None
    assert poll(db, scene.agent_id).payload is None  # task_0_b waits for task_0_a: the old 204


def test_a_heartbeat_naming_the_held_subtask_acknowledges_it(db) -> None:
    scene = queued_execution(db, n_subtasks=1)
    poll(db, scene.agent_id)
    report(db, scene, "heartbeat", "task_0_a")
    assert subtask(db, scene, "task_0_a").acknowledged_at is not None


def test_a_new_claim_starts_unacknowledged(db) -> None:
    """A retried subtask's second claim must be acknowledged again, whatever its first one was."""
    scene = queued_execution(db, n_subtasks=1)
    poll(db, scene.agent_id)
    report(db, scene, "task_started", "task_0_a")
    report(db, scene, "task_error", "task_0_a")  # retry scheduled, after a backoff
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a").not_before = None
    second = poll(db, scene.agent_id).payload
    assert second["next_task"]["attempt"] == 2 and "redelivered" not in second
    assert subtask(db, scene, "task_0_a").acknowledged_at is None
    assert poll(db, scene.agent_id).payload["redelivered"] is True


def test_a_claim_this_poll_cannot_do_is_not_answered_again(db) -> None:
    """An agent that now polls for other actions gets those; the claim it cannot do expires."""
    scene = queued_execution(db, n_subtasks=1)
    poll(db, scene.agent_id, {"send_email"})
    assert poll(db, scene.agent_id, {"make_phone_call"}).payload is None
    assert poll(db, scene.agent_id, {"send_email"}).payload["redelivered"] is True


# -- the sweeper puts back what nobody acknowledged --------------------------------------------------


def test_an_unacknowledged_claim_goes_back_without_costing_an_attempt(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    with db.unit_of_work() as s:
        make_agent(s, "agent_other", capabilities=[{"action": "send_email", "params": []}])
    poll(db, scene.agent_id)
    record_hold(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a", scene.agent_id)
    age_claim(db, scene, "task_0_a", migrated.claim_ack_seconds + 1)
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert (result.expired, result.timed_out, result.silent) == (1, 0, 0)
    assert result.after.transitions == []
    sub = subtask(db, scene, "task_0_a")
    assert (sub.status, sub.attempt, sub.agent_id, sub.claimed_at, sub.error) == ("QUEUED", 1, None, None, None)
    assert sub.not_before is None or sub.not_before <= utcnow()  # no backoff: it was never tried
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") is None
    (ev,) = events_of(db, scene, "claim_expired")
    assert (ev.source, ev.agent_id, ev.subtask_id, ev.output_data["attempt"]) == ("system", scene.agent_id,
                                                                                  "task_0_a", 1)
    assert events_of(db, scene, "agent_silent") == [] and events_of(db, scene, "subtask_timeout") == []
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "RUNNING"
    other = poll(db, "agent_other").payload
    assert (other["next_task"]["task_id"], other["next_task"]["attempt"]) == ("task_0_a", 1)
    assert "redelivered" not in other


def test_an_acknowledged_or_fresh_claim_stays(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2)
    with db.unit_of_work() as s:
        s.execute(update(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id)
                  .values(waiting_on=0))
    poll(db, scene.agent_id)
    report(db, scene, "task_started", "task_0_a")
    poll(db, scene.agent_id)  # task_0_b, not acknowledged but fresh
    age_claim(db, scene, "task_0_a", migrated.claim_ack_seconds * 10)
    age_claim(db, scene, "task_0_b", migrated.claim_ack_seconds - 5)
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert (result.expired, result.timed_out, result.silent, result.after.messages) == (0, 0, 0, [])
    assert subtask(db, scene, "task_0_a").status == subtask(db, scene, "task_0_b").status == "RUNNING"


def test_a_claim_keeps_expiring_however_often_its_agent_polls(db, redis, migrated) -> None:
    """Liveness per subtask: the polls refresh the agent's heartbeat and answer the claim again, but
    neither restarts the claim's window."""
    scene = queued_execution(db, n_subtasks=1)
    poll(db, scene.agent_id)
    age_claim(db, scene, "task_0_a", migrated.claim_ack_seconds + 1)
    assert poll(db, scene.agent_id).payload["redelivered"] is True
    assert release_overdue_work(db, redis, migrated, utcnow()).expired == 1


def test_a_cancelled_executions_claim_is_left_to_the_other_rules(db, redis, migrated) -> None:
    """Nothing would claim it again there; the holder's next poll skips it (force_cancel)."""
    scene = queued_execution(db, n_subtasks=1)
    poll(db, scene.agent_id)
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.cancel_requested = "CANCELLED", True
    age_claim(db, scene, "task_0_a", migrated.claim_ack_seconds + 1)
    assert release_overdue_work(db, redis, migrated, utcnow()).expired == 0
    assert subtask(db, scene, "task_0_a").status == "RUNNING"
