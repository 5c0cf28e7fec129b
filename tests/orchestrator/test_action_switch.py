"""`approve_phone_call`: a person's answer to a bounced email that retries the subtask as a phone call."""

from __future__ import annotations

from orchestrator.execution_views import execution_detail
from orchestrator.executions import SWITCH_ACTION
from orchestrator.models import utcnow
from orchestrator.scheduling import claim_work
from tests.factories import make_agent
from tests.orchestrator.test_executions import EXEC, me, owner, resolve, setup, state  # noqa: F401

OPTIONS = ["approve_alternative_email", "approve_phone_call"]


def claim(db, owner, actions: set[str]) -> dict | None:  # noqa: F811
    with db.unit_of_work() as s:
        agent = make_agent(s, owner_id=owner.id)
        return claim_work(s, agent.id, actions, utcnow()).payload


def test_approve_phone_call_switches_the_stopped_subtask_to_a_call(db, owner) -> None:  # noqa: F811
    setup(db, owner, block="task_0_a", options=OPTIONS)
    resolve(db, owner, "task_0", "approve_phone_call", {"to": "+1 860 455 9416"})
    ex, tasks, subs, _ = state(db)
    assert ex.status == "RUNNING" and subs["task_0_a"].status == "QUEUED"
    assert subs["task_0_a"].action_override == SWITCH_ACTION["approve_phone_call"] == "make_phone_call"
    assert subs["task_0_b"].action_override is None
    # Only an agent that can call gets it; it is handed out as a call, with the approved number.
    assert claim(db, owner, {"send_email"}) is None
    work = claim(db, owner, {"make_phone_call"})
    assert work["next_task"]["task_id"] == "task_0_a" and work["next_task"]["action"] == "make_phone_call"
    assert work["next_task"]["params"]["to"] == "+1 860 455 9416"
    with db.reading() as s:
        detail = execution_detail(s, me(owner), EXEC)
    assert detail["tasks"][0]["subtasks"][0]["action"] == "make_phone_call"


def test_approve_alternative_email_keeps_the_action(db, owner) -> None:  # noqa: F811
    setup(db, owner, block="task_0_a", options=OPTIONS)
    resolve(db, owner, "task_0", "approve_alternative_email", {"to": "info@bittersweetfarm.com"})
    _, _, subs, _ = state(db)
    assert subs["task_0_a"].action_override is None
    assert subs["task_0_a"].params_override == {"to": "info@bittersweetfarm.com"}
    work = claim(db, owner, {"send_email"})
    task = work["next_task"]
    assert (task["action"], task["params"]["to"]) == ("send_email", "info@bittersweetfarm.com")
