"""`GET /api/ops/summary`: the ops view's data (admins): backlogs, dead letters, executions by state,
agents and heartbeats now, and counter totals the page turns into events/s between two reads.

Admins only: the figures are the whole stack's, not one operator's executions."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from orchestrator.ops import summary
from web.auth import require_admin
from web.metrics import snapshot
from web.openapi import doc
from web.schemas.answers import FreeFormSchema

bp = Blueprint("ops", __name__, url_prefix="/api/ops")


@bp.get("/summary")
@doc("The ops view's data: backlogs, dead letters, executions by state, agents, counter totals",
     security="admin", answers={200: FreeFormSchema})
@require_admin
def ops_summary() -> ResponseReturnValue:
    return jsonify(summary(snapshot()))
