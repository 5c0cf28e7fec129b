"""GET /healthz: is the database reachable, is Redis, is beat sweeping, has the event path set anything aside?

Unreachable database or Redis: 503 "unavailable". Dead letters waiting for an operator, or no sweep
for three intervals (`"beat": "late"`: beat is gone, so timeouts and stalled shards go unhandled):
200 "degraded". `"beat": "unknown"` until the first sweep of a freshly started stack counts as ok.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from orchestrator.events.dead_letters import DeadLetters
from orchestrator.liveness import beat_state, last_beat

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)

_UP_SINCE = "health_up_since"


def _note_start(state: BlueprintSetupState) -> None:
    # A missing beat key is only "late" once this process has been up as long as beat may take.
    state.app.extensions[_UP_SINCE] = time.time()


bp.record_once(_note_start)


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
    settings = current_app.config["SETTINGS"]
    try:
        r = current_app.extensions["redis"]
        r.ping()
        checks["redis"] = "ok"
        checks["dead_letters"] = DeadLetters(r, settings.redis_key_prefix).count()
        checks["beat"] = beat_state(last_beat(r, settings.redis_key_prefix), settings.sweep_interval_seconds,
                                    now=time.time(), up_since=current_app.extensions[_UP_SINCE])
    except Exception:
        log.exception("health check: redis")
        checks["redis"] = "unavailable"
    if checks["database"] != "ok" or checks["redis"] != "ok":
        return jsonify(status="unavailable", **checks), 503
    degraded = checks["dead_letters"] or checks["beat"] == "late"
    return jsonify(status="degraded" if degraded else "ok", **checks), 200
