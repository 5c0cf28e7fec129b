"""Plans: creating one from nested data (checked whole before anything is written), reading them.

The nested shape (goal, context, tasks with subtasks, prerequisite ids) is the plan schema's
(`orchestrator.plan_schema`: the plans API's and the plan file format's); `plan_to_dict` writes the same
shape back, so export and import round-trip.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from orchestrator.credentials import Principal
from orchestrator.db import flush_new
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.graph import find_cycles, unknown_references
from orchestrator.ids import ID_RULE, invalid_ids, prefixed
from orchestrator.models import Plan, PlanSubtask, PlanTask
from orchestrator.paging import newest_first_page
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.retry import RetryPolicy

TASK_FIELDS = ("phase_id", "phase_title", "assignee_role", "estimated_hours", "priority", "is_blocking",
               "decomposed", "decomposition_confidence", "decomposition_notes")
SUBTASK_FIELDS = ("action", "params", "timeout_hours", "retry_policy", "success_criteria", "failure_handling")


def _prerequisites(item: dict[str, Any], canonical: str) -> list[str]:
    # "prerequisites" is accepted as a shorter name, as in the plan schema.
    return list(item.get(canonical) or item.get("prerequisites") or [])


def _cycle_error(message: str, cycles: list[list[str]]) -> ValidationFailed:
    # `cycle` is the first; `cycles` has one for each group of ids that wait on each other.
    return ValidationFailed(message, cycle=cycles[0], cycles=cycles)


def validate_plan_data(data: dict[str, Any]) -> None:
    """Raise ValidationFailed naming every offending id: outside the id alphabet, duplicates, unknown
    prerequisites, cycles. What one field may hold is the plan schema's (`orchestrator.plan_schema`); these
    are the rules of the whole plan. The alphabet is checked again for callers with no schema in front."""
    tasks = data.get("tasks") or []
    ids = [item["id"] for task in tasks for item in [task, *(task.get("subtasks") or [])]]
    bad = invalid_ids([data["id"], *ids] if data.get("id") is not None else ids)
    if bad:
        raise ValidationFailed(f"Ids may use only {ID_RULE}.", invalid_ids=bad)
    seen: set[str] = set()
    duplicates: list[str] = []
    for item_id in ids:
        (duplicates.append if item_id in seen else seen.add)(item_id)
    if duplicates:
        raise ValidationFailed("Task and subtask ids must be unique within a plan.", duplicate_ids=duplicates)

    task_graph = {t["id"]: _prerequisites(t, "prerequisite_task_ids") for t in tasks}
    sub_graph = {s["id"]: _prerequisites(s, "prerequisite_subtask_ids")
                 for t in tasks for s in t.get("subtasks") or []}
    unknown = unknown_references(task_graph) | unknown_references(sub_graph)
    if unknown:
        raise ValidationFailed("Prerequisites name ids that are not in the plan.", unknown_prerequisites=unknown)
    for graph, what in ((task_graph, "tasks"), (sub_graph, "subtasks")):
        if cycles := find_cycles(graph):
            raise _cycle_error(f"The {what}' prerequisites form a cycle.", cycles)
    # A subtask also waits on every subtask of its task's prerequisite tasks: check that graph too.
    subs_of = {t["id"]: [s["id"] for s in t.get("subtasks") or []] for t in tasks}
    combined = {
        s["id"]: [*sub_graph[s["id"]], *(x for pre in task_graph[t["id"]] for x in subs_of[pre])]
        for t in tasks for s in t.get("subtasks") or []
    }
    if cycles := find_cycles(combined):
        raise _cycle_error("Subtask prerequisites contradict the task order (a cycle).", cycles)
    bad_policies = {}
    for t in tasks:
        for s in t.get("subtasks") or []:
            try:
                RetryPolicy.from_json(s.get("retry_policy"))
            except (ValueError, TypeError) as exc:
                bad_policies[s["id"]] = str(exc)
    if bad_policies:
        raise ValidationFailed("Invalid retry policies.", retry_policy=bad_policies)


def create_plan(session: Session, owner_id: str, data: dict[str, Any], now: datetime, *, source: str = "api") -> Plan:
    validate_plan_data(data)
    plan_id = data.get("id") or prefixed("plan")
    if session.get(Plan, plan_id) is not None:
        raise Conflict(f"Plan {plan_id} already exists.", plan_id=plan_id)
    plan = Plan(id=plan_id, title=data.get("title"), goal=data["goal"], context=data.get("context") or {},
                owner_id=owner_id, source=data.get("source") or source, created_at=now)
    for t_pos, t in enumerate(data.get("tasks") or []):
        subtasks = t.get("subtasks") or []
        task = PlanTask(
            id=t["id"], title=t["title"], description=t.get("description") or "", position=t_pos,
            prerequisite_task_ids=_prerequisites(t, "prerequisite_task_ids"), created_at=now,
            **{k: t[k] for k in TASK_FIELDS if t.get(k) is not None},
        )
        if "decomposed" not in t:
            task.decomposed = bool(subtasks)
        for s_pos, s in enumerate(subtasks):
            task.subtasks.append(PlanSubtask(
                plan_id=plan_id, id=s["id"], title=s["title"], position=s_pos, created_at=now,
                prerequisite_subtask_ids=_prerequisites(s, "prerequisite_subtask_ids"),
                **{k: s[k] for k in SUBTASK_FIELDS if s.get(k) is not None},
            ))
        plan.tasks.append(task)
    session.add(plan)
    flush_new(session, Conflict(f"Plan {plan_id} already exists.", plan_id=plan_id))
    return plan


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id, "title": plan.title, "goal": plan.goal, "context": plan.context or {},
        "owner_id": plan.owner_id, "source": plan.source,
        "created_at": plan.created_at.isoformat().replace("+00:00", "Z"),
        "tasks": [
            {
                "id": t.id, "title": t.title, "description": t.description,
                **{k: getattr(t, k) for k in TASK_FIELDS},
                "prerequisite_task_ids": list(t.prerequisite_task_ids or []),
                "subtasks": [
                    {"id": s.id, "title": s.title, **{k: getattr(s, k) for k in SUBTASK_FIELDS},
                     "decomposed": s.action != MANUAL_ACTION,
                     "prerequisite_subtask_ids": list(s.prerequisite_subtask_ids or [])}
                    for s in t.subtasks
                ],
            }
            for t in plan.tasks
        ],
    }


def get_plan(session: Session, principal: Principal, plan_id: str) -> Plan:
    plan = session.scalar(
        select(Plan).where(Plan.id == plan_id).options(selectinload(Plan.tasks).selectinload(PlanTask.subtasks))
    )
    if plan is None or not (principal.is_admin or plan.owner_id == principal.id):
        raise NotFound(f"Plan {plan_id} not found.", plan_id=plan_id)
    return plan


def list_plans(session: Session, principal: Principal, limit: int, cursor: str | None) -> tuple[list[Plan], str | None]:
    q = select(Plan)
    if not principal.is_admin:
        q = q.where(Plan.owner_id == principal.id)
    return newest_first_page(session, q, Plan, limit, cursor)
