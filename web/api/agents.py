"""Operators register and list agents, and manage their request signing."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.agents import (
    agent_to_dict,
    agents_with_holdings,
    get_agent,
    holdings,
    register_agent,
    rotate_signing_secret,
    update_agent,
)
from orchestrator.models import utcnow
from orchestrator.revocation import announce
from web.auth import current_principal, require_user
from web.openapi import ERROR, doc
from web.schemas.agents import AgentSchema, AgentUpdateSchema
from web.schemas.answers import AgentAnswerSchema, AgentCreatedSchema, AgentListSchema, SigningSecretSchema

bp = Blueprint("agents", __name__, url_prefix="/api")
_schema = AgentSchema()
_update_schema = AgentUpdateSchema()


@bp.post("/agents")
@doc("Register an agent; its API key and signing secret are in this answer only", body=AgentSchema,
     answers={201: AgentCreatedSchema, 409: ERROR})
@require_user
def create() -> ResponseReturnValue:
    data = _schema.load(request.get_json() or {})
    with current_app.extensions["db"].unit_of_work() as s:
        agent, key, secret = register_agent(s, current_principal().id, data, utcnow())
        body = {**agent_to_dict(agent), "api_key": key, "signing_secret": secret}
    return jsonify(body), 201, {"Location": f"/api/agents/{agent.id}"}


@bp.get("/agents")
@doc("The agents the operator may see, with what each holds", answers={200: AgentListSchema})
@require_user
def index() -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        return jsonify({"agents": agents_with_holdings(s, current_principal())})


@bp.get("/agents/<agent_id>")
@doc("One agent, with what it holds", answers={200: AgentAnswerSchema})
@require_user
def show(agent_id: str) -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        agent = get_agent(s, current_principal(), agent_id)
        return jsonify(agent_to_dict(agent, holdings(s, [agent.id])[agent.id]))


def _announce_agent_change() -> None:
    """Web processes cache an agent's signing mode, secret and rate limit with its principal: make them
    reload it."""
    announce(current_app.extensions["redis"], current_app.config["SETTINGS"].redis_key_prefix)


@bp.patch("/agents/<agent_id>")
@doc("Change an agent's signing mode or rate limit", body=AgentUpdateSchema, answers={200: AgentAnswerSchema})
@require_user
def update(agent_id: str) -> ResponseReturnValue:
    data = _update_schema.load(request.get_json() or {})
    with current_app.extensions["db"].unit_of_work() as s:
        agent = update_agent(s, current_principal(), agent_id, data)
        body = agent_to_dict(agent)
    _announce_agent_change()
    return jsonify(body)


@bp.post("/agents/<agent_id>/signing-secret")
@doc("A new signing secret, shown once; the old one stops working at once",
     answers={201: SigningSecretSchema})
@require_user
def new_signing_secret(agent_id: str) -> ResponseReturnValue:
    """A new signing secret, shown once; the old one stops working at once."""
    with current_app.extensions["db"].unit_of_work() as s:
        agent, secret = rotate_signing_secret(s, current_principal(), agent_id)
        body = {"agent_id": agent.id, "signing": agent.signing, "signing_secret": secret}
    _announce_agent_change()
    return jsonify(body), 201
