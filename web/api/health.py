"""`GET /healthz`, liveness: the process answers. `GET /readyz`, readiness: can the stack do its work?

`/healthz` touches nothing but the process: a liveness probe that failed with the database would
have every web process restarted for an outage that a restart cannot cure. `/readyz` says "ready",
"degraded" (200: a worker, beat, a shard or dead letters need an operator) or "down" (503: the
database or Redis is unreachable), each check with its reason (orchestrator/readiness.py).
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from orchestrator.readiness import assess
from web.metrics import snapshot
from web.openapi import doc
from web.schemas.answers import FreeFormSchema

bp = Blueprint("health", __name__)

_UP_SINCE = "health_up_since"


def _note_start(state: BlueprintSetupState) -> None:
    # A missing heartbeat is only "late" once this process has been up as long as one may take.
    state.app.extensions[_UP_SINCE] = time.time()


bp.record_once(_note_start)


@bp.get("/healthz")
@doc("Liveness: the process answers", security=None, answers={200: FreeFormSchema})
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok"), 200


@bp.get("/readyz")
@doc("Readiness: ready or degraded (200), down (503: the database or Redis unreachable), each check "
     "with its reason", security=None, answers={200: FreeFormSchema, 503: FreeFormSchema})
def readyz() -> ResponseReturnValue:
    ext = current_app.extensions
    result = assess(ext["db"], ext["redis"], current_app.config["SETTINGS"], snapshot, up_since=ext[_UP_SINCE])
    return jsonify(result.to_dict()), 503 if result.status == "down" else 200
