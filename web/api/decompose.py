"""Task decomposition (guide section 3): ask a decomposer, optionally store the result as the task's subtasks;
or decompose all of a plan that is not yet decomposed (`POST /api/plans/<id>/decomposition`).

The decomposer may call a language model for many seconds, so it runs outside any transaction: a read
checks access and gathers the input, the decomposer answers, and only applying opens a unit of work.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from orchestrator.decomposition import DecompositionRequest, operator_decomposition
from orchestrator.decomposition.service import (
    ApplyTo,
    agent_access,
    apply_decomposition,
    decompose_plan,
    decompose_task,
    effective_capabilities,
    task_request,
)
from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.models import utcnow
from orchestrator.plan_schema import ID, DecompositionSchema, DecompositionTaskSchema
from orchestrator.plans import get_plan, plan_to_dict
from web.auth import current_principal, require_user
from web.openapi import ERROR, doc
from web.schemas.answers import (
    DecompositionAnswerSchema,
    PlanDecompositionReportSchema,
    StoredDecompositionSchema,
)

bp = Blueprint("decompose", __name__, url_prefix="/api")


class DecomposeSchema(Schema):
    task = fields.Nested(DecompositionTaskSchema, required=True)
    plan_context = fields.Dict(keys=fields.String(), load_default=dict)
    agent_capabilities = fields.List(fields.String(validate=validate.Length(1, 120)), load_default=None)
    plan_id = fields.String(load_default=None, allow_none=True, validate=ID)
    apply = fields.Boolean(load_default=False)
    replace = fields.Boolean(load_default=False)


class PlanDecompositionSchema(Schema):
    all = fields.Boolean(required=True, validate=validate.Equal(True, error="Only all=true is supported."))
    agent_id = fields.String(required=True, validate=ID)


class DecompositionInSchema(DecompositionSchema):
    agent_id = fields.String(load_default=None, allow_none=True, validate=ID)
    replace = fields.Boolean(load_default=False)


_decompose = DecomposeSchema()
_decomposition = DecompositionInSchema()
_plan_decomposition = PlanDecompositionSchema()


@bp.post("/agents/<agent_id>/decompose")
@doc("Decompose a task into subtasks (the agent itself, or its operator); apply to store it",
     body=DecomposeSchema, security="agent_or_operator", answers={200: DecompositionAnswerSchema, 409: ERROR})
def decompose(agent_id: str) -> ResponseReturnValue:
    """For the agent itself (its key) or an operator who owns it."""
    principal = current_principal()
    data = _decompose.load(request.get_json() or {})
    if data["apply"] and not data["plan_id"]:
        raise ValidationFailed("apply needs the plan_id of the task to store the decomposition in.")
    db = current_app.extensions["db"]
    with db.reading() as s:
        access = agent_access(s, principal, agent_id)
        caps, warnings = effective_capabilities(data["agent_capabilities"], access.capabilities)
        context = data["plan_context"]
        if data["plan_id"]:
            if access.plan_principal is None:
                raise NotFound(f"Plan {data['plan_id']} not found.", plan_id=data["plan_id"])
            stored = task_request(s, access.plan_principal, data["plan_id"], data["task"]["task_id"], caps)
            context = {**stored.plan_context, **context}
    req = DecompositionRequest(task=data["task"], plan_context=context, capabilities=caps)
    apply_to = ApplyTo(access.plan_principal, data["plan_id"], data["replace"]) if data["apply"] else None
    done = decompose_task(db, current_app.config["SETTINGS"], req, apply_to=apply_to, warnings=warnings)
    return jsonify(done.to_response())


@bp.post("/plans/<plan_id>/tasks/<task_id>/decomposition")
@doc("Store a decomposition as the task's subtasks (checked strictly, never repaired)",
     body=DecompositionInSchema, answers={201: StoredDecompositionSchema, 409: ERROR})
@require_user
def store(plan_id: str, task_id: str) -> ResponseReturnValue:
    """An operator stores a (possibly edited) decomposition; it is checked strictly, never repaired."""
    data = _decomposition.load(request.get_json() or {})
    db = current_app.extensions["db"]
    principal = current_principal()
    caps = None
    if data["agent_id"]:
        with db.reading() as s:
            caps = set(agent_access(s, principal, data["agent_id"]).capabilities) or None
    result = operator_decomposition(task_id, data, caps)
    with db.unit_of_work() as s:
        apply_decomposition(s, principal, plan_id, task_id, result, utcnow(), replace=data["replace"])
        plan = plan_to_dict(get_plan(s, principal, plan_id))
    task = next(t for t in plan["tasks"] if t["id"] == task_id)
    return jsonify({"plan_id": plan_id, "task": task}), 201, {"Location": f"/api/plans/{plan_id}"}


@bp.post("/plans/<plan_id>/decomposition")
@doc("Decompose every part of a plan not yet decomposed", body=PlanDecompositionSchema,
     answers={200: PlanDecompositionReportSchema, 409: ERROR})
@require_user
def decompose_all(plan_id: str) -> ResponseReturnValue:
    """{"all": true, "agent_id": ...}: decompose every task without subtasks and every placeholder subtask
    within the agent's capabilities, applying what reaches the threshold; the rest come back as proposals.
    With the LLM decomposer this takes a call per item: a large plan is better done from the CLI."""
    data = _plan_decomposition.load(request.get_json() or {})
    db = current_app.extensions["db"]
    principal = current_principal()
    with db.reading() as s:
        caps = agent_access(s, principal, data["agent_id"]).capabilities
    if not caps:
        raise ValidationFailed(f"Agent {data['agent_id']} has no registered capabilities to decompose into.",
                               agent_id=data["agent_id"])
    report = decompose_plan(db, current_app.config["SETTINGS"], principal, plan_id, caps)
    return jsonify(report.to_response())
