"""The baselines for bench/ingest.py, served by the same app and gunicorn settings as the real one:

- `POST /naive/executions/{id}/events`: the naive app of issue 11. It authenticates and validates
  like the real endpoint, then does one INSERT and one COMMIT per request on a pooled connection:
  no queue, no batching, no transitions, no position in commit order (`seq` stays NULL).
- `POST /naive/noop`: a route that does nothing, the ceiling of HTTP plus Flask on this machine.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import insert

from orchestrator.ids import event_id
from orchestrator.models import ExecutionEvent, utcnow
from web.app import create_app
from web.auth import current_principal, require_agent
from web.schemas.events import EventSchema

bp = Blueprint("naive", __name__, url_prefix="/naive")
_schema = EventSchema()


@bp.post("/executions/<execution_id>/events")
@require_agent
def naive_event(execution_id: str) -> ResponseReturnValue:
    body = _schema.load(request.get_json())
    row = {"id": event_id(), "execution_id": execution_id, "agent_id": current_principal().id, "source": "agent",
           "event_type": body["event_type"], "task_id": body.get("task_id"), "status": body.get("status"),
           "message": body.get("message"), "output_data": body.get("output_data"), "timestamp": utcnow()}
    with current_app.extensions["db"].unit_of_work() as session:
        # A Core INSERT on the session's connection: no commit-order position, no transition.
        session.connection().execute(insert(ExecutionEvent.__table__), row)
    return jsonify({"event_id": row["id"], "applied": True}), 201


@bp.post("/noop")
def noop() -> ResponseReturnValue:
    return "", 204


app = create_app()
app.register_blueprint(bp)
