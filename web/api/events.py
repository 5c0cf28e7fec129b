"""Agents' events: POST one, POST a batch, GET what became of one.

The handler validates, authenticates, checks the hold from Redis, accepts the event into its
shard's stream and waits briefly for the worker's outcome: 201 with it, or 202 with a URL to read it
from later. No database transaction on this path (the hold check falls back to one read).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.errors import Forbidden, NotFound
from orchestrator.holds import holder
from orchestrator.ingest import Accepted, Ingestor, NotHolder, held_subtask_from_db
from orchestrator.models import Execution, ExecutionEvent, utcnow
from web.auth import current_principal, require_agent
from web.schemas.events import BatchSchema, EventSchema

bp = Blueprint("events", __name__, url_prefix="/api")

_event_schema = EventSchema()
_batch_schema = BatchSchema()


def _ingestor() -> Ingestor:
    return current_app.extensions["ingestor"]


def _check_hold(execution_id: str, agent_id: str, body: dict[str, Any]) -> None:
    """Raise NotHolder unless the agent holds the subtask the event is about (heartbeats need not)."""
    if body["event_type"] == "heartbeat":
        return
    ref = body.get("subtask_id") or body["task_id"]
    settings = current_app.config["SETTINGS"]
    if holder(current_app.extensions["redis"], settings.redis_key_prefix, execution_id, ref) == agent_id:
        return
    with current_app.extensions["db"].reading() as session:
        if held_subtask_from_db(session, execution_id, agent_id, ref) is not None:
            return
    raise NotHolder(f"Agent {agent_id} does not hold {ref} in execution {execution_id}.",
                    execution_id=execution_id, task_id=ref)


def _wire_body(body: dict[str, Any]) -> dict[str, Any]:
    ts = body.get("agent_timestamp")
    return {k: v for k, v in {**body, "agent_timestamp": ts.isoformat() if ts else None}.items() if v is not None}


def _outcome_response(accepted: Accepted, outcome: dict[str, Any] | None) -> ResponseReturnValue:
    headers = {"Idempotent-Replayed": "true"} if accepted.duplicate else {}
    if outcome is None:
        url = f"/api/events/{accepted.event_id}"
        body = {"event_id": accepted.event_id, "execution_id": accepted.execution_id, "status": "accepted",
                "status_url": url}
        return jsonify(body), 202, {**headers, "Location": url}
    if not outcome.get("applied", True):
        err = outcome["error"]
        status = 404 if err["code"] == "not_found" else 409
        return jsonify({"error": {**err, "details": {"event_id": accepted.event_id}}}), status, headers
    public = {k: v for k, v in outcome.items() if k not in ("applied", "agent_id")}
    return jsonify(public), 201, headers


@bp.post("/executions/<execution_id>/events")
@require_agent
def post_event(execution_id: str) -> ResponseReturnValue:
    body = _event_schema.load(request.get_json() or {})
    agent_id = current_principal().id
    if body["agent_id"] != agent_id:
        raise Forbidden("agent_id must be the agent whose key signs the request.")
    ingestor = _ingestor()
    wire = _wire_body(body)
    accepted = ingestor.find_duplicate(execution_id, wire)
    if accepted is None:
        _check_hold(execution_id, agent_id, body)
        accepted = ingestor.accept(execution_id, agent_id, wire, utcnow())
    wait_ms = current_app.config["SETTINGS"].ingest_reply_wait_ms
    outcome = ingestor.outcome(accepted.event_id) if accepted.duplicate else None
    if outcome is None:
        outcome = ingestor.wait_outcome(accepted.event_id, wait_ms)
    return _outcome_response(accepted, outcome)


@bp.post("/events/batch")
@require_agent
def post_batch() -> ResponseReturnValue:
    """Up to 1,000 events, any executions, accepted all together or not at all; answers 202 at once."""
    items = _batch_schema.load(request.get_json() or {})["events"]
    agent_id = current_principal().id
    refused: list[dict[str, Any]] = []
    for index, body in enumerate(items):
        if body["agent_id"] != agent_id:
            refused.append({"index": index, "code": "forbidden", "message": "agent_id is not the caller"})
            continue
        try:
            _check_hold(body["execution_id"], agent_id, body)
        except NotHolder as exc:
            refused.append({"index": index, "code": exc.code, "message": exc.message})
    if refused:
        raise NotHolder("Some events were refused; none of the batch was accepted.", refused=refused)
    accepted = _ingestor().accept_many(
        [(b["execution_id"], agent_id, _wire_body({k: v for k, v in b.items() if k != "execution_id"})) for b in items],
        utcnow(),
    )
    results = [{"event_id": a.event_id, "execution_id": a.execution_id, "duplicate": a.duplicate,
                "status_url": f"/api/events/{a.event_id}"} for a in accepted]
    return jsonify({"accepted": len(results), "events": results}), 202


@bp.get("/events/<event_id>")
def get_event_outcome(event_id: str) -> ResponseReturnValue:
    """What became of an accepted event: 202 while pending, 200 with its outcome once applied."""
    principal = current_principal()
    ingestor = _ingestor()
    pending, outcome = ingestor.lookup(event_id)
    if pending:
        return jsonify({"event_id": event_id, "state": "pending"}), 202
    with current_app.extensions["db"].reading() as session:
        if outcome is None:
            row = session.get(ExecutionEvent, event_id)
            if row is None:
                raise NotFound(f"Event {event_id} not found.", event_id=event_id)
            outcome = row.outcome or {"event_id": row.id, "execution_id": row.execution_id, "applied": True,
                                      "agent_id": row.agent_id}
        allowed = principal.is_admin or principal.id == outcome.get("agent_id")
        if not allowed and principal.is_user:
            ex = session.get(Execution, outcome.get("execution_id"))
            allowed = ex is not None and ex.owner_id == principal.id
    if not allowed:
        raise NotFound(f"Event {event_id} not found.", event_id=event_id)
    state = "applied" if outcome.get("applied", True) else "rejected"
    return jsonify({"event_id": event_id, "state": state,
                    "outcome": {k: v for k, v in outcome.items() if k != "applied"}}), 200
