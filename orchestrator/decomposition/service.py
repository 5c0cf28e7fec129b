"""Decomposing the tasks of stored plans: who may ask, the configured decomposer, applying a result, and
`decompose_task`, the one "decompose, then apply above the threshold" that the API and the CLI share, and
`decompose_plan`, the same for every task and placeholder subtask of a plan not yet decomposed.

A decomposer may call a language model for many seconds, so it runs outside any transaction: the caller
reads what it needs first, and only applying opens a unit of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.agents import capability_actions
from orchestrator.credentials import Principal
from orchestrator.db import Database
from orchestrator.decomposition import Decomposer, DecompositionRequest, DecompositionResult
from orchestrator.decomposition.llm import LLMDecomposer
from orchestrator.decomposition.templates import TemplateDecomposer
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.models import Agent, ExecutionSubtask, Plan, PlanSubtask, PlanTask, User, utcnow
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.plans import get_plan, plan_to_dict, validate_plan_data
from orchestrator.settings import Settings


def decomposer_for(settings: Settings) -> Decomposer:
    """The decomposer `settings` ask for: DECOMPOSER=llm, or auto with LLM_BASE_URL set, gets the LLM
    decomposer (the templates answering when it fails), anything else the templates."""
    template = TemplateDecomposer()
    wants_llm = settings.decomposer == "llm" or (settings.decomposer == "auto" and settings.llm_base_url)
    if wants_llm and settings.llm_base_url:
        return LLMDecomposer(settings.llm_base_url, settings.llm_api_key, settings.llm_model,
                             timeout=settings.llm_timeout_seconds, fallback=template)
    return template


def _find_task(plan: Plan, task_id: str) -> PlanTask:
    task = next((t for t in plan.tasks if t.id == task_id), None)
    if task is None:
        raise NotFound(f"Task {task_id} not found in plan {plan.id}.", plan_id=plan.id, task_id=task_id)
    return task


def _used_by_execution(session: Session, plan_id: str, subtask_ids: list[str]) -> bool:
    return session.scalar(select(ExecutionSubtask.id).where(
        ExecutionSubtask.plan_id == plan_id, ExecutionSubtask.plan_subtask_id.in_(subtask_ids)).limit(1)) is not None


def _refuse_replacing(session: Session, plan_id: str, task: PlanTask, replace: bool) -> None:
    if task.subtasks and not replace:
        raise Conflict(f"Task {task.id} already has subtasks; send replace=true to overwrite them.",
                       task_id=task.id, subtask_ids=[s.id for s in task.subtasks])
    if task.subtasks and _used_by_execution(session, plan_id, [s.id for s in task.subtasks]):
        raise Conflict(f"Task {task.id}'s subtasks are used by an execution; they cannot be replaced.",
                       task_id=task.id)


def _as_plan_subtasks(result: DecompositionResult) -> list[dict[str, Any]]:
    """The result's subtasks in execution order, in the plan's names."""
    order = {sid: i for i, sid in enumerate(result.execution_sequence)}
    subtasks = sorted(result.decomposed_subtasks, key=lambda s: order.get(s["subtask_id"], len(order)))
    return [{"id": s["subtask_id"], "title": s["title"], "action": s.get("action"), "params": s.get("params") or {},
             "prerequisite_subtask_ids": list(s.get("depends_on") or []),
             "success_criteria": list(s.get("success_criteria") or []),
             "failure_handling": s.get("failure_handling")} for s in subtasks]


def apply_decomposition(session: Session, principal: Principal, plan_id: str, task_id: str,
                        result: DecompositionResult, now: datetime, *, replace: bool = False) -> PlanTask:
    """Store `result` as the task's subtasks (in execution order) and mark the task decomposed.

    A task that already has subtasks is refused (Conflict) unless `replace`; replacing is refused too
    once an execution has copied those subtasks, since the execution's rows point at them."""
    plan = get_plan(session, principal, plan_id)
    task = _find_task(plan, task_id)
    _refuse_replacing(session, plan_id, task, replace)
    new = _as_plan_subtasks(result)
    # Check the whole plan as it would be (ids unique across the plan, no cycle through task order).
    data = plan_to_dict(plan)
    for t in data["tasks"]:
        if t["id"] == task_id:
            t["subtasks"] = new
    validate_plan_data(data)

    task.subtasks.clear()
    session.flush()
    for pos, s in enumerate(new):
        task.subtasks.append(_new_row(plan_id, s, now))
        task.subtasks[-1].position = pos
    task.decomposed = bool(new)
    task.decomposition_confidence = result.decomposition_confidence
    notes = result.notes or ""
    if result.warnings:
        notes = (notes + "\n" if notes else "") + "Warnings: " + "; ".join(result.warnings)
    task.decomposition_notes = notes or None
    session.flush()
    return task


def _new_row(plan_id: str, s: dict[str, Any], now: datetime) -> PlanSubtask:
    return PlanSubtask(plan_id=plan_id, id=s["id"], title=s["title"], action=s["action"], params=s["params"],
                       prerequisite_subtask_ids=s["prerequisite_subtask_ids"], success_criteria=s["success_criteria"],
                       failure_handling=s["failure_handling"], created_at=now)


def _swapped(ids: list[str], old: str, new: list[str]) -> list[str]:
    return list(dict.fromkeys(x for i in ids for x in (new if i == old else [i])))


def _spliced(placeholder: PlanSubtask, result: DecompositionResult) -> tuple[list[dict[str, Any]], list[str]]:
    """(the result's subtasks, those of them nothing else in the result waits for). The first of them
    wait for what the placeholder waited for."""
    new = _as_plan_subtasks(result)
    waited_on = {d for s in new for d in s["prerequisite_subtask_ids"]}
    inherited = list(placeholder.prerequisite_subtask_ids or [])
    for s in new:
        s["prerequisite_subtask_ids"] = s["prerequisite_subtask_ids"] or list(inherited)
    return new, [s["id"] for s in new if s["id"] not in waited_on]


def replace_placeholder(session: Session, principal: Principal, plan_id: str, subtask_id: str,
                        result: DecompositionResult, now: datetime) -> PlanTask:
    """Replace placeholder subtask `subtask_id` (action MANUAL_ACTION) by `result`'s subtasks, at its place:
    the first of them wait for what it waited for, and what waited for it waits for the last of them. Its
    task is decomposed once no placeholder is left. Refused (Conflict) when the subtask is no placeholder
    or an execution has copied it."""
    plan = get_plan(session, principal, plan_id)
    task, old = next(((t, s) for t in plan.tasks for s in t.subtasks if s.id == subtask_id), (None, None))
    if task is None or old is None:
        raise NotFound(f"Subtask {subtask_id} not found in plan {plan_id}.", plan_id=plan_id, subtask_id=subtask_id)
    if old.action != MANUAL_ACTION:
        raise Conflict(f"Subtask {subtask_id} is already decomposed.", subtask_id=subtask_id)
    if _used_by_execution(session, plan_id, [subtask_id]):
        raise Conflict(f"Subtask {subtask_id} is used by an execution; it cannot be replaced.", subtask_id=subtask_id)
    new, ends = _spliced(old, result)
    data = plan_to_dict(plan)  # the whole plan as it would be, checked before any row changes
    for t in data["tasks"]:
        at = next((i for i, s in enumerate(t["subtasks"]) if s["id"] == subtask_id), None)
        if at is not None:
            t["subtasks"][at:at + 1] = new
        for s in t["subtasks"]:
            s["prerequisite_subtask_ids"] = _swapped(s["prerequisite_subtask_ids"], subtask_id, ends)
    validate_plan_data(data)

    at = task.subtasks.index(old)
    task.subtasks.remove(old)
    session.flush()
    task.subtasks[at:at] = [_new_row(plan_id, s, now) for s in new]
    for pos, row in enumerate(task.subtasks):
        row.position = pos
    for row in (r for t in plan.tasks for r in t.subtasks if subtask_id in (r.prerequisite_subtask_ids or [])):
        row.prerequisite_subtask_ids = _swapped(row.prerequisite_subtask_ids, subtask_id, ends)
    task.decomposed = not any(r.action == MANUAL_ACTION for r in task.subtasks)
    known = task.decomposition_confidence
    task.decomposition_confidence = min(1.0 if known is None else known, result.decomposition_confidence)
    if task.decomposed:
        task.decomposition_notes = "Its placeholder subtasks were decomposed (the lowest confidence is kept)."
    session.flush()
    return task


@dataclass(frozen=True)
class AgentAccess:
    capabilities: list[str]  # the agent's registered actions
    plan_principal: Principal | None  # whom plan reads and writes act for (an agent acts for its owner)


def agent_access(session: Session, principal: Principal, agent_id: str) -> AgentAccess:
    """Who may ask for an agent's decomposition: the agent itself, its owner, an admin. Others get 404.
    An agent's plan reads and writes act for its operator as a plain operator: its own plans only."""
    agent = session.get(Agent, agent_id)
    if principal.is_agent:
        if agent is None or principal.id != agent_id:
            raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
        owner = session.get(User, agent.owner_id) if agent.owner_id else None
        # Never the owner's admin rights: an admin's agent holds a key that runs unattended, and with
        # them it could read and rewrite every operator's plans. A deactivated owner lends no rights.
        active = owner is not None and owner.is_active
        plan_principal = Principal("user", owner.id, is_admin=False) if active else None
    else:
        if agent is None or not (principal.is_admin or agent.owner_id == principal.id):
            raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
        plan_principal = principal
    return AgentAccess(sorted(capability_actions(agent)), plan_principal)


def effective_capabilities(requested: list[str] | None, registered: list[str]) -> tuple[list[str], list[str]]:
    """(capabilities to use, warnings). A request may narrow the registered actions but not add to them;
    an agent registered without capabilities is taken at its request's word."""
    if requested is None:
        return registered, []
    requested = list(dict.fromkeys(requested))
    if not registered:
        return requested, []
    extra = [c for c in requested if c not in registered]
    warnings = [f"Capabilities the agent has not registered were ignored: {', '.join(extra)}."] if extra else []
    return [c for c in requested if c in registered], warnings


def task_request(session: Session, principal: Principal, plan_id: str, task_id: str,
                 capabilities: list[str]) -> DecompositionRequest:
    """The decomposition request for a stored task: its fields, and the plan's goal and context."""
    plan = get_plan(session, principal, plan_id)
    task = _find_task(plan, task_id)
    return DecompositionRequest(
        task={"task_id": task.id, "title": task.title, "description": task.description or "",
              "assignee_role": task.assignee_role},
        plan_context={"goal": plan.goal, **(plan.context or {})}, capabilities=capabilities)


@dataclass(frozen=True)
class ApplyTo:
    """Where a confident decomposition is stored: the request's task in plan `plan_id`, acting for `principal`."""

    principal: Principal
    plan_id: str
    replace: bool = False


@dataclass
class Decomposed:
    result: DecompositionResult
    apply_threshold: float | None = None  # set when applying was asked for
    applied: bool = False

    def to_response(self) -> dict[str, Any]:
        """The guide's response body; when applying was asked for, also applied, proposal, apply_threshold."""
        body = self.result.to_response()
        if self.apply_threshold is not None:
            body.update(applied=self.applied, proposal=not self.applied, apply_threshold=self.apply_threshold)
        return body


def _confident(result: DecompositionResult, threshold: float) -> bool:
    return result.decomposition_confidence >= threshold and bool(result.decomposed_subtasks)


def decompose_task(db: Database, settings: Settings, request: DecompositionRequest, *,
                   apply_to: ApplyTo | None = None, warnings: Sequence[str] = ()) -> Decomposed:
    """Decompose `request` with the configured decomposer; with `apply_to`, store the result when it has
    subtasks and its confidence reaches DECOMPOSITION_APPLY_THRESHOLD (below it, it is only a proposal).
    `warnings` about the request itself lead the result's (and so reach the task's notes)."""
    result = decomposer_for(settings).decompose(request)
    result.warnings[:0] = warnings
    if apply_to is None:
        return Decomposed(result)
    threshold = settings.decomposition_apply_threshold
    applied = _confident(result, threshold)
    if applied:
        with db.unit_of_work() as s:
            apply_decomposition(s, apply_to.principal, apply_to.plan_id, request.task_id, result, utcnow(),
                                replace=apply_to.replace)
    return Decomposed(result, threshold, applied)


@dataclass
class PlanDecomposition:
    """What `decompose_plan` did: per task or placeholder subtask, applied, left as a proposal, or skipped."""

    plan_id: str
    apply_threshold: float
    applied: list[dict[str, Any]] = field(default_factory=list)
    proposals: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_response(self) -> dict[str, Any]:
        return {"plan_id": self.plan_id, "apply_threshold": self.apply_threshold,
                "counts": {"applied": len(self.applied), "proposals": len(self.proposals),
                           "skipped": len(self.skipped)},
                "applied": self.applied, "proposals": self.proposals, "skipped": self.skipped}


def undecomposed_work(session: Session, principal: Principal, plan_id: str, capabilities: list[str],
                      ) -> list[tuple[str, DecompositionRequest]]:
    """("task", request) for each task without subtasks and ("subtask", request) for each placeholder
    subtask (MANUAL_ACTION), in plan order. A placeholder's request describes it as a task: its title,
    the description and assignee_role its params hold, and its task's title in the plan context."""
    plan = get_plan(session, principal, plan_id)
    context = {"goal": plan.goal, **(plan.context or {})}
    work: list[tuple[str, DecompositionRequest]] = []
    for task in plan.tasks:
        if not task.subtasks:
            work.append(("task", DecompositionRequest(
                task={"task_id": task.id, "title": task.title, "description": task.description or "",
                      "assignee_role": task.assignee_role}, plan_context=context, capabilities=capabilities)))
        for sub in (s for s in task.subtasks if s.action == MANUAL_ACTION):
            params = sub.params or {}
            work.append(("subtask", DecompositionRequest(
                task={"task_id": sub.id, "title": sub.title, "description": str(params.get("description") or ""),
                      "assignee_role": params.get("assignee_role") or task.assignee_role},
                plan_context={**context, "parent_task": task.title}, capabilities=capabilities)))
    return work


def decompose_plan(db: Database, settings: Settings, principal: Principal, plan_id: str,
                   capabilities: list[str]) -> PlanDecomposition:
    """Decompose every task without subtasks and every placeholder subtask of the plan with the configured
    decomposer, and apply each result whose confidence reaches DECOMPOSITION_APPLY_THRESHOLD (a placeholder
    is replaced: `replace_placeholder`); the others are returned as proposals to review. Each result is
    applied in its own unit of work, so one refused (used by an execution meanwhile) skips only itself."""
    with db.reading() as s:
        work = undecomposed_work(s, principal, plan_id, capabilities)
    decomposer = decomposer_for(settings)
    out = PlanDecomposition(plan_id, settings.decomposition_apply_threshold)
    for kind, request in work:
        result = decomposer.decompose(request)
        if not _confident(result, out.apply_threshold):
            out.proposals.append({"kind": kind, **result.to_response()})
            continue
        try:
            with db.unit_of_work() as s:
                if kind == "task":
                    apply_decomposition(s, principal, plan_id, request.task_id, result, utcnow())
                else:
                    replace_placeholder(s, principal, plan_id, request.task_id, result, utcnow())
        except (Conflict, ValidationFailed) as exc:
            out.skipped.append({"kind": kind, "id": request.task_id, "reason": exc.message})
            continue
        out.applied.append({"kind": kind, "id": request.task_id, "decomposer": result.decomposer,
                            "decomposition_confidence": result.decomposition_confidence,
                            "subtask_ids": list(result.execution_sequence)})
    return out
