"""Operators create and read plans."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.models import utcnow
from orchestrator.plan_schema import PlanSchema
from orchestrator.plans import create_plan, get_plan, list_plans, plan_to_dict
from orchestrator.publish import iso
from web.auth import current_principal, require_user
from web.openapi import ERROR, doc
from web.schemas.answers import PlanAnswerSchema, PlanListSchema
from web.schemas.executions import ListQuerySchema

bp = Blueprint("plans", __name__, url_prefix="/api")
_schema = PlanSchema()
_list = ListQuerySchema(only=("limit", "cursor"))


@bp.post("/plans")
@doc("Create a plan: goal, context, tasks with prerequisites, subtasks", body=PlanSchema,
     answers={201: PlanAnswerSchema, 409: ERROR})
@require_user
def create() -> ResponseReturnValue:
    data = _schema.load(request.get_json() or {})
    with current_app.extensions["db"].unit_of_work() as s:
        plan = create_plan(s, current_principal().id, data, utcnow())
        body = plan_to_dict(plan)
    return jsonify(body), 201, {"Location": f"/api/plans/{plan.id}"}


@bp.get("/plans")
@doc("The operator's plans, newest first (cursor paging)", query=_list, answers={200: PlanListSchema})
@require_user
def index() -> ResponseReturnValue:
    q = _list.load(request.args)
    with current_app.extensions["db"].reading() as s:
        plans, cursor = list_plans(s, current_principal(), q["limit"], q["cursor"])
        # Not plan_to_dict: the listing must not load every plan's tasks and subtasks.
        items = [{"id": p.id, "title": p.title, "goal": p.goal, "source": p.source,
                  "created_at": iso(p.created_at)} for p in plans]
    return jsonify({"plans": items, "next_cursor": cursor})


@bp.get("/plans/<plan_id>")
@doc("One plan with its tasks and subtasks", answers={200: PlanAnswerSchema})
@require_user
def show(plan_id: str) -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        return jsonify(plan_to_dict(get_plan(s, current_principal(), plan_id)))
