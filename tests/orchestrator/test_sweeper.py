"""The sweeper takes subtasks back from agents that ran out of time or went silent."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from orchestrator.credentials import Principal
from orchestrator.executions import control_execution
from orchestrator.holds import holder
from orchestrator.models import Agent, Execution, ExecutionEvent, ExecutionSubtask, PlanSubtask, utcnow
from orchestrator.sweeper import Windows, release_overdue_work, take_back_overdue
from tests.workers.helpers import Scene, claim, queued_execution

FIXED = {"max_attempts": 2, "backoff": "fixed", "backoff_seconds": 30}


def _sub(s, scene: Scene, subtask_id: str) -> ExecutionSubtask:
    return s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                   ExecutionSubtask.plan_subtask_id == subtask_id))


def _age(db, scene: Scene, subtask_id: str, *, claimed_ago: timedelta, heartbeat_ago: timedelta | None) -> None:
    """Move the claim and the agent's last heartbeat into the past, as if time had passed."""
    now = utcnow()
    with db.unit_of_work() as s:
        s.execute(update(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                 ExecutionSubtask.plan_subtask_id == subtask_id)
                  .values(claimed_at=now - claimed_ago))
        s.execute(update(Agent).where(Agent.id == scene.agent_id)
                  .values(last_heartbeat=None if heartbeat_ago is None else now - heartbeat_ago))


def _events(db, scene: Scene) -> list[ExecutionEvent]:
    with db.reading() as s:
        return list(s.scalars(select(ExecutionEvent).where(ExecutionEvent.execution_id == scene.execution_id)
                              .order_by(ExecutionEvent.id)))


def test_timed_out_subtask_with_attempts_left_is_requeued(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2, retry_policy=FIXED)
    claim(db, redis, migrated, scene, "task_0_a")
    # Past the plan's 24 hours, while the agent keeps sending heartbeats.
    _age(db, scene, "task_0_a", claimed_ago=timedelta(hours=25), heartbeat_ago=timedelta(seconds=5))
    now = utcnow()
    result = release_overdue_work(db, redis, migrated, now)
    assert (result.timed_out, result.silent) == (1, 0)
    assert result.after.released == {scene.execution_id: ["task_0_a"]}
    assert result.after.transitions == []
    assert [(m["type"], m.get("event_type")) for m in result.after.messages] == [("event", "subtask_timeout"),
                                                                          ("execution_update", None)]
    assert {m["execution_id"] for m in result.after.messages} == {scene.execution_id}
    with db.reading() as s:
        sub = _sub(s, scene, "task_0_a")
        assert (sub.status, sub.attempt, sub.agent_id, sub.claimed_at) == ("QUEUED", 2, None, None)
        assert sub.not_before is not None and sub.not_before >= now + timedelta(seconds=29)
        assert "timeout" in sub.error
        assert s.get(Execution, scene.execution_id).status == "RUNNING"
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") is None
    (ev,) = [e for e in _events(db, scene) if e.event_type == "subtask_timeout"]
    assert (ev.source, ev.status, ev.task_id, ev.subtask_id) == ("system", "error", "task_0", "task_0_a")
    assert ev.output_data["retry_scheduled"] is True
    # Taken back once: a second run finds nothing.
    again = release_overdue_work(db, redis, migrated, utcnow())
    assert (again.timed_out, again.silent, again.after.released) == (0, 0, {})


def test_timed_out_subtask_without_attempts_fails_the_execution(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1, retry_policy={"max_attempts": 1})
    with db.unit_of_work() as s:
        s.execute(update(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id)
                  .values(max_attempts=1))
    claim(db, redis, migrated, scene, "task_0_a")
    _age(db, scene, "task_0_a", claimed_ago=timedelta(hours=30), heartbeat_ago=timedelta(seconds=1))
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert result.timed_out == 1
    assert result.after.transitions == [(scene.execution_id, "RUNNING", "FAILED")]
    assert [(m["type"], m.get("event_type"), m["status"]) for m in result.after.messages] == [
        ("event", "subtask_timeout", "error"), ("event", "status_change", "failed"),
        ("execution_update", None, "FAILED")]
    with db.reading() as s:
        ex = s.get(Execution, scene.execution_id)
        assert ex.status == "FAILED" and ex.completed_at is not None and "no attempts left" in ex.status_message
        sub = _sub(s, scene, "task_0_a")
        assert (sub.status, sub.agent_id) == ("ERROR", None)
    events = _events(db, scene)
    change = [e for e in events if e.event_type == "status_change"]
    assert len(change) == 1 and change[0].output_data == {"from": "RUNNING", "to": "FAILED",
                                                         "reason": "subtask_timeout"}
    assert [e.event_type for e in events].count("subtask_timeout") == 1


def test_silent_agent_loses_its_subtask(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2, retry_policy=FIXED)
    claim(db, redis, migrated, scene, "task_0_a")
    window = migrated.heartbeat_window_seconds
    _age(db, scene, "task_0_a", claimed_ago=timedelta(seconds=window + 60),
         heartbeat_ago=timedelta(seconds=window + 30))
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert (result.timed_out, result.silent) == (0, 1)
    with db.reading() as s:
        sub = _sub(s, scene, "task_0_a")
        assert (sub.status, sub.attempt, sub.agent_id) == ("QUEUED", 2, None)
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") is None
    (ev,) = [e for e in _events(db, scene) if e.event_type == "agent_silent"]
    assert ev.agent_id == scene.agent_id and ev.status == "error"


def test_agent_that_never_sent_a_heartbeat_is_silent_once_its_claim_is_old(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    window = migrated.heartbeat_window_seconds
    _age(db, scene, "task_0_a", claimed_ago=timedelta(seconds=window // 2), heartbeat_ago=None)
    assert release_overdue_work(db, redis, migrated, utcnow()).silent == 0  # the claim itself is a sign of life
    _age(db, scene, "task_0_a", claimed_ago=timedelta(seconds=window + 1), heartbeat_ago=None)
    assert release_overdue_work(db, redis, migrated, utcnow()).silent == 1


def test_fresh_subtask_is_left_alone(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    _age(db, scene, "task_0_a", claimed_ago=timedelta(minutes=5), heartbeat_ago=timedelta(seconds=10))
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert (result.timed_out, result.silent, result.after.released, result.after.messages) == (0, 0, {}, [])
    with db.reading() as s:
        sub = _sub(s, scene, "task_0_a")
        assert (sub.status, sub.agent_id, sub.attempt) == ("RUNNING", scene.agent_id, 1)
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") == scene.agent_id
    assert [e for e in _events(db, scene) if e.event_type in ("subtask_timeout", "agent_silent")] == []


def test_timeout_follows_the_plan_subtask_and_limit_caps_a_run(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=2, retry_policy=FIXED)
    with db.unit_of_work() as s:
        s.execute(update(PlanSubtask).values(timeout_hours=1))
    claim(db, redis, migrated, scene, "task_0_a")
    claim(db, redis, migrated, scene, "task_0_b")
    _age(db, scene, "task_0_a", claimed_ago=timedelta(hours=2), heartbeat_ago=timedelta(seconds=1))
    _age(db, scene, "task_0_b", claimed_ago=timedelta(hours=3), heartbeat_ago=timedelta(seconds=1))
    with db.unit_of_work() as s:
        first = take_back_overdue(s, utcnow(), Windows.of(migrated), limit=1)
    assert first.after.released == {scene.execution_id: ["task_0_b"]}  # the oldest claim first
    with db.unit_of_work() as s:
        second = take_back_overdue(s, utcnow(), Windows.of(migrated), limit=1)
    assert second.after.released == {scene.execution_id: ["task_0_a"]}


def test_silent_agent_without_attempts_left_fails_a_paused_execution_only_when_it_resumes(db, redis,
                                                                                           migrated) -> None:
    """PAUSED → FAILED is not a transition: the subtask fails now, the execution when it resumes."""
    scene = queued_execution(db, n_subtasks=2, retry_policy={"max_attempts": 1})
    with db.unit_of_work() as s:
        s.execute(update(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id)
                  .values(max_attempts=1))
    claim(db, redis, migrated, scene, "task_0_a")
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.pause_requested = "PAUSED", True
    window = migrated.heartbeat_window_seconds
    _age(db, scene, "task_0_a", claimed_ago=timedelta(seconds=window + 60), heartbeat_ago=None)
    result = release_overdue_work(db, redis, migrated, utcnow())
    assert (result.silent, result.after.transitions) == (1, [])
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "PAUSED"
        assert _sub(s, scene, "task_0_a").status == "ERROR"
    (ev,) = [e for e in _events(db, scene) if e.event_type == "agent_silent"]
    assert ev.output_data["attempts_exhausted"] is True and ev.source == "system"
    with db.unit_of_work() as s:
        change = control_execution(s, Principal("user", scene.owner_id), scene.execution_id, "RUNNING", utcnow())
    assert change.status == "FAILED"
