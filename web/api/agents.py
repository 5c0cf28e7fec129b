"""Operators register and list agents."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.agents import agent_to_dict, agents_with_holdings, get_agent, holdings, register_agent
from orchestrator.models import utcnow
from web.auth import current_principal, require_user
from web.schemas.agents import AgentSchema

bp = Blueprint("agents", __name__, url_prefix="/api")
_schema = AgentSchema()


@bp.post("/agents")
@require_user
def create() -> ResponseReturnValue:
    data = _schema.load(request.get_json() or {})
    with current_app.extensions["db"].unit_of_work() as s:
        agent, key = register_agent(s, current_principal().id, data, utcnow())
        body = {**agent_to_dict(agent), "api_key": key}
    return jsonify(body), 201, {"Location": f"/api/agents/{agent.id}"}


@bp.get("/agents")
@require_user
def index() -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        return jsonify({"agents": agents_with_holdings(s, current_principal())})


@bp.get("/agents/<agent_id>")
@require_user
def show(agent_id: str) -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        agent = get_agent(s, current_principal(), agent_id)
        return jsonify(agent_to_dict(agent, holdings(s, [agent.id])[agent.id]))
