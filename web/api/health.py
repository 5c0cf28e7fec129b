"""GET /healthz: is the database reachable, is Redis, has the event path set anything aside?

Unreachable database or Redis: 503 "unavailable". Dead letters waiting for an operator: 200
"degraded" (the path flows, but some events were not applied), with their count.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from orchestrator.events.dead_letters import DeadLetters

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks: dict[str, Any] = {}
    try:
        with current_app.extensions["db"].reading() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:
        log.exception("health check: database")
        checks["database"] = "unavailable"
    try:
        r = current_app.extensions["redis"]
        r.ping()
        checks["redis"] = "ok"
        checks["dead_letters"] = DeadLetters(r, current_app.config["SETTINGS"].redis_key_prefix).count()
    except Exception:
        log.exception("health check: redis")
        checks["redis"] = "unavailable"
    if checks["database"] != "ok" or checks["redis"] != "ok":
        return jsonify(status="unavailable", **checks), 503
    return jsonify(status="degraded" if checks["dead_letters"] else "ok", **checks), 200
