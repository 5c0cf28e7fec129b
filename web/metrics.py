"""`GET /metrics` (Prometheus) and the count of every HTTP request by route and status.

`/metrics` is open, like most exporters: it names no person, token or payload (labels are route
names, shard numbers and states), and deployments keep it on the internal network (the proxy in
front of the web tier does not route it; deploy/README.md). A scrape adds up this host's processes
(orchestrator/metrics.py) and reads the stack's state once (orchestrator/ops.py).
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.typing import ResponseReturnValue

from orchestrator.metrics import CONTENT_TYPE, Snapshot, SnapshotCollector, gather, instruments
from orchestrator.ops import take_snapshot
from web.openapi import doc

bp = Blueprint("metrics", __name__)


def snapshot() -> Snapshot:
    """The stack's state now, with this app's database, Redis and settings."""
    return take_snapshot(current_app.extensions["db"], current_app.extensions["redis"], current_app.config["SETTINGS"])


@bp.get("/metrics")
@doc("Prometheus metrics (text exposition format)", security=None,
     answers={200: {"description": "The text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> ResponseReturnValue:
    return Response(gather([SnapshotCollector(snapshot)]), mimetype=CONTENT_TYPE)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _count(response: Response) -> Response:
    # The URL rule's endpoint, never the path: ids in paths would make every execution a new series.
    endpoint = request.endpoint or "unmatched"
    counters = instruments()
    counters.http_requests.labels(endpoint, request.method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None and request.headers.get("Upgrade", "").lower() != "websocket":
        counters.http_request_seconds.labels(endpoint).observe(time.perf_counter() - started)
    return response


def init_metrics(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_count)
    app.register_blueprint(bp)
