"""Every entity survives a write and a read on the configured database, JSON and UTC times intact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from orchestrator.credentials import find_credential, issue_credential
from orchestrator.db import Database
from orchestrator.models import (
    ApiCredential,
    Execution,
    ExecutionEvent,
    ExecutionSubtask,
    ExecutionTask,
    Plan,
    PlanSubtask,
    PlanTask,
    User,
)
from tests.factories import make_agent, make_plan, make_user

T0 = datetime(2026, 2, 11, 16, 9, 45, tzinfo=UTC)


def test_every_entity_round_trips(db: Database) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s, "mark", email="mark@example.com", is_admin=True)
        agent = make_agent(s, "agent_larry_001", role="Full-stack contractor",
                           capabilities=[{"action": "send_email", "params": ["to", "subject"]}],
                           last_heartbeat=T0)
        plan = make_plan(s, owner, "plan_carol", n_tasks=2, n_subtasks=2)
        cred, token = issue_credential(s, agent_id=agent.id, label="larry key")
        ex = Execution(id="exec_1", plan_id=plan.id, agent_id=agent.id, owner_id=owner.id, status="RUNNING",
                       tasks_total=2, started_at=T0)
        et = ExecutionTask(id="exec_1:task_0", execution_id=ex.id, plan_id=plan.id, plan_task_id="task_0",
                           subtasks_total=2, result_data={"ok": True}, next_step_options=["skip_task"])
        es = ExecutionSubtask(id="exec_1:task_0_a", execution_task_id=et.id, execution_id=ex.id,
                              plan_id=plan.id, plan_subtask_id="task_0_a", prerequisite_ids=[],
                              result_data={"nested": {"list": [1, 2, 3]}}, not_before=T0)
        ev = ExecutionEvent(id="evt_1", execution_id=ex.id, agent_id=agent.id, event_type="task_complete",
                            task_id="task_0_a", status="success", output_data={"email_sent_to": "carol@x"},
                            suggestions=["call"], agent_timestamp=T0.astimezone(timezone(timedelta(hours=-5))))
        s.add_all([ex, et, es, ev])

    with db.reading() as s:
        user = s.scalar(select(User).where(User.username == "mark"))
        assert user is not None and user.is_admin and user.created_at.tzinfo is not None
        plan = s.get(Plan, "plan_carol")
        assert plan.context == {"business_type": "Dog breeding"}
        assert [t.id for t in plan.tasks] == ["task_0", "task_1"]
        assert plan.tasks[1].prerequisite_task_ids == ["task_0"]
        sub = s.get(PlanSubtask, ("plan_carol", "task_1_b"))
        assert sub.params == {"to": "carol@example.com"} and sub.prerequisite_subtask_ids == ["task_1_a"]
        assert sub.task.id == "task_1"
        assert s.get(PlanTask, ("plan_carol", "task_0")).priority == 1
        ex = s.get(Execution, "exec_1")
        assert ex.status == "RUNNING" and ex.started_at == T0 and ex.started_at.tzinfo is not None
        assert ex.tasks[0].subtask_executions[0].result_data == {"nested": {"list": [1, 2, 3]}}
        assert ex.tasks[0].subtask_executions[0].not_before == T0
        ev = s.get(ExecutionEvent, "evt_1")
        assert ev.agent_timestamp == T0 and ev.agent_timestamp.utcoffset() == timedelta(0)
        assert ev.timestamp.tzinfo is not None and ev.human_review_required is False
        assert find_credential(s, token).agent_id == "agent_larry_001"
        assert find_credential(s, token + "x") is None
        assert s.get(ApiCredential, cred.id).token_hash != token  # only the hash is stored


def test_same_task_ids_in_two_plans(db: Database) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        make_plan(s, owner, "plan_a")
        make_plan(s, owner, "plan_b")
    with db.reading() as s:
        assert s.get(PlanTask, ("plan_b", "task_0")).plan_id == "plan_b"


def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), db.unit_of_work() as s:
        make_user(s, created_at=datetime(2026, 1, 1))


def test_credential_has_exactly_one_owner(db: Database) -> None:
    with pytest.raises(IntegrityError), db.unit_of_work() as s:
        s.add(ApiCredential(id="c1", token_hash="h" * 64, token_prefix="x"))


def test_revoked_and_expired_credentials_are_not_found(db: Database) -> None:
    with db.unit_of_work() as s:
        user = make_user(s)
        revoked, t1 = issue_credential(s, user_id=user.id)
        revoked.revoked_at = T0
        expired, t2 = issue_credential(s, user_id=user.id)
        expired.expires_at = T0
    with db.reading() as s:
        assert find_credential(s, t1) is None and find_credential(s, t2) is None
