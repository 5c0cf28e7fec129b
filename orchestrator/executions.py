"""Executions: creating one from a plan, and what operators do to them (control, resolve)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.credentials import Principal
from orchestrator.db import flush_new
from orchestrator.effects import AfterCommit
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.event_log import EXECUTION_CREATED, TASK_RESOLVED, record_event
from orchestrator.execution_graph import ExecutionGraph, load_graphs, retry_subtask, skip_task
from orchestrator.ids import ID_RULE, is_valid_id, prefixed
from orchestrator.models import Agent, Execution, ExecutionEvent, ExecutionSubtask, ExecutionTask, Plan, PlanTask
from orchestrator.publish import event_message, execution_update
from orchestrator.retry import RetryPolicy
from orchestrator.state_machine import (
    FINISHED_STATES,
    ExecutionStatus,
    InvalidStateTransition,
    SubtaskStatus,
    TaskStatus,
    settle_on_tasks,
)
from orchestrator.transitions import move_execution


def _check_row_keys(plan: Plan, execution_id: str) -> None:
    """The execution's rows are keyed `{execution_id}:{plan task or subtask id}`: refuse an execution id
    that would make such a key ambiguous (a `:`) or longer than its column (PostgreSQL's 500 otherwise)."""
    if not is_valid_id(execution_id):
        raise ValidationFailed(f"An execution id may use only {ID_RULE}.", execution_id=execution_id)
    for rows, ids in ((ExecutionTask, [t.id for t in plan.tasks]),
                      (ExecutionSubtask, [s.id for t in plan.tasks for s in t.subtasks])):
        allowed = rows.__table__.c.id.type.length - 1 - max(map(len, ids), default=0)
        if len(execution_id) > allowed:
            raise ValidationFailed(f"Execution id {execution_id} is too long for this plan's ids: use at most "
                                   f"{allowed} characters.", execution_id=execution_id, max_length=allowed)


def _plan_to_run(session: Session, owner_id: str, plan_id: str, agent_id: str | None) -> Plan:
    """The owner's plan, with its tasks and subtasks, if it can run (and the agent may be assigned)."""
    plan = session.scalar(
        select(Plan).where(Plan.id == plan_id).options(selectinload(Plan.tasks).selectinload(PlanTask.subtasks))
    )
    if plan is None or plan.owner_id != owner_id:
        raise NotFound(f"Plan {plan_id} not found.", plan_id=plan_id)
    if agent_id is not None:
        agent = session.get(Agent, agent_id)
        # Another user's agent is not one's to assign (unowned agents, made by the system, are shared).
        if agent is None or agent.owner_id not in (None, owner_id):
            raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    if not plan.tasks:
        raise ValidationFailed("The plan has no tasks.", plan_id=plan_id)
    undecomposed = [t.id for t in plan.tasks if not t.subtasks]
    if undecomposed:
        raise ValidationFailed(
            "Every task needs at least one subtask before it can run; decompose these first.",
            undecomposed_task_ids=undecomposed,
        )
    return plan


def _add_task_rows(session: Session, plan: Plan, execution_id: str) -> None:
    """A row per task and per subtask, each subtask waiting on its own prerequisites and on every
    subtask of its task's prerequisite tasks."""
    subtask_ids_of = {t.id: [s.id for s in t.subtasks] for t in plan.tasks}
    position = 0
    for t_index, task in enumerate(plan.tasks):
        et = ExecutionTask(
            id=f"{execution_id}:{task.id}", execution_id=execution_id, plan_id=plan.id, plan_task_id=task.id,
            position=t_index, status="QUEUED", subtasks_total=len(task.subtasks),
        )
        session.add(et)
        upstream = [sid for pre in task.prerequisite_task_ids or [] for sid in subtask_ids_of.get(pre, [])]
        for sub in task.subtasks:
            prereqs = list(dict.fromkeys([*(sub.prerequisite_subtask_ids or []), *upstream]))
            policy = RetryPolicy.from_json(sub.retry_policy)
            session.add(ExecutionSubtask(
                id=f"{execution_id}:{sub.id}", execution_task_id=et.id, execution_id=execution_id,
                plan_id=plan.id, plan_subtask_id=sub.id, position=position, priority=task.priority,
                status="QUEUED", attempt=1, max_attempts=policy.max_attempts,
                prerequisite_ids=prereqs, waiting_on=len(prereqs),
            ))
            position += 1


def create_execution(
    session: Session,
    owner_id: str,
    plan_id: str,
    now: datetime,
    *,
    agent_id: str | None = None,
    execution_id: str | None = None,
) -> Execution:
    """A CREATED execution of `plan_id` with a row per task and subtask.

    Each subtask waits on its own prerequisites and on every subtask of its task's prerequisite
    tasks (`prerequisite_ids`, counted in `waiting_on`), so the poll can find ready work with one
    indexed query. A plan with a task that has no subtasks yet is refused: decompose it first.
    """
    plan = _plan_to_run(session, owner_id, plan_id, agent_id)
    execution_id = execution_id or prefixed("exec")
    _check_row_keys(plan, execution_id)
    conflict = Conflict(f"Execution {execution_id} already exists.", execution_id=execution_id)
    if session.get(Execution, execution_id) is not None:
        raise conflict
    ex = Execution(
        id=execution_id, plan_id=plan.id, agent_id=agent_id, owner_id=owner_id, status="CREATED",
        tasks_total=len(plan.tasks), tasks_completed=0, current_task_id=plan.tasks[0].id, created_at=now,
    )
    session.add(ex)
    _add_task_rows(session, plan, execution_id)
    flush_new(session, conflict)
    record_event(session, execution_id, EXECUTION_CREATED, now, source="user",
                 message=f"Execution of plan {plan.id} created", status="created",
                 output_data={"plan_id": plan.id, "agent_id": agent_id})
    return ex


@dataclass
class Change:
    """What an operator's change did (the execution's status now), and what it left for after the commit."""

    execution_id: str
    status: str
    after: AfterCommit = field(default_factory=AfterCommit)


def announce_created(session: Session, ex: Execution, now: datetime) -> Change:
    """What to publish once a new execution has committed: its creation event and its state, so that
    open lists show it at once (and the stream relay sees no gap in the event positions)."""
    session.flush()
    events = session.scalars(select(ExecutionEvent).where(ExecutionEvent.execution_id == ex.id))
    title = session.scalar(select(PlanTask.title).where(PlanTask.plan_id == ex.plan_id,
                                                        PlanTask.id == ex.current_task_id))
    messages = [*(event_message(ev, ex.owner_id) for ev in events), execution_update(ex, title, now)]
    return Change(ex.id, ex.status, AfterCommit(messages=messages, assigned=[ex.agent_id] if ex.agent_id else []))


def owned_graph(session: Session, principal: Principal, execution_id: str) -> ExecutionGraph:
    """The execution, locked, if `principal` may act on it (404 otherwise: no hint that it exists)."""
    g = load_graphs(session, [execution_id], lock=True).get(execution_id)
    if g is None or not (principal.is_admin or g.execution.owner_id == principal.id):
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    return g


def _move(session: Session, g: ExecutionGraph, change: Change, target: str, now: datetime, reason: str) -> None:
    move_execution(session, g.execution, target, now, change.after, reason=reason, source="user")


def _follow_tasks(session: Session, g: ExecutionGraph, change: Change, now: datetime, reason: str) -> None:
    """Work may have finished, blocked or failed while the execution was not RUNNING: catch up."""
    statuses = {t.status for t in g.tasks.values()}
    for target in settle_on_tasks(g.execution.status, statuses, g.all_done()):
        _move(session, g, change, target, now, reason)


def _finish(g: ExecutionGraph, change: Change, now: datetime) -> Change:
    ex = g.execution
    change.status = ex.status
    change.after.messages.append(execution_update(ex, None, now))
    change.after.work_moved.add(ex.owner_id)  # a resolve may make work ready without a transition
    if ex.agent_id:  # the assigned agent may now have work where its idle polls did not look
        change.after.assigned.append(ex.agent_id)
    return change


CONTROL_STATUSES = ("QUEUED", "PAUSED", "RUNNING", "CANCELLED")

# Options that answer a block by doing the subtask another way (the guide's `approve_phone_call` for a
# bounced email): the stopped subtask is retried with this action and the approved params. Any other
# `approve_*` option keeps the action and only replaces params.
SWITCH_ACTION = {"approve_phone_call": "make_phone_call"}


def control_execution(session: Session, principal: Principal, execution_id: str, target: str,
                      now: datetime) -> Change:
    """PATCH status: queue, pause, resume (RUNNING from PAUSED) or cancel, through the state machine."""
    g = owned_graph(session, principal, execution_id)
    ex = g.execution
    change = Change(ex.id, ex.status)
    if target == ExecutionStatus.RUNNING and ex.status != ExecutionStatus.PAUSED:
        exc = InvalidStateTransition(ex.status, target)
        exc.message = (f"{ex.status} → RUNNING: an execution becomes RUNNING when an agent claims its first "
                       "subtask, and a BLOCKED one when its block is resolved; PATCH RUNNING resumes a PAUSED one.")
        raise exc
    _move(session, g, change, target, now, reason="operator")
    if target == ExecutionStatus.PAUSED:
        ex.pause_requested = True
    elif target == ExecutionStatus.RUNNING:
        ex.pause_requested = False
        _follow_tasks(session, g, change, now, reason="resumed")
    elif target == ExecutionStatus.CANCELLED:
        ex.cancel_requested = True
    return _finish(g, change, now)


def resolve_blocked_task(session: Session, principal: Principal, execution_id: str, task_ref: str, option: str,
                         params: dict[str, Any] | None, now: datetime) -> Change:
    """Answer a BLOCKED task with one of its next-step options and move the execution on."""
    g = owned_graph(session, principal, execution_id)
    ex = g.execution
    if ex.status in FINISHED_STATES:
        raise Conflict(f"Execution {execution_id} is {ex.status}; there is nothing left to resolve.",
                       execution_id=execution_id, status=ex.status)
    task = g.tasks.get(task_ref) or (g.task_of(g.subtasks[task_ref]) if task_ref in g.subtasks else None)
    if task is None:
        raise NotFound(f"Task {task_ref} not found in execution {execution_id}.", task_id=task_ref)
    if task.status != TaskStatus.BLOCKED:
        raise Conflict(f"Task {task.plan_task_id} is {task.status}, not BLOCKED.", task_id=task.plan_task_id,
                       status=task.status)
    offered = list(task.next_step_options or [])
    if option not in offered:
        raise ValidationFailed(f"{option!r} is not one of the options offered.", offered=offered)
    change = Change(ex.id, ex.status)
    stopped = [s for s in g.subtasks_of(task) if s.status == SubtaskStatus.ERROR]
    if option.startswith("approve_"):
        if not params:
            raise ValidationFailed("Approving an alternative needs the new params.", option=option)
        switch = SWITCH_ACTION.get(option)
        for sub in stopped:
            # Another action takes the plan's params of the first as a base: a call keeps the email's purpose.
            sub.params_override = {**(sub.params_override or {}), **params}
            if switch is not None:
                sub.action_override = switch
    if option.startswith("approve_") or option == "retry_task":
        for sub in stopped:
            retry_subtask(sub, RetryPolicy(), None, now, g=g, delay=0)
            # A person asked for another try: the policy's count must not refuse it.
            sub.max_attempts = max(sub.max_attempts, sub.attempt)
    elif option == "skip_task":
        skip_task(g, task, now)
    elif option == "cancel_execution":
        task.next_step_options = None
        _move(session, g, change, ExecutionStatus.CANCELLED, now, reason="cancel_execution")
        ex.cancel_requested = True
    else:
        raise ValidationFailed(f"{option!r} has no meaning here.", offered=offered)
    resolved = record_event(
        session, ex.id, TASK_RESOLVED, now, source="user", task_id=task.plan_task_id, status="running",
        message=f"Block on {task.plan_task_id} resolved: {option}", output_data={"option": option, "params": params},
    )
    change.after.messages.append(event_message(resolved, ex.owner_id))
    if ex.status == ExecutionStatus.BLOCKED and not any(t.status == TaskStatus.BLOCKED for t in g.tasks.values()):
        _move(session, g, change, ExecutionStatus.RUNNING, now, reason="resolved")
        _follow_tasks(session, g, change, now, reason="resolved")
    return _finish(g, change, now)
