"""Executions: creating one from a plan (and, below, the operators' operations on them)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.event_log import record_event
from orchestrator.ids import prefixed
from orchestrator.models import Agent, Execution, ExecutionSubtask, ExecutionTask, Plan, PlanTask
from orchestrator.retry import RetryPolicy


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
    plan = session.scalar(
        select(Plan).where(Plan.id == plan_id).options(selectinload(Plan.tasks).selectinload(PlanTask.subtasks))
    )
    if plan is None or plan.owner_id != owner_id:
        raise NotFound(f"Plan {plan_id} not found.", plan_id=plan_id)
    if agent_id is not None and session.get(Agent, agent_id) is None:
        raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    if not plan.tasks:
        raise ValidationFailed("The plan has no tasks.", plan_id=plan_id)
    undecomposed = [t.id for t in plan.tasks if not t.subtasks]
    if undecomposed:
        raise ValidationFailed(
            "Every task needs at least one subtask before it can run; decompose these first.",
            undecomposed_task_ids=undecomposed,
        )
    execution_id = execution_id or prefixed("exec")
    if session.get(Execution, execution_id) is not None:
        raise Conflict(f"Execution {execution_id} already exists.", execution_id=execution_id)

    subtask_ids_of = {t.id: [s.id for s in t.subtasks] for t in plan.tasks}
    ex = Execution(
        id=execution_id, plan_id=plan.id, agent_id=agent_id, owner_id=owner_id, status="CREATED",
        tasks_total=len(plan.tasks), tasks_completed=0, current_task_id=plan.tasks[0].id, created_at=now,
    )
    session.add(ex)
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
    session.flush()
    record_event(session, execution_id, "execution_created", now, source="user",
                 message=f"Execution of plan {plan.id} created", status="created",
                 output_data={"plan_id": plan.id, "agent_id": agent_id})
    return ex
