"""claim_work: what is ready, in which order, and that concurrent claims never collide."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from orchestrator import scheduling
from orchestrator.db import Database
from orchestrator.errors import Forbidden, NotFound
from orchestrator.execution_graph import complete_subtask, load_graphs
from orchestrator.executions import create_execution
from orchestrator.models import Agent, Execution, ExecutionSubtask, PlanSubtask, utcnow
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.scheduling import claim_work
from tests.factories import make_agent, make_plan, make_user
from tests.workers.helpers import assert_each_claimed_once, queued_execution


def claim(db: Database, agent_id: str, actions: set[str] | None = None, *, acknowledge: bool = True):
    """A poll; with `acknowledge`, as though the agent's `task_started` for what it got were applied at
    once (else its next poll would get the same subtask again: tests/orchestrator/test_claim_ack.py)."""
    with db.unit_of_work() as s:
        result = claim_work(s, agent_id, actions, utcnow())
        work = result.payload
        if acknowledge and work is not None and work["next_task"] is not None:
            s.get(ExecutionSubtask, f"{work['execution_id']}:{work['next_task']['task_id']}").acknowledged_at = utcnow()
        return result


def test_prerequisites_and_order(db) -> None:
    scene = queued_execution(db, n_tasks=2, n_subtasks=2)
    got = []
    for _ in range(4):
        result = claim(db, scene.agent_id)
        assert result.payload is not None
        got.append(result.payload["next_task"]["task_id"])
        assert claim(db, scene.agent_id).payload is None  # the next one waits for this one
        with db.unit_of_work() as s:
            sub = s.get(ExecutionSubtask, f"{scene.execution_id}:{got[-1]}")
            g = load_graphs(s, [scene.execution_id])[scene.execution_id]
            complete_subtask(g, g.subtasks[sub.plan_subtask_id], {"message": "ok"}, utcnow())
    assert got == ["task_0_a", "task_0_b", "task_1_a", "task_1_b"]


def test_first_claim_starts_the_execution_and_heartbeats(db) -> None:
    scene = queued_execution(db)
    result = claim(db, scene.agent_id)
    assert result.after.transitions == [(scene.execution_id, "QUEUED", "RUNNING")]
    assert result.after.holds == [(scene.execution_id, "task_0_a", scene.agent_id)]
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "RUNNING"
        assert s.get(Agent, scene.agent_id).last_heartbeat is not None


def test_every_claim_tells_the_dashboard_even_when_the_execution_stays_as_it_was(db) -> None:
    # The execution page shows each subtask's state: a second claim in a running execution moves a
    # subtask but neither the execution's status nor its current task, and must still be published.
    scene = queued_execution(db, n_tasks=1, n_subtasks=2)
    first = claim(db, scene.agent_id)
    with db.unit_of_work() as s:
        g = load_graphs(s, [scene.execution_id])[scene.execution_id]
        complete_subtask(g, g.subtasks["task_0_a"], {"message": "ok"}, utcnow())
    second = claim(db, scene.agent_id)
    for result in (first, second):
        updates = [m for m in result.after.messages if m["type"] == "execution_update"]
        assert [(m["execution_id"], m["status"], m["progress"]["current_task_id"]) for m in updates] == [
            (scene.execution_id, "RUNNING", "task_0")]
    assert second.after.transitions == []


def test_filters(db) -> None:
    scene = queued_execution(db, n_subtasks=1)
    assert claim(db, scene.agent_id, {"make_phone_call"}).payload is None
    with db.unit_of_work() as s:
        sub = s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a")
        sub.not_before = utcnow() + timedelta(minutes=5)
    assert claim(db, scene.agent_id, {"send_email"}).payload is None  # backing off
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a").not_before = None
        s.get(Execution, scene.execution_id).agent_id = scene.agent_id
        make_agent(s, "agent_stranger")
    assert claim(db, "agent_stranger").payload is None  # assigned to another agent
    assert claim(db, scene.agent_id).payload["next_task"]["task_id"] == "task_0_a"


def test_priority_first(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        agent = make_agent(s, "agent_p")
        for pid, prio in (("plan_low", 5), ("plan_high", 1)):
            plan = make_plan(s, owner, pid, n_subtasks=1)
            plan.tasks[0].priority = prio
            s.flush()
            create_execution(s, owner.id, pid, utcnow(), execution_id=f"exec_{pid}").status = "QUEUED"
        agent_id = agent.id
    assert claim(db, agent_id).payload["plan_id"] == "plan_high"


def test_twenty_concurrent_claimers_never_share_a_subtask(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        agents = [make_agent(s, f"agent_c{i}").id for i in range(20)]
        for e in range(10):
            plan = make_plan(s, owner, f"plan_c{e}", n_subtasks=20)
            for sub in plan.tasks[0].subtasks:
                sub.prerequisite_subtask_ids = []
            s.flush()
            create_execution(s, owner.id, plan.id, utcnow()).status = "QUEUED"
    claims: list[tuple[str, str]] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def run(agent_id: str) -> None:
        # No retry on errors: a claim must neither deadlock (PostgreSQL) nor time out on the lock (SQLite).
        try:
            while True:
                result = claim(db, agent_id)
                if result.payload is None:
                    return
                with lock:
                    claims.append((result.payload["execution_id"], result.payload["next_task"]["task_id"]))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert_each_claimed_once(claims, errors, 200)
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(ExecutionSubtask).where(
            ExecutionSubtask.status == "RUNNING")) == 200
        assert s.scalar(select(func.count()).select_from(PlanSubtask)) == 200


GUIDE_KEYS = {"work_available", "execution_id", "plan_id", "next_task", "force_pause", "force_cancel"}
NEXT_TASK_KEYS = {"task_id", "title", "action", "params", "timeout_hours", "retry_policy", "context", "attempt",
                  "max_attempts"}


def _complete(db: Database, execution_id: str, subtask_id: str, result: dict | None) -> None:
    with db.unit_of_work() as s:
        g = load_graphs(s, [execution_id])[execution_id]
        complete_subtask(g, g.subtasks[subtask_id], result, utcnow())


def test_payload_is_the_guides_shape_with_context(db) -> None:
    scene = queued_execution(db, n_tasks=2, n_subtasks=3)
    first = claim(db, scene.agent_id).payload
    assert set(first) == GUIDE_KEYS and set(first["next_task"]) == NEXT_TASK_KEYS
    assert first["next_task"]["context"] == {
        "plan_goal": "Build a breeder system", "previous_tasks": [],
        "upcoming_tasks": ["Subtask 0.1", "Subtask 0.2", "Subtask 1.0", "Subtask 1.1", "Subtask 1.2"]}
    assert (first["work_available"], first["force_pause"], first["force_cancel"]) == (True, False, False)
    _complete(db, scene.execution_id, "task_0_a", {"message": "Called Carol, high interest"})
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_b").params_override = {"to": "info@example.com"}
    second = claim(db, scene.agent_id).payload["next_task"]
    assert second["task_id"] == "task_0_b" and second["title"] == "Subtask 0.1" and second["action"] == "send_email"
    assert second["params"] == {"to": "info@example.com"}  # the person's approved alternative wins
    assert (second["timeout_hours"], second["retry_policy"]) == (24, {"max_attempts": 3})
    assert (second["attempt"], second["max_attempts"]) == (1, 3)
    assert second["context"]["previous_tasks"] == ["Subtask 0.0: Called Carol, high interest"]
    assert second["context"]["upcoming_tasks"] == ["Subtask 0.2", "Subtask 1.0", "Subtask 1.1", "Subtask 1.2"]


def test_capabilities_stand_in_for_supported_actions(db) -> None:
    scene = queued_execution(db, n_subtasks=1)
    with db.unit_of_work() as s:
        make_agent(s, "agent_phone", capabilities=[{"action": "make_phone_call", "params": []}])
        make_agent(s, "agent_any", capabilities=[])
    assert claim(db, "agent_phone").payload is None  # its capabilities say phone calls only
    with db.unit_of_work() as s:
        s.get(Execution, scene.execution_id).agent_id = "agent_any"
    assert claim(db, "agent_any").payload["next_task"]["action"] == "send_email"  # no capabilities: anything


def test_a_manual_placeholder_goes_only_to_an_agent_that_declares_it(db) -> None:
    queued_execution(db, n_subtasks=1)
    with db.unit_of_work() as s:
        s.execute(update(PlanSubtask).values(action=MANUAL_ACTION))
        make_agent(s, "agent_any", capabilities=[])
        make_agent(s, "agent_human", capabilities=[{"action": MANUAL_ACTION, "params": []}])
    assert claim(db, "agent_any").payload is None  # "any action" is any an agent can run, not human work
    assert claim(db, "agent_any", {"send_email"}).payload is None
    assert claim(db, "agent_human").payload["next_task"]["action"] == MANUAL_ACTION


def test_explicit_supported_actions_override_capabilities(db) -> None:
    queued_execution(db, n_subtasks=1)
    with db.unit_of_work() as s:
        make_agent(s, "agent_phone", capabilities=[{"action": "make_phone_call", "params": []}])
    assert claim(db, "agent_phone", {"send_email"}).payload["next_task"]["task_id"] == "task_0_a"


def test_unknown_and_deactivated_agents_are_refused(db) -> None:
    scene = queued_execution(db, n_subtasks=1)
    with pytest.raises(NotFound):
        claim(db, "agent_nobody")
    with db.unit_of_work() as s:
        s.get(Agent, scene.agent_id).is_active = False
    with pytest.raises(Forbidden):
        claim(db, scene.agent_id)


def test_a_poll_with_nothing_to_do_is_still_a_heartbeat(db) -> None:
    with db.unit_of_work() as s:
        agent_id = make_agent(s, "agent_idle").id
    result = claim(db, agent_id)
    assert (result.payload, result.after.holds, result.after.messages, result.after.transitions) == (None, [], [], [])
    with db.reading() as s:
        assert s.get(Agent, agent_id).last_heartbeat is not None


def test_paused_execution_hands_out_nothing_and_tells_the_holder(db) -> None:
    scene = queued_execution(db, n_subtasks=3)
    with db.unit_of_work() as s:
        for sub in s.scalars(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id)):
            sub.waiting_on = 0  # all three ready at once
        make_agent(s, "agent_other")
    # Not acknowledged: the pause still comes before answering the claim again.
    assert claim(db, scene.agent_id, acknowledge=False).payload["next_task"]["task_id"] == "task_0_a"
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.pause_requested = "PAUSED", True
    paused = claim(db, scene.agent_id)
    assert paused.payload == {
        "work_available": False, "execution_id": None, "plan_id": None, "next_task": None,
        "force_pause": True, "force_cancel": False,
        "held": [{"execution_id": scene.execution_id, "task_id": "task_0_a", "signal": "pause"}]}
    assert paused.after.holds == [] and paused.after.released == {}
    assert claim(db, "agent_other").payload is None  # nothing of a paused execution, no flag for a non-holder
    with db.reading() as s:
        sub = s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a")
        assert (sub.status, sub.agent_id) == ("RUNNING", scene.agent_id)  # the held work may still be reported


def test_cancelled_execution_releases_held_work_and_says_so_once(db) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, scene.agent_id, acknowledge=False)  # the cancel still comes before answering the claim again
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.cancel_requested = "CANCELLED", True
    cancelled = claim(db, scene.agent_id)
    assert cancelled.payload["force_cancel"] is True and cancelled.payload["work_available"] is False
    assert cancelled.payload["held"] == [{"execution_id": scene.execution_id, "task_id": "task_0_a",
                                          "signal": "cancel"}]
    assert cancelled.after.released == {scene.execution_id: ["task_0_a"]}
    with db.reading() as s:
        sub = s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a")
        assert (sub.status, sub.agent_id) == ("SKIPPED", None)
        assert s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_b").status == "QUEUED"
    assert claim(db, scene.agent_id).payload is None  # released: the next poll is a plain 204


def test_a_candidate_paused_before_the_lock_is_passed_over(db, monkeypatch) -> None:
    """The candidate query and the execution lock are two statements: a person's pause can land
    between them. The claim must look again at the locked execution."""
    scene = queued_execution(db, n_subtasks=1)
    real = scheduling._candidates

    def pause_after_select(session, *args):
        found = real(session, *args)
        for execution_id in found:
            session.get(Execution, execution_id).pause_requested = True  # as if committed meanwhile
        return found

    monkeypatch.setattr(scheduling, "_candidates", pause_after_select)
    result = claim(db, scene.agent_id)
    assert result.payload is None and result.after.holds == []
    with db.reading() as s:
        assert s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a").status == "QUEUED"


def test_claim_and_event_worker_lock_in_the_same_order(db) -> None:
    """The event worker locks executions, then updates agents' heartbeats. A claim that updated the
    agent row first and then waited for the execution deadlocked with it on PostgreSQL. A claim now
    never waits for an execution another transaction holds (PostgreSQL): it passes over it, and
    answers nothing while the worker has it; on SQLite it waits for the write lock."""
    scene = queued_execution(db, n_subtasks=1)
    locked, done = threading.Event(), threading.Event()
    errors: list[Exception] = []

    def worker() -> None:
        try:
            with db.unit_of_work() as s:
                load_graphs(s, [scene.execution_id], lock=True)
                locked.set()
                done.wait(0.5)  # the claim is now waiting for the write lock (SQLite), or has passed over
                s.execute(update(Agent).where(Agent.id == scene.agent_id).values(last_heartbeat=utcnow()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    locked.wait(10)
    during = claim(db, scene.agent_id)
    done.set()
    t.join(30)
    assert not errors, errors
    if db.dialect == "postgresql":
        assert during.payload is None and during.next_ready_at is not None  # busy: it looks again shortly
        during = claim(db, scene.agent_id)
    assert during.payload["next_task"]["task_id"] == "task_0_a"


def test_an_operators_agent_never_gets_another_operators_work(db) -> None:
    queued_execution(db, n_subtasks=1)
    with db.unit_of_work() as s:
        eve = make_user(s, "eve")
        make_agent(s, "agent_eves", owner_id=eve.id)
    assert claim(db, "agent_eves").payload is None
