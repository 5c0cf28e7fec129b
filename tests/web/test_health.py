from __future__ import annotations

import time

import redis as redis_lib

from orchestrator.liveness import record_beat


def test_healthz_ok(client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    # No sweep yet on a freshly started stack: not known, and not held against it.
    assert resp.get_json() == {"status": "ok", "database": "ok", "redis": "ok", "dead_letters": 0,
                               "beat": "unknown"}


def test_healthz_beat_ok_after_a_recent_sweep(app, client, redis) -> None:
    settings = app.config["SETTINGS"]
    record_beat(redis, settings.redis_key_prefix, time.time() - settings.sweep_interval_seconds)
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok", "redis": "ok",
                                                 "dead_letters": 0, "beat": "ok"}


def test_healthz_degraded_when_beat_is_late(app, client, redis) -> None:
    settings = app.config["SETTINGS"]
    record_beat(redis, settings.redis_key_prefix, time.time() - 4 * settings.sweep_interval_seconds)
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "degraded", "database": "ok", "redis": "ok", "dead_letters": 0,
                               "beat": "late"}


def test_healthz_beat_late_when_no_sweep_ever_came(app, client) -> None:
    # The process has been up longer than three intervals and beat never swept: beat was never started.
    app.extensions["health_up_since"] = time.time() - 4 * app.config["SETTINGS"].sweep_interval_seconds
    body = client.get("/healthz").get_json()
    assert (body["status"], body["beat"]) == ("degraded", "late")


def test_healthz_reports_redis_down(app, client) -> None:
    app.extensions["redis"] = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json()["redis"] == "unavailable"


def test_unknown_route_has_the_json_error_shape(client) -> None:
    resp = client.get("/no/such/thing")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
