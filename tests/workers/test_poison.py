"""Poison events never hold a shard: whatever cannot be applied is isolated, tried a few times and set
aside in the dead-letter stream, while every other tenant's events on that shard apply.

The poison is written straight into the shard's stream, as an older front end (or a bug in this one)
would have queued it: the edge refuses all of these today (tests/web/test_hostile_input.py).
"""

from __future__ import annotations

import json
import secrets
import time

import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from orchestrator.events.dead_letters import DeadLetters
from orchestrator.events.drain import ShardDrainer
from orchestrator.events.protocol import GROUP, Keys, read_outcome, shard_of
from orchestrator.ids import event_id
from orchestrator.models import ExecutionEvent, ExecutionSubtask
from tests.workers.helpers import claim, execution_ids_on_shard, own_key_prefix, queued_execution

SHARD = 1  # of the default INGEST_SHARDS (2)


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"d": value}
    return value


# What each poison carries in its body; `None` marks an entry that is not even an envelope.
POISON: dict[str, dict | bytes] = {
    "nul_in_message": {"event_type": "heartbeat", "message": "poison\u0000"},
    "nul_in_output_key": {"event_type": "heartbeat", "output_data": {"k\u0000": 1}},
    "year_one_timestamp": {"event_type": "heartbeat", "agent_timestamp": "0001-01-01T00:00:00+01:00"},
    "int_past_int64": {"event_type": "heartbeat", "output_data": {"n": 2**70}},
    "nested_300_deep": {"event_type": "heartbeat", "output_data": _nested(300)},
    "no_event_type": {"message": "what am I"},
    "lone_surrogate": b'{"id": "evt_x", "execution_id": "e", "agent_id": "a", "received_at": "2026-01-01T00:00:00Z",'
                      b' "body": {"event_type": "heartbeat", "message": "\\ud800"}}',
    "not_json": b"{oops",
}
# Refused by the worker on every database (the others may apply harmlessly on SQLite).
ALWAYS_POISON = {"year_one_timestamp", "no_event_type", "lone_surrogate", "not_json"}


def _envelope(eid: str, execution_id: str, agent_id: str, body: dict) -> bytes:
    return json.dumps({"id": eid, "execution_id": execution_id, "agent_id": agent_id,
                       "received_at": "2026-02-11T16:09:45Z", "body": body}).encode()


def _drain_until_empty(drainer: ShardDrainer, stream: str, shard: int, seconds: float = 20) -> None:
    """Drain until the stream is empty (the session's Celery worker, when running, may hold the lease)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not drainer.drain(shard).lease_taken:
            time.sleep(0.05)
        if drainer.redis.xlen(stream) == 0:
            return
    raise AssertionError(f"shard {shard} still holds {drainer.redis.xlen(stream)} entries")


def _applied(db, ids: list[str]) -> set[str]:
    with db.reading() as s:
        return set(s.scalars(select(ExecutionEvent.id).where(ExecutionEvent.id.in_(ids))))


@pytest.fixture
def tenants(db, redis, migrated):
    """Three tenants whose executions share one shard; each agent holds its first subtask."""
    ids = execution_ids_on_shard(SHARD, migrated.ingest_shards, 3)
    scenes = [queued_execution(db, execution_id=i, n_subtasks=2) for i in ids]
    for scene in scenes:
        claim(db, redis, migrated, scene, "task_0_a")
    return scenes


@pytest.mark.parametrize("kind", sorted(POISON))
def test_poison_is_set_aside_and_every_good_event_applies(kind, db, redis, migrated, tenants) -> None:
    keys = Keys(migrated.redis_key_prefix)
    stream = keys.stream(SHARD)
    a, b, c = tenants
    good: list[str] = []

    def add_good(scene, body: dict) -> None:
        eid = event_id()
        good.append(eid)
        redis.xadd(stream, {"e": _envelope(eid, scene.execution_id, scene.agent_id, body)})

    add_good(b, {"event_type": "heartbeat", "message": "b alive"})
    add_good(c, {"event_type": "task_started", "task_id": "task_0_a"})
    poison_id = event_id()
    poison = POISON[kind]
    redis.xadd(stream, {"e": poison if isinstance(poison, bytes) else _envelope(poison_id, a.execution_id,
                                                                               a.agent_id, poison)})
    add_good(b, {"event_type": "task_complete", "task_id": "task_0_a"})
    add_good(c, {"event_type": "heartbeat", "message": "c alive"})

    drainer = ShardDrainer(db, redis, migrated.redis_key_prefix, batch_size=50, lease_seconds=5)
    _drain_until_empty(drainer, stream, SHARD)

    assert _applied(db, good) == set(good)  # nothing lost, nothing of another tenant held back
    assert redis.xpending(stream, GROUP)["pending"] == 0
    with db.reading() as s:
        done = s.scalar(select(ExecutionSubtask.status).where(ExecutionSubtask.execution_id == b.execution_id,
                                                               ExecutionSubtask.plan_subtask_id == "task_0_a"))
        assert done == "COMPLETE"
    dead = DeadLetters(redis, migrated.redis_key_prefix)
    applied_poison = bool(_applied(db, [poison_id]))
    if kind in ALWAYS_POISON:
        assert not applied_poison
    assert applied_poison or dead.count() == 1, "the poison must be applied or set aside"
    if dead.count():
        letter = dead.list()[0]
        assert letter.reason and letter.payload
        if not isinstance(poison, bytes):
            # The waiting agent (or GET /api/events/{id}) is told it was rejected, generically.
            outcome = json.loads(redis.get(keys.outcome(poison_id)))
            assert outcome["applied"] is False and outcome["error"]["code"] == "rejected"
            assert letter.deliveries == drainer.max_deliveries and letter.event_id == poison_id

    # The shard flows: the next event is applied by the next drain.
    add_good(a, {"event_type": "task_complete", "task_id": "task_0_a"})
    stats = drainer.drain(SHARD)
    assert stats.applied == 1 and _applied(db, good) == set(good)


def test_a_poison_entry_does_not_delay_the_next_post_on_its_shard(db, redis, migrated, live_server, worker,
                                                                  tenants) -> None:
    """With the real worker: after a poison entry, another tenant's POST on the same shard still gets
    its 201 (applied within the reply wait), and the poison ends in the dead-letter stream."""
    import requests

    a, b, _ = tenants
    stream = Keys(migrated.redis_key_prefix).stream(SHARD)
    redis.xadd(stream, {"e": _envelope(event_id(), a.execution_id, a.agent_id, POISON["no_event_type"])})
    resp = requests.post(f"{live_server.url}/api/executions/{b.execution_id}/events",
                         json={"agent_id": b.agent_id, "event_type": "task_complete", "task_id": "task_0_a"},
                         auth=b.auth, timeout=30)
    assert resp.status_code == 201, resp.text
    dead = DeadLetters(redis, migrated.redis_key_prefix)
    for _ in range(100):  # the poison's further deliveries come with later drains (beat's, here ours)
        if dead.count() == 1 and redis.xlen(stream) == 0:
            break
        live_server.app.extensions["celery"].send_task("workers.tasks.drain", args=[SHARD])
        time.sleep(0.1)
    assert dead.count() == 1 and redis.xlen(stream) == 0
    ready = requests.get(f"{live_server.url}/readyz", timeout=10).json()
    assert ready["status"] == "degraded" and ready["checks"]["dead_letters"]["count"] == 1


# -- any JSON an agent may send: never a 5xx, never a stalled shard ---------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_event = st.fixed_dictionaries({
    "event_type": st.sampled_from(["heartbeat", "task_started", "task_complete", "task_error"]),
}, optional={
    "task_id": st.sampled_from(["task_0_a", "task_0_b", "nope"]) | st.text(max_size=10),
    "message": st.text(max_size=40),
    "error_message": st.text(max_size=40),
    "output_data": st.dictionaries(st.text(max_size=8), _json, max_size=4) | _json,
    "agent_timestamp": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | st.text(max_size=30),
    "idempotency_key": st.text(min_size=1, max_size=12),
    "suggestions": st.lists(st.text(max_size=10), max_size=3) | _json,
    "blocking": st.booleans() | _json,
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(_event, min_size=1, max_size=4))
def test_any_event_body_answers_4xx_or_2xx_and_its_shard_drains(bodies, app, db, redis, migrated, tenants) -> None:
    app.config["SETTINGS"] = app.config["SETTINGS"].replace(ingest_reply_wait_ms=0)
    client = app.test_client()
    scene = tenants[0]
    headers = {"Authorization": f"Bearer {scene.agent_key}", "Content-Type": "application/json"}
    for body in bodies:
        body = {**body, "agent_id": scene.agent_id}
        one = client.post(f"/api/executions/{scene.execution_id}/events", data=json.dumps(body), headers=headers)
        assert one.status_code < 500, one.get_data(as_text=True)
        batch = json.dumps({"events": [{**body, "execution_id": scene.execution_id}]})
        many = client.post("/api/events/batch", data=batch, headers=headers)
        assert many.status_code < 500, many.get_data(as_text=True)
    drainer = ShardDrainer(db, redis, migrated.redis_key_prefix, batch_size=50, lease_seconds=5)
    shard = shard_of(scene.execution_id, migrated.ingest_shards)
    _drain_until_empty(drainer, Keys(migrated.redis_key_prefix).stream(shard), shard)


@pytest.fixture
def isolated(migrated, redis):
    """Settings with a key prefix (and so a Celery queue) of their own: the session's worker, if one
    runs, never drains what a requeue puts back, so the test sees exactly what the requeue did."""
    with own_key_prefix(migrated, "orchdl") as (settings, _):
        yield settings


def test_dead_letters_cli_and_admin_api(db, redis, isolated, tenants) -> None:
    from click.testing import CliRunner

    from cli.main import main
    from orchestrator.credentials import issue_credential
    from tests.conftest import settings_env
    from tests.factories import make_user
    from web.app import create_app

    migrated = isolated
    app = create_app(migrated)
    client = app.test_client()
    a = tenants[0]
    keys = Keys(migrated.redis_key_prefix)
    stream = keys.stream(SHARD)
    ids = [event_id() for _ in range(3)]
    for eid in ids:
        redis.xadd(stream, {"e": _envelope(eid, a.execution_id, a.agent_id, POISON["no_event_type"])})
    _drain_until_empty(ShardDrainer(db, redis, migrated.redis_key_prefix, batch_size=50, lease_seconds=5),
                       stream, SHARD)
    with db.unit_of_work() as s:
        admin = make_user(s, f"admin_{secrets.token_hex(2)}", is_admin=True)
        plain = make_user(s)
        _, admin_token = issue_credential(s, user_id=admin.id)
        _, plain_token = issue_credential(s, user_id=plain.id)
    as_admin = {"Authorization": f"Bearer {admin_token}"}
    assert client.get("/api/admin/dead-letters", headers={"Authorization": f"Bearer {plain_token}"}).status_code == 404
    assert client.get("/api/admin/dead-letters", headers={"Authorization": f"Bearer {a.agent_key}"}).status_code == 404
    listed = client.get("/api/admin/dead-letters", headers=as_admin).get_json()
    assert listed["total"] == 3 and [d["event_id"] for d in listed["dead_letters"]] == ids
    assert "payload" not in listed["dead_letters"][0]  # it may hold personal data
    assert client.delete(f"/api/admin/dead-letters/{ids[0]}", headers=as_admin).status_code == 200
    assert client.delete(f"/api/admin/dead-letters/{ids[0]}", headers=as_admin).status_code == 404
    assert client.post(f"/api/admin/dead-letters/{ids[1]}/requeue", headers=as_admin).status_code == 202
    assert redis.xlen(stream) == 1 and read_outcome(redis.get(keys.outcome(ids[1])))[0]

    runner = CliRunner(env=settings_env(migrated))
    out = runner.invoke(main, ["events", "dead-letters", "list"])
    assert out.exit_code == 0 and ids[2] in out.output and ids[1] not in out.output
    out = runner.invoke(main, ["events", "dead-letters", "requeue", ids[2]])
    assert out.exit_code == 0 and redis.xlen(stream) == 2
    out = runner.invoke(main, ["events", "dead-letters", "drop", "evt_unknown"])
    assert out.exit_code == 1 and "No dead letter" in out.output
    out = runner.invoke(main, ["events", "dead-letters"])
    assert out.exit_code == 0
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(ExecutionEvent).where(ExecutionEvent.id.in_(ids))) == 0
    app.extensions["db"].dispose()


class _DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("exc, unavailable", [
    (OperationalError("SELECT 1", {}, _DriverError("server closed the connection", "08006")), True),
    (OperationalError("SELECT 1", {}, _DriverError("no such table: executions")), True),
    (PoolTimeout("QueuePool limit reached"), True),
    (redis_lib.ConnectionError("refused"), True),
    (OperationalError("INSERT", {}, _DriverError("index row size exceeds btree maximum", "54000")), False),
    (DataError("INSERT", {}, _DriverError("invalid byte sequence: 0x00", "22021")), False),
    (OverflowError("date value out of range"), False),
    (KeyError("event_type"), False),
])
def test_only_failures_that_blame_no_entry_hold_a_batch_back(exc, unavailable) -> None:
    """Unreachable services hold the batch back (nothing is set aside); anything an entry can cause
    is isolated and may end in the dead-letter stream."""
    from orchestrator.events.drain import is_unavailable

    assert is_unavailable(exc) is unavailable
