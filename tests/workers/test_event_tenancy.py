"""Agents stay inside their tenant on the event path: they post only to executions they take part in,
their idempotency keys are theirs alone, and a key reused with another body is refused."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import event, func, select

from orchestrator.credentials import issue_credential
from orchestrator.events.protocol import Keys, shard_of
from orchestrator.holds import record_hold
from orchestrator.models import Agent, Execution, ExecutionEvent, ExecutionSubtask, utcnow
from tests.factories import make_agent
from tests.workers.helpers import Scene, claim, queued_execution

pytestmark = pytest.mark.integration


def post(live_server, scene: Scene, body: dict, execution_id: str | None = None) -> requests.Response:
    return requests.post(f"{live_server.url}/api/executions/{execution_id or scene.execution_id}/events",
                         json={"agent_id": scene.agent_id, **body},
                         auth=scene.auth, timeout=30)


def batch(live_server, scene: Scene, events: list[dict]) -> requests.Response:
    return requests.post(f"{live_server.url}/api/events/batch",
                         json={"events": [{"agent_id": scene.agent_id, **e} for e in events]},
                         auth=scene.auth, timeout=30)


def _log(db, execution_id: str) -> list[ExecutionEvent]:
    with db.reading() as s:
        return list(s.scalars(select(ExecutionEvent).where(ExecutionEvent.execution_id == execution_id)))


def test_an_agent_cannot_post_into_another_operators_execution(db, redis, migrated, live_server, worker) -> None:
    victim, intruder = queued_execution(db), queued_execution(db)
    claim(db, redis, migrated, victim, "task_0_a")
    claim(db, redis, migrated, intruder, "task_0_a")
    before = len(_log(db, victim.execution_id))
    for body in ({"event_type": "heartbeat", "message": "hello from elsewhere"},
                 {"event_type": "task_complete", "task_id": "task_0_a"}):
        resp = post(live_server, intruder, body, execution_id=victim.execution_id)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", resp.text
    resp = batch(live_server, intruder, [{"execution_id": intruder.execution_id, "event_type": "heartbeat"},
                                         {"execution_id": victim.execution_id, "event_type": "heartbeat"}])
    assert resp.status_code == 409 and resp.json()["error"]["details"]["refused"][0]["index"] == 1
    assert len(_log(db, victim.execution_id)) == before
    assert all(e.agent_id != intruder.agent_id for e in _log(db, victim.execution_id))
    shard = shard_of(victim.execution_id, migrated.ingest_shards)
    entries = redis.xrange(Keys(migrated.redis_key_prefix).stream(shard))
    assert not any(intruder.agent_id.encode() in fields[b"e"] for _, fields in entries)


def _second_agent(db, scene: Scene) -> Scene:
    """Another agent of the same operator."""
    with db.unit_of_work() as s:
        owner = s.get(Agent, scene.agent_id).owner_id
        other = make_agent(s, owner_id=owner)
        _, key = issue_credential(s, agent_id=other.id)
    return Scene(scene.owner_id, other.id, key, scene.execution_id, other.signing_secret)


def test_idempotency_keys_are_scoped_by_agent(db, redis, migrated, live_server, worker) -> None:
    first = queued_execution(db, n_subtasks=2)
    second = _second_agent(db, first)
    claim(db, redis, migrated, first, "task_0_a")
    claim(db, redis, migrated, second, "task_0_b")
    mine = post(live_server, first, {"event_type": "task_started", "task_id": "task_0_a", "idempotency_key": "k-1"})
    theirs = post(live_server, second, {"event_type": "task_started", "task_id": "task_0_b",
                                        "idempotency_key": "k-1"})
    assert mine.status_code == 201 and theirs.status_code == 201, (mine.text, theirs.text)
    assert mine.json()["event_id"] != theirs.json()["event_id"]
    assert "Idempotent-Replayed" not in theirs.headers
    # The same key with A's body, from B: still B's own (new) event, never A's outcome.
    copy = post(live_server, second, {"event_type": "task_started", "task_id": "task_0_a", "idempotency_key": "k-1"})
    assert copy.status_code in (409, 422) and mine.json()["event_id"] not in copy.text


def test_a_key_reused_with_another_body_is_refused(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db)
    claim(db, redis, migrated, scene, "task_0_a")
    body = {"event_type": "heartbeat", "message": "working", "idempotency_key": "k-2"}
    first = post(live_server, scene, body)
    again = post(live_server, scene, body)
    other = post(live_server, scene, {**body, "message": "something else"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["event_id"] == first.json()["event_id"] and again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    n = len(_log(db, scene.execution_id))
    # Within one batch too, and then none of the batch is accepted.
    resp = batch(live_server, scene, [
        {"execution_id": scene.execution_id, "event_type": "heartbeat", "message": "a", "idempotency_key": "k-3"},
        {"execution_id": scene.execution_id, "event_type": "heartbeat", "message": "b", "idempotency_key": "k-3"}])
    assert resp.status_code == 409 and resp.json()["error"]["details"]["refused"][0]["code"] == "idempotency_key_reused"
    resp = batch(live_server, scene, [
        {"execution_id": scene.execution_id, "event_type": "heartbeat", "message": "fresh"},
        {"execution_id": scene.execution_id, **body, "message": "changed"}])
    assert resp.status_code == 409
    assert len(_log(db, scene.execution_id)) == n


def test_liveness_heartbeat_goes_into_no_execution_log(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db)
    url = f"{live_server.url}/api/agents/{scene.agent_id}/heartbeat"
    resp = requests.post(url, json={"message": "idle, waiting for work"},
                         auth=scene.auth, timeout=30)
    assert resp.status_code == 201, resp.text
    assert resp.json()["execution_id"] is None
    with db.reading() as s:
        assert s.get(Agent, scene.agent_id).last_heartbeat is not None
        assert s.scalar(select(func.count()).select_from(ExecutionEvent).where(
            ExecutionEvent.agent_id == scene.agent_id)) == 0
    other = queued_execution(db)
    resp = requests.post(url, json={}, auth=other.auth, timeout=30)
    assert resp.status_code == 403
    resp = batch(live_server, scene, [{"event_type": "heartbeat"}])
    assert resp.status_code == 202 and resp.json()["events"][0]["execution_id"] is None


def test_a_batch_checks_cold_holds_with_one_query(app, client, db, redis, migrated) -> None:
    scene = queued_execution(db)
    # The same agent holds one subtask in each of four executions.
    executions = [scene.execution_id]
    for _ in range(3):
        other = queued_execution(db)
        with db.unit_of_work() as s:
            s.get(Execution, other.execution_id).owner_id = scene.owner_id
            sub = s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == other.execution_id,
                                                          ExecutionSubtask.plan_subtask_id == "task_0_a"))
            sub.status, sub.agent_id, sub.claimed_at = "RUNNING", scene.agent_id, utcnow()
        executions.append(other.execution_id)
    claim(db, redis, migrated, scene, "task_0_a")
    for key in redis.scan_iter(f"{migrated.redis_key_prefix}holds:*"):
        redis.delete(key)
    for key in redis.scan_iter(f"{migrated.redis_key_prefix}members:*"):
        redis.delete(key)
    headers = {"Authorization": f"Bearer {scene.agent_key}"}
    events = [{"agent_id": scene.agent_id, "execution_id": e, "event_type": "task_started", "task_id": "task_0_a",
               "message": f"{i}"} for e in executions for i in range(10)]
    client.get("/api/events/evt_none", headers=headers)  # the token is cached from here on
    statements: list[str] = []
    db_ext = app.extensions["db"]
    engines = {db_ext.engine, db_ext._read_engine}

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        cold = client.post("/api/events/batch", json={"events": events}, headers=headers)
        warm_from = len(statements)
        for execution_id in executions:  # what the poll mirrors into Redis when it hands out work
            record_hold(redis, migrated.redis_key_prefix, execution_id, "task_0_a", scene.agent_id)
        warm = client.post("/api/events/batch", json={"events": events}, headers=headers)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    assert cold.status_code == 202 and warm.status_code == 202, (cold.get_json(), warm.get_json())
    assert len(statements[:warm_from]) <= 2, statements  # who takes part, what they hold: one query each
    assert statements[warm_from:] == []  # warm caches: the database is not asked at all


def test_only_its_agent_its_owner_and_admins_learn_of_an_event(app, client, db, redis, migrated) -> None:
    from orchestrator.events.protocol import pending_outcome
    from orchestrator.ids import event_id
    from tests.factories import make_user_with_token

    mine, other = queued_execution(db), queued_execution(db)
    with db.unit_of_work() as s:
        _, stranger_token = make_user_with_token(s)
        owner_token = issue_credential(s, user_id=mine.owner_id)[1]
    eid = event_id()
    redis.set(Keys(migrated.redis_key_prefix).outcome(eid), pending_outcome(eid, mine.execution_id, mine.agent_id))

    def status(token: str) -> int:
        return client.get(f"/api/events/{eid}", headers={"Authorization": f"Bearer {token}"}).status_code

    assert status(mine.agent_key) == 202 and status(owner_token) == 202
    assert status(other.agent_key) == 404 and status(stranger_token) == 404  # not even "it exists"
