"""What operators do to executions (control, resolve) and how executions read back (detail, lists, events)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import Principal
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.execution_graph import DEFAULT_NEXT_STEP_OPTIONS
from orchestrator.execution_views import execution_detail, list_events, list_executions
from orchestrator.executions import control_execution, create_execution, resolve_blocked_task
from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask, ExecutionTask, utcnow
from orchestrator.state_machine import VALID_TRANSITIONS, InvalidStateTransition, can_transition
from tests.factories import block_subtask, make_agent, make_execution, make_plan, make_user

EXEC = "exec_1"


@pytest.fixture
def owner(db):
    with db.unit_of_work() as s:
        return make_user(s, "carol_owner")


def me(owner) -> Principal:
    return Principal("user", owner.id)


def setup(db, owner, status: str = "RUNNING", *, block: str | None = None, options: list[str] | None = None,
          **plan_kw) -> None:
    """exec_1 of a plan task_0 → task_1 (two subtasks each, a then b), optionally with a blocked task."""
    plan_kw.setdefault("n_tasks", 2)
    with db.unit_of_work() as s:
        make_execution(s, owner, status=status, execution_id=EXEC, **plan_kw)
        if block:
            block_subtask(s, EXEC, block, options)


def state(db) -> tuple[Execution, dict[str, ExecutionTask], dict[str, ExecutionSubtask], list[ExecutionEvent]]:
    with db.reading() as s:
        ex = s.get(Execution, EXEC)
        tasks = {t.plan_task_id: t for t in s.scalars(select(ExecutionTask).where(ExecutionTask.execution_id == EXEC))}
        subs = {x.plan_subtask_id: x for x in s.scalars(
            select(ExecutionSubtask).where(ExecutionSubtask.execution_id == EXEC))}
        events = list(s.scalars(select(ExecutionEvent).where(ExecutionEvent.execution_id == EXEC)
                                .order_by(ExecutionEvent.id)))
        return ex, tasks, subs, events


def control(db, owner, target: str):
    with db.unit_of_work() as s:
        return control_execution(s, me(owner), EXEC, target, utcnow())


def resolve(db, owner, task: str, option: str, params: dict | None = None, principal: Principal | None = None):
    with db.unit_of_work() as s:
        return resolve_blocked_task(s, principal or me(owner), EXEC, task, option, params, utcnow())


@pytest.mark.parametrize("current", list(VALID_TRANSITIONS))
@pytest.mark.parametrize("target", ["QUEUED", "PAUSED", "RUNNING", "CANCELLED"])
def test_control_follows_the_state_machine(db, owner, current, target) -> None:
    setup(db, owner, current)
    allowed = can_transition(current, target) and (target != "RUNNING" or current == "PAUSED")
    if not allowed:
        with pytest.raises(InvalidStateTransition) as exc:
            control(db, owner, target)
        assert exc.value.details == {"current": current, "target": target}
        if target == "RUNNING":
            assert "claims its first subtask" in exc.value.message
        ex, _, _, events = state(db)
        assert ex.status == current and [e.event_type for e in events] == ["execution_created"]
        return
    change = control(db, owner, target)
    assert change.status == target and change.after.transitions == [(EXEC, current, target)]
    assert [(m["type"], m.get("event_type")) for m in change.after.messages] == [("event", "status_change"),
                                                                          ("execution_update", None)]
    assert change.after.messages[-1]["status"] == target
    ex, _, _, events = state(db)
    assert ex.status == target
    last = events[-1]
    assert (last.event_type, last.source, last.output_data["from"], last.output_data["to"]) == (
        "status_change", "user", current, target)


def test_pause_resume_cancel_set_the_flags(db, owner) -> None:
    setup(db, owner, "RUNNING")
    control(db, owner, "PAUSED")
    ex, *_ = state(db)
    assert (ex.status, ex.pause_requested, ex.cancel_requested, ex.completed_at) == ("PAUSED", True, False, None)
    control(db, owner, "RUNNING")
    ex, *_ = state(db)
    assert (ex.status, ex.pause_requested) == ("RUNNING", False)
    control(db, owner, "CANCELLED")
    ex, *_ = state(db)
    assert (ex.status, ex.cancel_requested) == ("CANCELLED", True) and ex.completed_at is not None
    with pytest.raises(InvalidStateTransition):
        control(db, owner, "RUNNING")


def test_resume_goes_on_to_where_the_tasks_are(db, owner) -> None:
    setup(db, owner, "RUNNING", block="task_0_a")  # BLOCKED
    control(db, owner, "PAUSED")
    change = control(db, owner, "RUNNING")
    assert change.after.transitions == [(EXEC, "PAUSED", "RUNNING"), (EXEC, "RUNNING", "BLOCKED")]
    assert state(db)[0].status == "BLOCKED"


def test_others_cannot_control_an_execution_admins_can(db, owner) -> None:
    setup(db, owner, "CREATED")
    with db.unit_of_work() as s:
        eve = make_user(s, "eve")
    with pytest.raises(NotFound), db.unit_of_work() as s:
        control_execution(s, Principal("user", eve.id), EXEC, "QUEUED", utcnow())
    with db.unit_of_work() as s:
        assert control_execution(s, Principal("user", eve.id, True), EXEC, "QUEUED", utcnow()).status == "QUEUED"


def test_approving_an_alternative_requeues_with_the_new_params(db, owner) -> None:
    setup(db, owner, block="task_0_a", options=["approve_alternative_email"])
    _, tasks, _, _ = state(db)
    offered = tasks["task_0"].next_step_options
    assert offered == ["approve_alternative_email", *DEFAULT_NEXT_STEP_OPTIONS]
    before = utcnow()
    change = resolve(db, owner, "task_0", "approve_alternative_email", {"to": "info@example.com"})
    assert change.status == "RUNNING" and change.after.transitions == [(EXEC, "BLOCKED", "RUNNING")]
    ex, tasks, subs, events = state(db)
    a = subs["task_0_a"]
    assert (a.status, a.attempt, a.max_attempts, a.params_override) == ("QUEUED", 2, 3, {"to": "info@example.com"})
    assert a.not_before is not None and before <= a.not_before <= utcnow()  # no backoff for a person's retry
    assert (tasks["task_0"].status, tasks["task_0"].next_step_options) == ("RUNNING", None)
    resolved = next(e for e in events if e.event_type == "task_resolved")
    assert (resolved.source, resolved.task_id, resolved.output_data) == (
        "user", "task_0", {"option": "approve_alternative_email", "params": {"to": "info@example.com"}})
    assert [m.get("event_type") for m in change.after.messages] == ["task_resolved", "status_change", None]


def test_a_persons_retry_is_never_refused_by_the_attempt_count(db, owner) -> None:
    setup(db, owner)
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{EXEC}:task_0_a").attempt = 3  # the last of max_attempts=3
        block_subtask(s, EXEC, "task_0_a")
    resolve(db, owner, "task_0_a", "retry_task")  # a subtask id names its task
    a = state(db)[2]["task_0_a"]
    assert (a.status, a.attempt, a.max_attempts, a.params_override) == ("QUEUED", 4, 4, None)


def test_approve_needs_params_and_unknown_options_are_refused(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    with pytest.raises(ValidationFailed):
        resolve(db, owner, "task_0", "approve_alternative", {})
    with pytest.raises(ValidationFailed) as exc:
        resolve(db, owner, "task_0", "reboot_carol")
    assert exc.value.details == {"offered": DEFAULT_NEXT_STEP_OPTIONS}
    ex, tasks, subs, events = state(db)
    assert (ex.status, tasks["task_0"].status, subs["task_0_a"].status) == ("BLOCKED", "BLOCKED", "ERROR")
    assert "task_resolved" not in [e.event_type for e in events]


def test_skipping_a_task_releases_what_waits_on_it(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    resolve(db, owner, "task_0", "skip_task")
    ex, tasks, subs, _ = state(db)
    assert ex.status == "RUNNING" and tasks["task_0"].status == "SKIPPED"
    assert [subs[i].status for i in ("task_0_a", "task_0_b")] == ["SKIPPED", "SKIPPED"]
    assert (subs["task_1_a"].waiting_on, subs["task_1_b"].waiting_on) == (0, 1)
    assert ex.current_task_id == "task_1"


def test_skipping_the_last_task_completes_the_execution(db, owner) -> None:
    setup(db, owner, block="task_0_a", n_tasks=1, n_subtasks=1)
    change = resolve(db, owner, "task_0", "skip_task")
    assert change.after.transitions == [(EXEC, "BLOCKED", "RUNNING"), (EXEC, "RUNNING", "COMPLETED")]
    ex = state(db)[0]
    assert ex.status == "COMPLETED" and ex.completed_at is not None and ex.tasks_completed == 1


def test_cancel_execution_option(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    change = resolve(db, owner, "task_0", "cancel_execution")
    assert change.after.transitions == [(EXEC, "BLOCKED", "CANCELLED")]
    ex, tasks, _, _ = state(db)
    assert (ex.status, ex.cancel_requested) == ("CANCELLED", True) and ex.completed_at is not None
    assert tasks["task_0"].next_step_options is None
    with pytest.raises(Conflict):  # nothing is left to resolve in a finished execution
        resolve(db, owner, "task_0", "retry_task")


def test_execution_stays_blocked_while_another_task_is(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    with db.unit_of_work() as s:
        block_subtask(s, EXEC, "task_1_a")
    assert resolve(db, owner, "task_0", "retry_task").after.transitions == []
    assert state(db)[0].status == "BLOCKED"
    assert resolve(db, owner, "task_1", "skip_task").after.transitions == [(EXEC, "BLOCKED", "RUNNING")]


def test_resolving_while_paused_waits_for_the_resume(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    control(db, owner, "PAUSED")
    assert resolve(db, owner, "task_0", "retry_task").after.transitions == []
    assert state(db)[0].status == "PAUSED"
    assert control(db, owner, "RUNNING").after.transitions == [(EXEC, "PAUSED", "RUNNING")]


def test_resolve_refusals(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    with pytest.raises(Conflict) as exc:
        resolve(db, owner, "task_1", "skip_task")
    assert exc.value.details == {"task_id": "task_1", "status": "QUEUED"}
    with pytest.raises(NotFound):
        resolve(db, owner, "task_9", "skip_task")
    with db.unit_of_work() as s:
        eve = make_user(s, "eve")
    with pytest.raises(NotFound):
        resolve(db, owner, "task_0", "skip_task", principal=Principal("user", eve.id))
    assert resolve(db, owner, "task_0", "skip_task", principal=Principal("user", eve.id, True)).status == "RUNNING"


def test_create_execution_takes_only_ones_own_or_a_shared_agent(db, owner) -> None:
    with db.unit_of_work() as s:
        eve = make_user(s, "eve")
        make_agent(s, "agent_eve", owner_id=eve.id)
        make_agent(s, "agent_mine", owner_id=owner.id)
        make_agent(s, "agent_shared")
        plan = make_plan(s, owner, "plan_x")
    with pytest.raises(NotFound), db.unit_of_work() as s:
        create_execution(s, owner.id, plan.id, utcnow(), agent_id="agent_eve")
    for agent in ("agent_mine", "agent_shared"):
        with db.unit_of_work() as s:
            assert create_execution(s, owner.id, plan.id, utcnow(), agent_id=agent).agent_id == agent
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(Execution)) == 2


def test_execution_detail(db, owner) -> None:
    setup(db, owner, block="task_0_a")
    with db.reading() as s:
        d = execution_detail(s, me(owner), EXEC)
    assert (d["execution_id"], d["status"], d["pause_requested"], d["cancel_requested"]) == (
        EXEC, "BLOCKED", False, False)
    assert d["progress"] == {"tasks_completed": 0, "tasks_total": 2, "percent": 0, "current_task_id": "task_0",
                             "current_task_title": "Task 0"}
    assert d["created_at"].endswith("Z") and d["started_at"].endswith("Z") and d["completed_at"] is None
    t0 = d["tasks"][0]
    assert {k: t0[k] for k in ("task_id", "title", "status", "subtasks_completed", "subtasks_total",
                               "error_message", "suggestions")} == {
        "task_id": "task_0", "title": "Task 0", "status": "BLOCKED", "subtasks_completed": 0, "subtasks_total": 2,
        "error_message": "Carol's address bounced", "suggestions": ["Call Carol"]}
    assert t0["next_step_options"] == DEFAULT_NEXT_STEP_OPTIONS
    a = t0["subtasks"][0]
    assert {k: a[k] for k in ("subtask_id", "title", "action", "status", "attempt", "max_attempts", "agent_id",
                              "error", "result_data", "started_at", "completed_at")} == {
        "subtask_id": "task_0_a", "title": "Subtask 0.0", "action": "send_email", "status": "ERROR", "attempt": 1,
        "max_attempts": 3, "agent_id": None, "error": "Carol's address bounced", "result_data": None,
        "started_at": None, "completed_at": None}
    assert [x["subtask_id"] for x in d["tasks"][1]["subtasks"]] == ["task_1_a", "task_1_b"]
    with db.reading() as s, pytest.raises(NotFound):
        execution_detail(s, Principal("user", "user_nobody"), EXEC)


def test_list_executions_pages_filters_and_scopes(db, owner) -> None:
    base = utcnow()
    with db.unit_of_work() as s:
        eve = make_user(s, "eve")
        plan = make_plan(s, owner, "plan_x")
        for i in range(5):
            ex = create_execution(s, owner.id, plan.id, base + timedelta(seconds=min(i, 3)), execution_id=f"exec_{i}")
            ex.status = "QUEUED" if i % 2 else "CREATED"
        make_execution(s, eve, execution_id="exec_eve")
    seen, cursor = [], None
    with db.reading() as s:
        while True:
            items, cursor = list_executions(s, me(owner), None, 2, cursor)
            seen += [e["execution_id"] for e in items]
            if cursor is None:
                break
        assert seen == ["exec_4", "exec_3", "exec_2", "exec_1", "exec_0"]
        queued, _ = list_executions(s, me(owner), "QUEUED", 50, None)
        assert [e["execution_id"] for e in queued] == ["exec_3", "exec_1"]
        assert queued[0]["progress"]["current_task_title"] == "Task 0"
        everyone, _ = list_executions(s, Principal("user", eve.id, True), None, 50, None)
        assert len(everyone) == 6
        with pytest.raises(ValidationFailed):
            list_executions(s, me(owner), None, 2, "eHx5")


def test_events_newest_first_with_a_cursor(db, owner) -> None:
    setup(db, owner, "CREATED")
    for target in ("QUEUED", "CANCELLED"):
        control(db, owner, target)
    pages, before = [], None
    with db.reading() as s:
        while True:
            items, before = list_events(s, me(owner), EXEC, 2, before)
            pages.append([(e["event_type"], (e["output_data"] or {}).get("to")) for e in items])
            if before is None:
                break
        assert pages == [[("status_change", "CANCELLED"), ("status_change", "QUEUED")],
                         [("execution_created", None)]]
        (created,), _ = list_events(s, me(owner), EXEC, 5, None, "execution_created")
        assert set(created) >= {"event_id", "execution_id", "agent_id", "source", "event_type", "task_id",
                                "subtask_id", "status", "message", "output_data", "error_type", "error_message",
                                "human_review_required", "suggestions", "outcome", "timestamp", "agent_timestamp"}
        with pytest.raises(NotFound):
            list_events(s, me(owner), EXEC, 2, "evt_missing")
        with pytest.raises(NotFound):
            list_events(s, Principal("user", "user_nobody"), EXEC, 2, None)
