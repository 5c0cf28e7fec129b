"""The event path end to end: real HTTP, Redis streams, a Celery worker and the database."""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import func, select

from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask
from tests.workers.helpers import claim, queued_execution

pytestmark = pytest.mark.integration


def post(live_server, scene, body: dict, **kw) -> requests.Response:
    body = {"agent_id": scene.agent_id, **body}
    return requests.post(f"{live_server.url}/api/executions/{scene.execution_id}/events", json=body,
                         auth=scene.auth, timeout=30, **kw)


def test_complete_every_subtask_completes_the_execution(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_tasks=1, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    resp = post(live_server, scene, {"event_type": "task_started", "task_id": "task_0_a", "status": "running"})
    assert resp.status_code == 201, resp.text
    resp = post(live_server, scene, {
        "agent_timestamp": "2026-02-11T16:09:45Z", "event_type": "task_complete", "task_id": "task_0_a",
        "status": "success", "output_data": {"email_sent_to": "carol@x"}, "message": "Email sent."})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert set(out) >= {"event_id", "execution_id", "recorded_at", "next_task_id", "next_action", "status_message"}
    assert (out["next_task_id"], out["next_action"], out["status"]) == ("task_0_b", "send_email", "RUNNING")

    claim(db, redis, migrated, scene, "task_0_b")
    resp = post(live_server, scene, {"event_type": "subtask_complete", "task_id": "task_0_b", "status": "success"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "COMPLETED" and resp.json()["next_task_id"] is None

    with db.reading() as s:
        ex = s.get(Execution, scene.execution_id)
        assert (ex.status, ex.tasks_completed, ex.tasks_total) == ("COMPLETED", 1, 1)
        assert ex.completed_at is not None
        types = s.scalars(select(ExecutionEvent.event_type).where(ExecutionEvent.execution_id == ex.id)).all()
        assert types.count("task_complete") == 1 and types.count("status_change") == 1
        assert s.get(ExecutionEvent, out["event_id"]).agent_timestamp.isoformat() == "2026-02-11T16:09:45+00:00"


def test_duplicate_event_is_applied_once(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    body = {"event_type": "task_complete", "task_id": "task_0_a", "idempotency_key": "k-1"}
    first = post(live_server, scene, body)
    second = post(live_server, scene, body)
    assert first.status_code == 201 and second.status_code == 201, (first.text, second.text)
    assert first.json()["event_id"] == second.json()["event_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    # Without a key, the same content at the same agent time is the same event...
    beat = {"event_type": "heartbeat", "message": "alive", "agent_timestamp": "2026-02-11T16:09:45Z"}
    third, fourth = post(live_server, scene, beat), post(live_server, scene, beat)
    assert third.json()["event_id"] == fourth.json()["event_id"]
    # ...but without the agent's time, identical reports are two events.
    fifth = post(live_server, scene, {"event_type": "heartbeat", "message": "alive"})
    sixth = post(live_server, scene, {"event_type": "heartbeat", "message": "alive"})
    assert fifth.json()["event_id"] != sixth.json()["event_id"]
    with db.reading() as s:
        n = s.scalar(select(func.count()).select_from(ExecutionEvent).where(
            ExecutionEvent.execution_id == scene.execution_id, ExecutionEvent.source == "agent"))
        assert n == 4
        sub = s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                       ExecutionSubtask.plan_subtask_id == "task_0_a"))
        assert sub.status == "COMPLETE"


def test_errors_retry_then_exhaust(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=1, retry_policy={"max_attempts": 2, "backoff": "fixed",
                                                             "backoff_seconds": 0})
    claim(db, redis, migrated, scene, "task_0_a")
    resp = post(live_server, scene, {"event_type": "task_error", "task_id": "task_0_a", "error_type": "timeout",
                                     "error_message": "SMTP timed out"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["retry_scheduled"] is True and resp.json()["attempt"] == 2
    assert resp.json()["status"] == "RUNNING"
    claim(db, redis, migrated, scene, "task_0_a")
    resp = post(live_server, scene, {"event_type": "task_error", "task_id": "task_0_a", "error_type": "timeout",
                                     "error_message": "SMTP timed out"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "FAILED" and resp.json()["attempts_exhausted"] is True
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "FAILED"


def test_blocking_error_blocks_with_options(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    resp = post(live_server, scene, {
        "event_type": "task_error", "task_id": "task_0_a", "status": "error",
        "error_type": "external_dependency_blocked", "error_message": "Email bounced.",
        "human_review_required": True, "suggestions": ["Call Carol"], "blocking": True,
        "next_step_options": ["approve_phone_call"]})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert out["status"] == "BLOCKED" and out["human_review_required"] is True
    assert out["escalated_to"] == scene.owner_id
    assert out["next_step_options"][0] == "approve_phone_call" and "skip_task" in out["next_step_options"]


def test_bad_events_are_refused_before_the_queue(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    outsider = post(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"})
    assert outsider.status_code == 404  # the agent takes no part in the execution yet
    claim(db, redis, migrated, scene, "task_0_a")
    not_held = post(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_b"})
    assert not_held.status_code == 409 and not_held.json()["error"]["code"] == "not_holder"
    invalid = post(live_server, scene, {"event_type": "task_exploded", "task_id": "task_0_a"})
    assert invalid.status_code == 422 and "event_type" in invalid.json()["error"]["details"]
    no_task = post(live_server, scene, {"event_type": "task_complete"})
    assert no_task.status_code == 422
    other = post(live_server, scene, {"event_type": "heartbeat", "agent_id": "someone_else"})
    assert other.status_code == 403
    nokey = requests.post(f"{live_server.url}/api/executions/{scene.execution_id}/events", json={}, timeout=10)
    assert nokey.status_code == 401
    garbage = requests.post(f"{live_server.url}/api/executions/{scene.execution_id}/events", data="{not json",
                            headers={"Content-Type": "application/json"}, auth=scene.auth, timeout=10)
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "bad_request"
    assert "Traceback" not in garbage.text


def test_slow_apply_answers_202_with_a_status_url(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    settings = live_server.app.config["SETTINGS"]
    live_server.app.config["SETTINGS"] = settings.replace(ingest_reply_wait_ms=0)
    try:
        resp = post(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"})
    finally:
        live_server.app.config["SETTINGS"] = settings
    assert resp.status_code == 202, resp.text
    url = live_server.url + resp.json()["status_url"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = requests.get(url, auth=scene.auth, timeout=10)
        if got.status_code == 200:
            break
        assert got.status_code == 202
        time.sleep(0.1)
    assert got.json()["state"] == "applied" and got.json()["outcome"]["next_task_id"] == "task_0_b"


def test_batch_of_events(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=3)
    claim(db, redis, migrated, scene, "task_0_a")
    events = [{"execution_id": scene.execution_id, "agent_id": scene.agent_id, "event_type": "heartbeat",
               "message": f"beat {i}"} for i in range(50)]
    events.append({"execution_id": scene.execution_id, "agent_id": scene.agent_id, "event_type": "task_complete",
                   "task_id": "task_0_a"})
    resp = requests.post(f"{live_server.url}/api/events/batch", json={"events": events},
                         auth=scene.auth, timeout=30)
    assert resp.status_code == 202, resp.text
    assert resp.json()["accepted"] == 51
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with db.reading() as s:
            n = s.scalar(select(func.count()).select_from(ExecutionEvent).where(
                ExecutionEvent.execution_id == scene.execution_id, ExecutionEvent.source == "agent"))
        if n == 51:
            break
        time.sleep(0.1)
    assert n == 51
    too_many = requests.post(f"{live_server.url}/api/events/batch", json={"events": events * 20},
                             auth=scene.auth, timeout=30)
    assert too_many.status_code == 422


def test_redis_down_is_a_clean_503(db, app, client) -> None:
    import redis as redis_lib

    from orchestrator.credentials import issue_credential
    from tests.factories import make_agent

    with db.unit_of_work() as s:
        agent = make_agent(s)
        _, key = issue_credential(s, agent_id=agent.id)
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    app.extensions["redis"] = dead
    app.extensions["ingestor"].redis = dead
    app.extensions["ingestor"].__post_init__()
    resp = client.post("/api/executions/exec_x/events", json={"agent_id": agent.id, "event_type": "heartbeat"},
                       headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "unavailable" and "Traceback" not in resp.get_data(as_text=True)


def test_a_batch_stores_outcomes_and_pushes_no_reply(db, redis, migrated, live_server, worker) -> None:
    """Nobody waits on a batch's events: the worker stores their outcomes for GET /api/events/{id}
    and leaves no reply list behind (a POST of one event, which waits, gets its reply: 201)."""
    from orchestrator.events.protocol import Keys, read_outcome

    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    events = [{"agent_id": scene.agent_id, "execution_id": scene.execution_id, "event_type": "heartbeat",
               "message": f"beat {i}"} for i in range(5)]
    resp = requests.post(f"{live_server.url}/api/events/batch", json={"events": events},
                         auth=scene.auth, timeout=30)
    assert resp.status_code == 202, resp.text
    keys = Keys(migrated.redis_key_prefix)
    ids = [e["event_id"] for e in resp.json()["events"]]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = [read_outcome(redis.get(keys.outcome(eid))) for eid in ids]
        if all(not pending and record for pending, record in records):
            break
        time.sleep(0.05)
    assert all(record and record["applied"] for _, record in records), records
    assert [redis.exists(keys.reply(eid)) for eid in ids] == [0] * 5
    single = post(live_server, scene, {"event_type": "heartbeat", "message": "one"})
    assert single.status_code == 201, single.text


def test_a_broker_that_fails_after_the_events_were_accepted_is_no_error(db, app, client, redis, migrated,
                                                                       monkeypatch, caplog) -> None:
    """Redis going down between the accept and Celery's send_task: the event is in its stream, so the
    agent hears it was accepted (beat's sweep drains the shard), never a 500."""
    import kombu.exceptions

    from orchestrator.events.protocol import Keys, shard_of

    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")

    def broker_down(*_args, **_kw):
        raise kombu.exceptions.OperationalError("Connection closed by server.")

    monkeypatch.setattr(app.extensions["celery"], "send_task", broker_down)
    stream = Keys(migrated.redis_key_prefix).stream(shard_of(scene.execution_id, migrated.ingest_shards))
    before = redis.xlen(stream)
    resp = client.post(f"/api/executions/{scene.execution_id}/events",
                       json={"agent_id": scene.agent_id, "event_type": "heartbeat", "task_id": "task_0_a"},
                       headers={"Authorization": f"Bearer {scene.agent_key}"})
    assert resp.status_code == 202, resp.get_json()
    assert redis.xlen(stream) == before + 1
    assert "not queued" in caplog.text and "beat's sweep drains it" in caplog.text
