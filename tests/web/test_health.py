"""/healthz (liveness: the process answers) and /readyz (ready, degraded or down, with reasons).

The readiness tests use a key prefix of their own, so that the session's worker (whose heartbeat and
drains use the session's prefix) cannot make a stale heartbeat fresh or drain an old entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis as redis_lib

from orchestrator.db import Database
from orchestrator.events.dead_letters import DeadLetters
from orchestrator.events.protocol import Keys
from orchestrator.liveness import record_beat, record_worker
from orchestrator.settings import Settings
from tests.workers.helpers import own_key_prefix


@pytest.fixture
def isolated(migrated: Settings, db: Database) -> Iterator[tuple[Settings, redis_lib.Redis, object]]:
    from web.app import create_app

    with own_key_prefix(migrated, "readyz") as (settings, r):
        app = create_app(settings)
        app.config["TESTING"] = True
        yield settings, r, app
        app.extensions["db"].dispose()


def _age_the_process(app, settings: Settings) -> None:
    # Up for longer than three sweep intervals: a heartbeat that never came is now late, not unknown.
    app.extensions["health_up_since"] = time.time() - 4 * settings.sweep_interval_seconds


def _ready(app) -> tuple[int, dict]:
    resp = app.test_client().get("/readyz")
    return resp.status_code, resp.get_json()


def test_healthz_is_liveness_only(app, client) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    # Redis away: the process still lives, and a restart would not bring Redis back.
    app.extensions["redis"] = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    resp = client.get("/healthz")
    assert (resp.status_code, resp.get_json()) == (200, {"status": "ok"})


def test_readyz_ready_on_a_fresh_stack(isolated) -> None:
    _, _, app = isolated
    status, body = _ready(app)
    assert status == 200 and body["status"] == "ready", body
    checks = body["checks"]
    assert {k: c["status"] for k, c in checks.items()} == {
        "database": "ok", "redis": "ok", "worker": "unknown", "beat": "unknown", "backlog": "ok", "dead_letters": "ok"}
    assert all(c["reason"] for c in checks.values())


def test_readyz_ok_with_recent_heartbeats(isolated) -> None:
    settings, r, app = isolated
    _age_the_process(app, settings)
    record_worker(r, settings.redis_key_prefix, "w1@host")
    record_beat(r, settings.redis_key_prefix, time.time() - settings.sweep_interval_seconds)
    status, body = _ready(app)
    assert (status, body["status"]) == (200, "ready"), body
    assert body["checks"]["worker"]["alive"] == 1 and body["checks"]["beat"]["status"] == "ok"


def test_readyz_degraded_when_the_worker_heartbeat_is_stale(isolated) -> None:
    settings, r, app = isolated
    _age_the_process(app, settings)
    record_beat(r, settings.redis_key_prefix)
    record_worker(r, settings.redis_key_prefix, "w1@host", time.time() - 4 * settings.sweep_interval_seconds)
    status, body = _ready(app)
    assert (status, body["status"]) == (200, "degraded")
    worker = body["checks"]["worker"]
    assert worker["status"] == "degraded" and "not applied" in worker["reason"] and worker["alive"] == 0


def test_readyz_degraded_when_no_worker_ever_beat(isolated) -> None:
    settings, r, app = isolated
    _age_the_process(app, settings)
    record_beat(r, settings.redis_key_prefix)
    status, body = _ready(app)
    assert (status, body["checks"]["worker"]["status"], body["status"]) == (200, "degraded", "degraded")


def test_readyz_degraded_when_beat_is_late(isolated) -> None:
    settings, r, app = isolated
    _age_the_process(app, settings)
    record_worker(r, settings.redis_key_prefix, "w1@host")
    record_beat(r, settings.redis_key_prefix, time.time() - 4 * settings.sweep_interval_seconds)
    status, body = _ready(app)
    assert (status, body["status"], body["checks"]["beat"]["status"]) == (200, "degraded", "degraded")
    assert "no sweep" in body["checks"]["beat"]["reason"]


def test_readyz_beat_late_when_no_sweep_ever_came(isolated) -> None:
    settings, r, app = isolated
    _age_the_process(app, settings)
    record_worker(r, settings.redis_key_prefix, "w1@host")
    assert _ready(app)[1]["checks"]["beat"]["status"] == "degraded"


def test_readyz_degraded_when_a_shard_backlog_is_old(isolated) -> None:
    settings, r, app = isolated
    stuck = int((time.time() - settings.ready_backlog_seconds - 30) * 1000)
    r.xadd(Keys(settings.redis_key_prefix).stream(1), {"e": b"x"}, id=f"{stuck}-0")
    status, body = _ready(app)
    backlog = body["checks"]["backlog"]
    assert (status, body["status"], backlog["status"], backlog["shard"]) == (200, "degraded", "degraded", 1), body
    assert backlog["oldest_age_seconds"] >= settings.ready_backlog_seconds + 29 and backlog["entries"] == 1


def test_readyz_sees_a_retired_shards_backlog(isolated) -> None:
    """Events queued before INGEST_SHARDS was lowered wait on a shard no new event goes to: beat drains
    it, and readiness (and the ops view) still show it while it holds any."""
    settings, r, app = isolated
    retired = settings.ingest_shards + 5
    stuck = int((time.time() - settings.ready_backlog_seconds - 30) * 1000)
    r.xadd(Keys(settings.redis_key_prefix).stream(retired), {"e": b"x"}, id=f"{stuck}-0")
    backlog = _ready(app)[1]["checks"]["backlog"]
    assert (backlog["status"], backlog["shard"], backlog["entries"]) == ("degraded", retired, 1), backlog


def test_readyz_backlog_ok_while_entries_are_young(isolated) -> None:
    settings, r, app = isolated
    r.xadd(Keys(settings.redis_key_prefix).stream(1), {"e": b"x"})
    backlog = _ready(app)[1]["checks"]["backlog"]
    assert (backlog["status"], backlog["entries"]) == ("ok", 1)


def test_readyz_degraded_with_dead_letters(isolated) -> None:
    settings, r, app = isolated
    stream = Keys(settings.redis_key_prefix).stream(0)
    entry = r.xadd(stream, {"e": b"not an envelope"})
    DeadLetters(r, settings.redis_key_prefix).add(0, stream, entry, {b"e": b"not an envelope"}, None, "malformed", 1)
    status, body = _ready(app)
    assert (status, body["status"]) == (200, "degraded")
    assert body["checks"]["dead_letters"] == {"status": "degraded", "reason": "1 event(s) set aside for an operator",
                                              "count": 1}


def test_readyz_down_when_redis_is_unreachable(isolated) -> None:
    _, _, app = isolated
    app.extensions["redis"] = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    status, body = _ready(app)
    assert (status, body["status"], body["checks"]["redis"]["status"]) == (503, "down", "down")
    assert body["checks"]["database"]["status"] == "ok"


def test_readyz_down_when_the_database_is_unreachable(isolated) -> None:
    settings, _, app = isolated
    app.extensions["db"].dispose()
    app.extensions["db"] = Database(settings.replace(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    status, body = _ready(app)
    assert (status, body["status"], body["checks"]["database"]) == (503, "down",
                                                                    {"status": "down", "reason": "unreachable"})


def test_unknown_route_has_the_json_error_shape(client) -> None:
    resp = client.get("/no/such/thing")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
