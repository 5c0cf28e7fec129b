"""Operators create, control, inspect executions and resolve blocked tasks."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.execution_views import event_log, execution_detail, list_executions, subtask_timeline
from orchestrator.executions import announce_created, control_execution, create_execution, resolve_blocked_task
from orchestrator.models import utcnow
from web.auth import current_principal, require_user
from web.effects import after_commit
from web.openapi import ERROR, doc
from web.schemas.answers import EventLogSchema, ExecutionDetailSchema, ExecutionListSchema, TimelineSchema
from web.schemas.executions import (
    ControlSchema,
    CreateExecutionSchema,
    DetailQuerySchema,
    EventsQuerySchema,
    ListQuerySchema,
    ResolveSchema,
)

bp = Blueprint("executions", __name__, url_prefix="/api")


def _detail(execution_id: str, raw: bool = False) -> dict:
    with current_app.extensions["db"].reading() as s:
        return execution_detail(s, current_principal(), execution_id, raw)


@bp.post("/executions")
@doc("Run a plan: a new execution (CREATED, or QUEUED for its agent)", body=CreateExecutionSchema,
     answers={201: ExecutionDetailSchema, 404: ERROR, 409: ERROR})
@require_user
def create() -> ResponseReturnValue:
    data = CreateExecutionSchema().load(request.get_json() or {})
    now = utcnow()
    with current_app.extensions["db"].unit_of_work() as s:
        ex = create_execution(s, current_principal().id, data["plan_id"], now, agent_id=data["agent_id"],
                              execution_id=data["execution_id"])
        change = announce_created(s, ex, now)
        execution_id = ex.id
    after_commit(change.after)
    return jsonify(_detail(execution_id)), 201, {"Location": f"/api/executions/{execution_id}"}


@bp.get("/executions")
@doc("The operator's executions, newest first (cursor paging)", query=ListQuerySchema,
     answers={200: ExecutionListSchema})
@require_user
def index() -> ResponseReturnValue:
    q = ListQuerySchema().load(request.args)
    with current_app.extensions["db"].reading() as s:
        items, cursor = list_executions(s, current_principal(), q["status"], q["limit"], q["cursor"])
    return jsonify({"executions": items, "next_cursor": cursor})


@bp.get("/executions/<execution_id>")
@doc("Progress and task tree; personal data masked, raw for the owner with ?raw=true",
     query=DetailQuerySchema, answers={200: ExecutionDetailSchema})
@require_user
def show(execution_id: str) -> ResponseReturnValue:
    return jsonify(_detail(execution_id, DetailQuerySchema().load(request.args)["raw"]))


@bp.patch("/executions/<execution_id>")
@doc("Queue, pause, resume or cancel an execution", body=ControlSchema,
     answers={200: ExecutionDetailSchema, 409: ERROR})
@require_user
def control(execution_id: str) -> ResponseReturnValue:
    target = ControlSchema().load(request.get_json() or {})["status"]
    with current_app.extensions["db"].unit_of_work() as s:
        change = control_execution(s, current_principal(), execution_id, target, utcnow())
    after_commit(change.after)
    return jsonify(_detail(execution_id))


@bp.get("/executions/<execution_id>/events")
@doc("The event log, newest first (paged by `before`)", query=EventsQuerySchema,
     answers={200: EventLogSchema})
@require_user
def events(execution_id: str) -> ResponseReturnValue:
    q = EventsQuerySchema().load(request.args)
    with current_app.extensions["db"].reading() as s:
        log = event_log(s, current_principal(), execution_id, q["limit"], q["before"], q["event_type"], q["raw"])
    return jsonify(log)


@bp.get("/executions/<execution_id>/timeline")
@doc("Each subtask's attempts, for the Gantt chart", answers={200: TimelineSchema})
@require_user
def timeline(execution_id: str) -> ResponseReturnValue:
    """Each subtask's attempts, for the execution page's Gantt chart."""
    with current_app.extensions["db"].reading() as s:
        return jsonify(subtask_timeline(s, current_principal(), execution_id))


@bp.post("/executions/<execution_id>/tasks/<task_id>/resolve")
@doc("Answer a blocked task with one of its options", body=ResolveSchema,
     answers={200: ExecutionDetailSchema, 409: ERROR})
@require_user
def resolve(execution_id: str, task_id: str) -> ResponseReturnValue:
    data = ResolveSchema().load(request.get_json() or {})
    with current_app.extensions["db"].unit_of_work() as s:
        change = resolve_blocked_task(s, current_principal(), execution_id, task_id, data["option"], data["params"],
                                      utcnow())
    after_commit(change.after)
    return jsonify(_detail(execution_id))
