"""Agents' events: POST one, POST a batch, POST a liveness heartbeat, GET what became of one.

The handler loads the body, submits it to `orchestrator.events.accept` (which checks tenancy,
duplicates and holds, and queues it), and answers: 201 with the outcome when the worker applies it
within the wait, or 202 with a URL to read it from later.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.errors import Forbidden, NotFound
from orchestrator.events.accept import Accepted, Ingestor, Submission
from orchestrator.events.protocol import wire_body
from orchestrator.models import Execution, ExecutionEvent, utcnow
from web.auth import current_principal, first_trip_checks, require_agent_submit
from web.openapi import ERROR, doc
from web.schemas.answers import BatchAcceptedSchema, EventAcceptedSchema, EventAppliedSchema, EventStateSchema
from web.schemas.events import BatchSchema, EventSchema, HeartbeatSchema

bp = Blueprint("events", __name__, url_prefix="/api")

_event_schema = EventSchema()
_batch_schema = BatchSchema()
_heartbeat_schema = HeartbeatSchema()

# An outcome that says "not applied" answers with the status its code stands for.
_REFUSAL_STATUS = {"not_found": 404, "rejected": 422}


def _ingestor() -> Ingestor:
    return current_app.extensions["ingestor"]


def _outcome_response(accepted: Accepted, outcome: dict[str, Any] | None) -> ResponseReturnValue:
    headers = {"Idempotent-Replayed": "true"} if accepted.duplicate else {}
    if outcome is None:
        url = f"/api/events/{accepted.event_id}"
        body = {"event_id": accepted.event_id, "execution_id": accepted.execution_id, "status": "accepted",
                "status_url": url}
        return jsonify(body), 202, {**headers, "Location": url}
    if not outcome.get("applied", True):
        err = outcome["error"]
        status = _REFUSAL_STATUS.get(err["code"], 409)
        return jsonify({"error": {**err, "details": {"event_id": accepted.event_id}}}), status, headers
    public = {k: v for k, v in outcome.items() if k not in ("applied", "agent_id")}
    return jsonify(public), 201, headers


def _answer(accepted: Accepted) -> ResponseReturnValue:
    ingestor = _ingestor()
    outcome = ingestor.outcome(accepted.event_id) if accepted.duplicate else None
    if outcome is None:
        outcome = ingestor.wait_outcome(accepted.event_id, current_app.config["SETTINGS"].ingest_reply_wait_ms)
    return _outcome_response(accepted, outcome)


@bp.post("/executions/<execution_id>/events")
@doc("Report progress on an execution: 201 with the outcome once applied, or 202 to read it later",
     body=EventSchema, security="agent",
     answers={201: EventAppliedSchema, 202: EventAcceptedSchema, 404: ERROR, 409: ERROR, 422: ERROR})
@require_agent_submit
def post_event(execution_id: str) -> ResponseReturnValue:
    body = _event_schema.load(request.get_json() or {})
    agent_id = current_principal().id
    if body["agent_id"] != agent_id:
        raise Forbidden("agent_id must be the agent whose key signs the request.")
    accepted, = _ingestor().submit(agent_id, [Submission(execution_id, wire_body(body))], utcnow(),
                                   first_trip_checks(), awaited=True)
    return _answer(accepted)


@bp.post("/agents/<agent_id>/heartbeat")
@doc("The agent is alive, between executions too (no body needed)", body=HeartbeatSchema,
     body_required=False, security="agent", answers={201: EventAppliedSchema, 202: EventAcceptedSchema, 409: ERROR})
@require_agent_submit
def post_heartbeat(agent_id: str) -> ResponseReturnValue:
    """The agent is alive (between executions too): refreshes it, and goes into no execution's log."""
    body = _heartbeat_schema.load(request.get_json() if request.content_length else {})
    accepted, = _ingestor().submit(agent_id, [Submission(None, wire_body({**body, "event_type": "heartbeat"}))],
                                   utcnow(), first_trip_checks(), awaited=True)
    return _answer(accepted)


@bp.post("/events/batch")
@doc("Up to 1,000 events, accepted all together or not at all", body=BatchSchema, security="agent",
     answers={202: BatchAcceptedSchema, 404: ERROR, 409: ERROR})
@require_agent_submit
def post_batch() -> ResponseReturnValue:
    """Up to 1,000 events, any executions, accepted all together or not at all; answers 202 at once."""
    items = _batch_schema.load(request.get_json() or {})["events"]
    agent_id = current_principal().id
    strangers = [i for i, b in enumerate(items) if b["agent_id"] != agent_id]
    if strangers:
        raise Forbidden("agent_id must be the agent whose key signs the request.", indexes=strangers)
    accepted = _ingestor().submit(agent_id, [
        Submission(b.get("execution_id"), wire_body({k: v for k, v in b.items() if k != "execution_id"}))
        for b in items], utcnow(), first_trip_checks())
    results = [{"event_id": a.event_id, "execution_id": a.execution_id, "duplicate": a.duplicate,
                "status_url": f"/api/events/{a.event_id}"} for a in accepted]
    return jsonify({"accepted": len(results), "events": results}), 202


@bp.get("/events/<event_id>")
@doc("What became of an accepted event: 202 while pending, 200 once applied or rejected",
     security="agent_or_operator", answers={200: EventStateSchema, 202: EventStateSchema})
def get_event_outcome(event_id: str) -> ResponseReturnValue:
    """What became of an accepted event: 202 while pending, 200 with its outcome once applied or rejected.
    Only its agent, the owner of its execution and admins learn anything, even that it exists."""
    principal = current_principal()
    pending, record = _ingestor().lookup(event_id)
    with current_app.extensions["db"].reading() as session:
        if record is None:
            row = session.get(ExecutionEvent, event_id)
            if row is None:
                raise NotFound(f"Event {event_id} not found.", event_id=event_id)
            record = row.outcome or {"event_id": row.id, "execution_id": row.execution_id, "applied": True,
                                     "agent_id": row.agent_id}
        allowed = principal.is_admin or (principal.is_agent and principal.id == record.get("agent_id"))
        if not allowed and principal.is_user and record.get("execution_id"):
            ex = session.get(Execution, record["execution_id"])
            allowed = ex is not None and ex.owner_id == principal.id
    if not allowed:
        raise NotFound(f"Event {event_id} not found.", event_id=event_id)
    if pending:
        return jsonify({"event_id": event_id, "state": "pending"}), 202
    state = "applied" if record.get("applied", True) else "rejected"
    return jsonify({"event_id": event_id, "state": state,
                    "outcome": {k: v for k, v in record.items() if k != "applied"}}), 200
