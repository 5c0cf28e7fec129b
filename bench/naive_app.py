"""The baseline for bench/ingest.py: the same app, plus an event endpoint that applies each event in
its own transaction inside the request (no queue, no batching, one commit per event)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.events.apply import apply_batch
from orchestrator.events.protocol import Envelope
from orchestrator.ids import event_id
from orchestrator.models import utcnow
from web.app import create_app
from web.auth import current_principal, require_agent
from web.schemas.events import EventSchema

bp = Blueprint("naive", __name__, url_prefix="/naive")
_schema = EventSchema()


@bp.post("/executions/<execution_id>/events")
@require_agent
def naive_event(execution_id: str) -> ResponseReturnValue:
    body = _schema.load(request.get_json())
    ts = body.get("agent_timestamp")
    body = {k: v for k, v in {**body, "agent_timestamp": ts.isoformat() if ts else None}.items() if v is not None}
    now = utcnow()
    env = Envelope(event_id(), execution_id, current_principal().id, now, body)
    with current_app.extensions["db"].unit_of_work() as session:
        outcome = apply_batch(session, [env], now).outcomes[env.id]
    return jsonify(outcome), 201


app = create_app()
app.register_blueprint(bp)
