"""Task decomposition (guide section 3): one interface, a template decomposer and an LLM decomposer.

A decomposer turns one task plus its plan context and the agent's capabilities into atomic subtasks
whose actions are all capabilities of the agent, with an execution sequence and a computed confidence
(see `confidence.py`). `apply_decomposition` stores a result as the task's PlanSubtasks.

Configuration comes from the environment (read here, not in Settings, so this package stays optional):

| variable | default | meaning |
|---|---|---|
| DECOMPOSER | auto | template, llm, or auto (llm when LLM_BASE_URL is set) |
| LLM_BASE_URL | (unset) | OpenAI-compatible API root, e.g. https://api.openai.com/v1 |
| LLM_API_KEY | (unset) | sent as `Authorization: Bearer` |
| LLM_MODEL | gpt-4o-mini | model name |
| LLM_TIMEOUT_SECONDS | 30 | after this the template decomposer answers instead |
| DECOMPOSITION_APPLY_THRESHOLD | 0.75 | below it a decomposition is only a proposal |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.credentials import Principal
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.graph import find_cycle, topological_order
from orchestrator.ids import child_id, is_valid_id
from orchestrator.models import ExecutionSubtask, Plan, PlanSubtask, PlanTask
from orchestrator.plans import get_plan, plan_to_dict, validate_plan_data

DEFAULT_APPLY_THRESHOLD = 0.75


@dataclass(frozen=True)
class DecompositionRequest:
    task: dict[str, Any]  # task_id, title, description, assignee_role
    plan_context: dict[str, Any]
    capabilities: list[str]

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"])


@dataclass
class DecompositionResult:
    task_id: str
    decomposition_confidence: float
    decomposed_subtasks: list[dict[str, Any]]
    execution_sequence: list[str]
    notes: str = ""
    warnings: list[str] = field(default_factory=list)
    decomposer: str = "template"  # which decomposer answered; not part of the guide's response

    def to_response(self) -> dict[str, Any]:
        """The guide's response body, keys in the guide's order."""
        return {
            "task_id": self.task_id,
            "decomposition_confidence": self.decomposition_confidence,
            "decomposed_subtasks": [
                {k: s[k] for k in ("subtask_id", "title", "action", "params", "depends_on", "success_criteria",
                                   "failure_handling") if k in s and not (k == "failure_handling" and s[k] is None)}
                for s in self.decomposed_subtasks
            ],
            "execution_sequence": list(self.execution_sequence),
            "notes": self.notes,
            "warnings": list(self.warnings),
        }


class Decomposer(Protocol):
    name: str

    def decompose(self, request: DecompositionRequest) -> DecompositionResult: ...


@dataclass(frozen=True)
class DecompositionConfig:
    decomposer: str = "auto"
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_seconds: float = 30.0
    apply_threshold: float = DEFAULT_APPLY_THRESHOLD

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DecompositionConfig:
        env = os.environ if environ is None else environ
        try:
            timeout = float(env.get("LLM_TIMEOUT_SECONDS") or 30)
            threshold = float(env.get("DECOMPOSITION_APPLY_THRESHOLD") or DEFAULT_APPLY_THRESHOLD)
        except ValueError as exc:
            raise ValueError(f"LLM_TIMEOUT_SECONDS and DECOMPOSITION_APPLY_THRESHOLD must be numbers: {exc}") from exc
        return cls(
            decomposer=(env.get("DECOMPOSER") or "auto").lower(),
            llm_base_url=env.get("LLM_BASE_URL") or None,
            llm_api_key=env.get("LLM_API_KEY") or None,
            llm_model=env.get("LLM_MODEL") or "gpt-4o-mini",
            llm_timeout_seconds=timeout,
            apply_threshold=max(0.0, min(1.0, threshold)),
        )


def decomposer_for(settings: Any = None, environ: Mapping[str, str] | None = None) -> Decomposer:
    """The decomposer the configuration asks for. `settings` is accepted for symmetry with the other
    factories; everything this needs is in the environment (see the module docstring)."""
    from orchestrator.decomposition.llm import LLMDecomposer
    from orchestrator.decomposition.templates import TemplateDecomposer

    config = DecompositionConfig.from_env(environ)
    template = TemplateDecomposer()
    wants_llm = config.decomposer == "llm" or (config.decomposer == "auto" and config.llm_base_url)
    if wants_llm and config.llm_base_url:
        return LLMDecomposer(config.llm_base_url, config.llm_api_key, config.llm_model,
                             timeout=config.llm_timeout_seconds, fallback=template)
    return template


def subtask_suffix(i: int) -> str:
    """0 → a, 25 → z, 26 → aa: the guide's task_1_1_a naming, beyond 26 subtasks too."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(97 + r) + out
    return out


@dataclass
class Normalised:
    subtasks: list[dict[str, Any]]
    execution_sequence: list[str]
    repairs: int = 0
    uncovered: int = 0
    warnings: list[str] = field(default_factory=list)
    strict: bool = False

    def repair(self, message: str, **details: Any) -> None:
        """Count a fix (it lowers confidence); with `strict`, refuse the input instead."""
        if self.strict:
            raise ValidationFailed(message, **details)
        self.repairs += 1
        self.warnings.append(message)


def _fresh_id(task_id: str, i: int, seen: set[str]) -> str:
    suffix = subtask_suffix(i)
    while child_id(task_id, suffix) in seen:
        suffix += "x"
    return child_id(task_id, suffix)


def _subtask_items(task_id: str, raw: list[Any], out: Normalised) -> list[dict[str, Any]]:
    """The usable subtasks of `raw` in one shape, with ids present, unique and within the id alphabet."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    renamed: dict[str, str] = {}  # unusable id → its replacement, so that dependents still find it
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or not isinstance(s.get("title"), str) or not s["title"].strip():
            out.repair(f"Subtask #{i + 1} has no title; dropped.", index=i)
            continue
        sid = s.get("subtask_id") or s.get("id")
        if not is_valid_id(sid) or sid in seen:
            new = _fresh_id(task_id, i, seen)
            out.repair(f"Subtask #{i + 1} had a missing, duplicate or unusable id ({sid!r}); it is now {new}.",
                       subtask_id=sid)
            if isinstance(sid, str) and not is_valid_id(sid):  # not a duplicate's: which one would they mean?
                renamed.setdefault(sid, new)
            sid = new
        seen.add(sid)
        deps = s.get("depends_on", s.get("prerequisite_subtask_ids")) or []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            out.repair(f"{sid}: depends_on must be a list of ids; ignored.", subtask_id=sid)
            deps = []
        params = s.get("params") or {}
        if not isinstance(params, dict):
            out.repair(f"{sid}: params must be an object; ignored.", subtask_id=sid)
            params = {}
        criteria = s.get("success_criteria") or []
        if not isinstance(criteria, list):
            criteria = [str(criteria)]
        items.append({
            "subtask_id": sid, "title": s["title"].strip()[:500], "action": s.get("action"), "params": params,
            "depends_on": deps, "success_criteria": [str(c) for c in criteria],
            "failure_handling": s.get("failure_handling") if isinstance(s.get("failure_handling"), str) else None,
        })
    for it in items:
        it["depends_on"] = list(dict.fromkeys(renamed.get(d, d) for d in it["depends_on"]))
    return items


def _drop_uncovered(items: list[dict[str, Any]], capabilities: set[str], out: Normalised) -> list[dict[str, Any]]:
    """Drop subtasks whose action the agent lacks; their dependents inherit their prerequisites."""
    deps_of = {it["subtask_id"]: it["depends_on"] for it in items}
    dropped = {it["subtask_id"] for it in items if it["action"] not in capabilities}
    for it in items:
        if it["subtask_id"] in dropped:
            out.uncovered += 1
            out.warnings.append(f"{it['subtask_id']} ({it['title']}) needs action {it['action']!r}, "
                                "which the agent lacks; dropped.")
    if dropped and out.strict:
        raise ValidationFailed("Subtasks use actions the agent lacks.", actions=sorted(
            {str(it["action"]) for it in items if it["subtask_id"] in dropped}))

    def inherited(dep: str, trail: frozenset[str] = frozenset()) -> list[str]:
        if dep not in dropped:
            return [dep]
        if dep in trail:
            return []
        return [x for d in deps_of.get(dep, []) for x in inherited(d, trail | {dep})]

    kept = [it for it in items if it["subtask_id"] not in dropped]
    for it in kept:
        it["depends_on"] = list(dict.fromkeys(x for d in it["depends_on"] for x in inherited(d)))
    return kept


def normalise_subtasks(task_id: str, raw: list[Any], capabilities: set[str] | None, *,
                       strict: bool = False) -> Normalised:
    """Make subtasks valid: ids present, unique and in the id alphabet, actions among `capabilities`
    (others dropped, their dependents inheriting their prerequisites), prerequisites known and acyclic.
    Each fix is a repair (counted for confidence); with `strict`, any fix raises ValidationFailed instead
    (a person's input)."""
    out = Normalised([], [], strict=strict)
    items = _subtask_items(task_id, raw, out)
    if capabilities is not None:
        items = _drop_uncovered(items, capabilities, out)
    known = {it["subtask_id"] for it in items}
    for it in items:
        unknown = [d for d in it["depends_on"] if d not in known or d == it["subtask_id"]]
        if unknown:
            out.repair(f"{it['subtask_id']} depends on unknown ids {unknown}; those were removed.",
                       unknown_prerequisites={it["subtask_id"]: unknown})
            it["depends_on"] = [d for d in it["depends_on"] if d not in unknown]
    graph = {it["subtask_id"]: it["depends_on"] for it in items}
    while cycle := find_cycle(graph):
        # The cycle is [a, b, ..., a] with a depending on b: dropping that one edge breaks it.
        out.repair(f"Dependencies formed a cycle {cycle}; {cycle[0]} no longer waits for {cycle[1]}.", cycle=cycle)
        graph[cycle[0]] = [d for d in graph[cycle[0]] if d != cycle[1]]
    by_id = {it["subtask_id"]: it for it in items}
    for sid, deps in graph.items():
        by_id[sid]["depends_on"] = deps
    out.subtasks = items
    out.execution_sequence = topological_order(graph)
    return out


def _find_task(plan: Plan, task_id: str) -> PlanTask:
    task = next((t for t in plan.tasks if t.id == task_id), None)
    if task is None:
        raise NotFound(f"Task {task_id} not found in plan {plan.id}.", plan_id=plan.id, task_id=task_id)
    return task


def apply_decomposition(session: Session, principal: Principal, plan_id: str, task_id: str,
                        result: DecompositionResult, now: datetime, *, replace: bool = False) -> PlanTask:
    """Store `result` as the task's subtasks (in execution order) and mark the task decomposed.

    A task that already has subtasks is refused (Conflict) unless `replace`; replacing is refused too
    once an execution has copied those subtasks, since the execution's rows point at them."""
    plan = get_plan(session, principal, plan_id)
    task = _find_task(plan, task_id)
    if task.subtasks and not replace:
        raise Conflict(f"Task {task_id} already has subtasks; send replace=true to overwrite them.",
                       task_id=task_id, subtask_ids=[s.id for s in task.subtasks])
    if task.subtasks:
        used = session.scalar(select(ExecutionSubtask.id).where(
            ExecutionSubtask.plan_id == plan_id,
            ExecutionSubtask.plan_subtask_id.in_([s.id for s in task.subtasks])).limit(1))
        if used is not None:
            raise Conflict(f"Task {task_id}'s subtasks are used by an execution; they cannot be replaced.",
                           task_id=task_id)
    order = {sid: i for i, sid in enumerate(result.execution_sequence)}
    subtasks = sorted(result.decomposed_subtasks, key=lambda s: order.get(s["subtask_id"], len(order)))
    new = [{"id": s["subtask_id"], "title": s["title"], "action": s.get("action"), "params": s.get("params") or {},
            "prerequisite_subtask_ids": list(s.get("depends_on") or []),
            "success_criteria": list(s.get("success_criteria") or []),
            "failure_handling": s.get("failure_handling")} for s in subtasks]
    # Check the whole plan as it would be (ids unique across the plan, no cycle through task order).
    data = plan_to_dict(plan)
    for t in data["tasks"]:
        if t["id"] == task_id:
            t["subtasks"] = new
    validate_plan_data(data)

    task.subtasks.clear()
    session.flush()
    for pos, s in enumerate(new):
        task.subtasks.append(PlanSubtask(
            plan_id=plan_id, id=s["id"], title=s["title"], action=s["action"], params=s["params"], position=pos,
            prerequisite_subtask_ids=s["prerequisite_subtask_ids"], success_criteria=s["success_criteria"],
            failure_handling=s["failure_handling"], created_at=now,
        ))
    task.decomposed = bool(new)
    task.decomposition_confidence = result.decomposition_confidence
    notes = result.notes or ""
    if result.warnings:
        notes = (notes + "\n" if notes else "") + "Warnings: " + "; ".join(result.warnings)
    task.decomposition_notes = notes or None
    session.flush()
    return task


@dataclass(frozen=True)
class AgentAccess:
    capabilities: list[str]  # the agent's registered actions
    plan_principal: Principal | None  # whom plan reads and writes act for (an agent acts for its owner)


def agent_access(session: Session, principal: Principal, agent_id: str) -> AgentAccess:
    """Who may ask for an agent's decomposition: the agent itself, its owner, an admin. Others get 404.
    An agent's plan reads and writes act for its operator as a plain operator: its own plans only."""
    from orchestrator.agents import capability_actions
    from orchestrator.models import Agent, User

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
