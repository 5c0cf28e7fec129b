"""GET /api/agents/{id}/work through the Flask test client: the guide's answers, auth, after-commit effects."""

from __future__ import annotations

import logging
import socket

import orjson
import pytest
import redis as redis_lib
from sqlalchemy import select

from orchestrator.credentials import issue_credential
from orchestrator.holds import holder
from orchestrator.models import Agent, Execution, ExecutionSubtask, utcnow
from orchestrator.publish import channel
from orchestrator.scheduling import claim_work
from tests.factories import make_agent, make_user_with_token
from tests.workers.helpers import Scene, queued_execution
from web.api import work as work_api

GUIDE_KEYS = ["work_available", "execution_id", "plan_id", "next_task", "force_pause", "force_cancel"]
NEXT_TASK_KEYS = {"task_id", "title", "action", "params", "timeout_hours", "retry_policy", "context", "attempt",
                  "max_attempts"}


@pytest.fixture
def scene(db) -> Scene:
    return queued_execution(db, n_subtasks=2)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def poll(client, scene: Scene, query: str = "", key: str | None = None):
    return client.get(f"/api/agents/{scene.agent_id}/work{query}", headers=bearer(key or scene.agent_key))


def acknowledge(db, scene: Scene, subtask_id: str) -> None:
    """As the worker does when it applies the agent's `task_started`: the claim is no longer answered again."""
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:{subtask_id}").acknowledged_at = utcnow()


def test_claim_answers_the_guides_json_and_records_the_hold(client, scene, redis, migrated, caplog) -> None:
    sub = redis.pubsub()
    sub.subscribe(channel(migrated.redis_key_prefix))
    sub.get_message(timeout=1)  # the subscribe confirmation
    with caplog.at_level(logging.INFO, logger="orchestrator.state_machine"):
        resp = poll(client, scene, "?supported_actions=send_email,make_phone_call")
    assert resp.status_code == 200
    body = resp.get_json()
    assert list(body) == GUIDE_KEYS  # the guide's keys, in the guide's order
    assert set(body["next_task"]) == NEXT_TASK_KEYS
    assert body["work_available"] is True and body["execution_id"] == scene.execution_id
    assert body["next_task"]["task_id"] == "task_0_a" and body["next_task"]["action"] == "send_email"
    assert set(body["next_task"]["context"]) == {"plan_goal", "previous_tasks", "upcoming_tasks"}
    assert (body["force_pause"], body["force_cancel"]) == (False, False)
    # After the commit: the hold in Redis (the event front end checks it), the stream, the log line.
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") == scene.agent_id
    published = [orjson.loads(m["data"]) for m in (sub.get_message(timeout=2) for _ in range(2)) if m]
    assert [(m["type"], m["status"]) for m in published] == [("event", "running"), ("execution_update", "RUNNING")]
    assert all("owner_id" in m for m in published)  # the stream's per-owner filter needs it
    sub.close()
    assert f"Execution {scene.execution_id} transitioned: QUEUED -> RUNNING" in caplog.text


def test_nothing_to_do_is_204_with_an_empty_body(client, scene, db) -> None:
    assert poll(client, scene, "?supported_actions=make_phone_call").status_code == 204
    assert poll(client, scene).status_code == 200  # task_0_a
    acknowledge(db, scene, "task_0_a")
    resp = poll(client, scene)  # task_0_b waits for task_0_a
    assert resp.status_code == 204 and resp.data == b""


def test_a_blank_supported_actions_means_the_agents_capabilities(client, scene, db) -> None:
    with db.unit_of_work() as s:
        s.get(Agent, scene.agent_id).capabilities = [{"action": "make_phone_call", "params": []}]
    assert poll(client, scene, "?supported_actions=").status_code == 204
    assert poll(client, scene, "?supported_actions=send_email").status_code == 200


def test_auth(client, scene, db) -> None:
    with db.unit_of_work() as s:
        _, user_token = make_user_with_token(s, "mark")
        other = make_agent(s, "agent_other")
        _, other_key = issue_credential(s, agent_id=other.id)
    assert client.get(f"/api/agents/{scene.agent_id}/work").status_code == 401
    assert poll(client, scene, key="not-a-key").status_code == 401
    wrong = poll(client, scene, key=other_key)  # a valid key, but another agent's
    assert wrong.status_code == 403 and wrong.get_json()["error"]["code"] == "forbidden"
    assert poll(client, scene, key=user_token).status_code == 403  # an operator is not an agent
    with db.reading() as s:  # none of these claimed anything or counted as a heartbeat
        assert s.get(Agent, scene.agent_id).last_heartbeat is None
        assert s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.status == "RUNNING")) is None


def test_a_deactivated_agent_is_refused_even_with_a_cached_key(client, scene, db) -> None:
    assert poll(client, scene).status_code == 200  # the key is now in the process's cache
    with db.unit_of_work() as s:
        s.get(Agent, scene.agent_id).is_active = False
    resp = poll(client, scene)
    assert resp.status_code == 403 and "deactivated" in resp.get_json()["error"]["message"]


def test_cancel_reaches_the_holder_and_releases_its_hold(client, scene, db, redis, migrated) -> None:
    assert poll(client, scene).status_code == 200
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.cancel_requested = "CANCELLED", True
    resp = poll(client, scene)
    assert resp.status_code == 200
    body = resp.get_json()
    assert (body["work_available"], body["force_cancel"], body["force_pause"]) == (False, True, False)
    assert body["held"] == [{"execution_id": scene.execution_id, "task_id": "task_0_a", "signal": "cancel"}]
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") is None
    assert poll(client, scene).status_code == 204


def test_pause_reaches_the_holder_on_every_poll_until_it_resumes(client, scene, db) -> None:
    assert poll(client, scene).status_code == 200
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.pause_requested = "PAUSED", True
    for _ in range(2):
        body = poll(client, scene).get_json()
        assert (body["work_available"], body["force_pause"], body["force_cancel"]) == (False, True, False)
        assert body["held"][0]["signal"] == "pause"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_after_the_commit_still_answers_the_claim(client, app, scene, db, redis, migrated,
                                                             caplog, monkeypatch) -> None:
    """The claim has committed when the hold is written: a 503 then would strand it with an agent that
    never heard of it. The hold is only a cache (the event front end falls back to the database)."""
    dead = redis_lib.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)

    def claim_then_lose_redis(*args, **kwargs):  # Redis answered the poll's first round trip, then went
        app.extensions["redis"] = dead
        return claim_work(*args, **kwargs)

    monkeypatch.setattr(work_api, "claim_work", claim_then_lose_redis)
    try:
        with caplog.at_level(logging.WARNING, logger="web.effects"):
            resp = poll(client, scene)
    finally:
        app.extensions["redis"] = redis
        monkeypatch.undo()
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert list(body) == GUIDE_KEYS and body["next_task"]["task_id"] == "task_0_a"
    assert "Redis unavailable after a commit" in caplog.text and "1 holds" in caplog.text
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") is None
    # Redis is back: the next poll answers the same claim and writes the hold it missed.
    again = poll(client, scene).get_json()
    assert again == {**body, "redelivered": True}
    assert holder(redis, migrated.redis_key_prefix, scene.execution_id, "task_0_a") == scene.agent_id
    with db.reading() as s:
        sub = s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a")
        assert (sub.status, sub.agent_id, sub.attempt) == ("RUNNING", scene.agent_id, 1)
