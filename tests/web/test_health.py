from __future__ import annotations

import redis as redis_lib


def test_healthz_ok(client) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok", "database": "ok", "redis": "ok", "dead_letters": 0}


def test_healthz_reports_redis_down(app, client) -> None:
    app.extensions["redis"] = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json()["redis"] == "unavailable"


def test_unknown_route_has_the_json_error_shape(client) -> None:
    resp = client.get("/no/such/thing")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
