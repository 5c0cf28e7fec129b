"""The live stream over real WebSockets: messages as workers apply events, scope, tokens, replay."""

from __future__ import annotations

import json
import time

import pytest
import requests
import simple_websocket

from tests.factories import make_user_with_token
from tests.workers.helpers import claim, queued_execution

pytestmark = pytest.mark.integration


def stream_token(live_server, user_token: str) -> str:
    resp = requests.post(f"{live_server.url}/api/tokens/stream", headers={"Authorization": f"Bearer {user_token}"},
                         timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def owner_token(db, scene) -> str:
    from orchestrator.credentials import issue_credential

    with db.unit_of_work() as s:
        _, token = issue_credential(s, user_id=scene.owner_id)
    return token


def ws_url(live_server, path: str) -> str:
    return live_server.url.replace("http://", "ws://") + path


def receive_until(ws, pred, timeout: float = 10) -> list[dict]:
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.receive(timeout=max(0.05, deadline - time.monotonic()))
        if raw is None:
            continue
        got.append(json.loads(raw))
        if pred(got[-1]):
            return got
    raise AssertionError(f"no matching message; got {got}")


def post_event(live_server, scene, body: dict) -> requests.Response:
    return requests.post(f"{live_server.url}/api/executions/{scene.execution_id}/events",
                         json={"agent_id": scene.agent_id, **body},
                         headers={"Authorization": f"Bearer {scene.agent_key}"}, timeout=30)


def test_events_and_updates_arrive_live(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    token = stream_token(live_server, owner_token(db, scene))
    ws = simple_websocket.Client.connect(
        ws_url(live_server, f"/api/executions/{scene.execution_id}/stream?token={token}"))
    allws = simple_websocket.Client.connect(ws_url(live_server, f"/api/stream?token={token}"))
    try:
        first = receive_until(ws, lambda m: m["type"] == "execution_update")
        assert first[-1]["status"] == "RUNNING" and "owner_id" not in first[-1]
        resp = post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a",
                                               "message": "Email sent."})
        assert resp.status_code == 201
        got = receive_until(ws, lambda m: m["type"] == "execution_update" and m["progress"]["current_task_id"])
        event = next(m for m in got if m["type"] == "event")
        assert (event["event_id"], event["event_type"], event["task_id"], event["message"]) == (
            resp.json()["event_id"], "task_complete", "task_0_a", "Email sent.")
        assert set(got[-1]["progress"]) >= {"tasks_completed", "tasks_total", "percent", "current_task_id",
                                            "current_task_title"}
        assert any(m.get("event_id") == event["event_id"] for m in receive_until(
            allws, lambda m: m.get("event_id") == event["event_id"]))
    finally:
        ws.close()
        allws.close()


def test_other_users_see_nothing_and_bad_tokens_are_refused(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    with db.unit_of_work() as s:
        _, eve = make_user_with_token(s, "eve")
    eve_token = stream_token(live_server, eve)
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws = simple_websocket.Client.connect(
            ws_url(live_server, f"/api/executions/{scene.execution_id}/stream?token={eve_token}"))
        ws.receive(timeout=5)
    assert closed.value.reason == 1008
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws = simple_websocket.Client.connect(ws_url(live_server, "/api/stream?token=forged.jwt.token"))
        ws.receive(timeout=5)
    assert closed.value.reason == 1008
    # Eve's all-executions stream carries nothing of Mark's.
    ws = simple_websocket.Client.connect(ws_url(live_server, f"/api/stream?token={eve_token}"))
    try:
        claim(db, redis, migrated, scene, "task_0_a")
        assert post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"}).status_code == 201
        assert ws.receive(timeout=1.5) is None
    finally:
        ws.close()


def test_reconnect_with_since_replays_what_was_missed(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    first = post_event(live_server, scene, {"event_type": "task_started", "task_id": "task_0_a"}).json()
    missed = post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"}).json()
    token = stream_token(live_server, owner_token(db, scene))
    ws = simple_websocket.Client.connect(ws_url(
        live_server, f"/api/executions/{scene.execution_id}/stream?token={token}&since={first['event_id']}"))
    try:
        got = receive_until(ws, lambda m: m["type"] == "execution_update")
        replayed = [m["event_id"] for m in got if m["type"] == "event"]
        assert missed["event_id"] in replayed and first["event_id"] not in replayed
    finally:
        ws.close()
