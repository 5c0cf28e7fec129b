"""GET /api/agents/{id}/work: agents poll for their next subtask (each poll is a heartbeat).

A claim that has committed is always answered (200 with its payload), even when Redis fails in the
after-commit step (web/effects.py): an answer turned into a 503 would strand the claim.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.models import utcnow
from orchestrator.scheduling import claim_work
from web.auth import require_agent
from web.effects import after_commit
from web.schemas.agents import PollQuerySchema

bp = Blueprint("work", __name__, url_prefix="/api")
_query = PollQuerySchema()


@bp.get("/agents/<agent_id>/work")
@require_agent
def poll(agent_id: str) -> ResponseReturnValue:
    actions = _query.load(request.args)["supported_actions"]
    result = current_app.extensions["db"].transaction(lambda s: claim_work(s, agent_id, actions, utcnow()))
    after_commit(result.after)
    if result.payload is None:
        return "", 204
    return jsonify(result.payload), 200
