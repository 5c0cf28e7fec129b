"""Admin operations on the event path: the dead letters (events the workers could not apply)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.events.dead_letters import DeadLetters
from web.auth import require_admin
from web.openapi import doc
from web.schemas.answers import DeadLetterDroppedSchema, DeadLetterListSchema, DeadLetterRequeuedSchema

bp = Blueprint("admin", __name__, url_prefix="/api/admin")


def _store() -> DeadLetters:
    return DeadLetters(current_app.extensions["redis"], current_app.config["SETTINGS"].redis_key_prefix)


@bp.get("/dead-letters")
@doc("Events the workers could not apply, set aside so their shard moves on", security="admin",
     parameters=[{"in": "query", "name": "limit",
                  "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
     answers={200: DeadLetterListSchema})
@require_admin
def list_dead_letters() -> ResponseReturnValue:
    limit = min(max(request.args.get("limit", 100, type=int) or 100, 1), 1000)
    store = _store()
    return jsonify({"dead_letters": [dl.to_dict() for dl in store.list(limit)], "total": store.count()})


@bp.post("/dead-letters/<ident>/requeue")
@doc("Queue a dead letter again", security="admin", answers={202: DeadLetterRequeuedSchema})
@require_admin
def requeue(ident: str) -> ResponseReturnValue:
    ingestor = current_app.extensions["ingestor"]
    dl = _store().requeue(ident, ingestor.shards, ingestor.trigger)
    return jsonify({"requeued": dl.to_dict()}), 202


@bp.delete("/dead-letters/<ident>")
@doc("Drop a dead letter", security="admin", answers={200: DeadLetterDroppedSchema})
@require_admin
def drop(ident: str) -> ResponseReturnValue:
    return jsonify({"dropped": _store().drop(ident).to_dict()})
