"""What people are shown is masked; the owner may ask for it raw; agents get the real params.

Over real HTTP and WebSockets, with a real worker applying the agent's events.
"""

from __future__ import annotations

import json

import pytest
import requests
import simple_websocket
from orchestrator_sdk.client import SignedAuth

from tests.web.test_stream import receive_until, ws_url

pytestmark = pytest.mark.integration

EMAIL, PHONE = "carol@bittersweet-farm.com", "860-455-9416"
MASKED_EMAIL, MASKED_PHONE = "c***@bittersweet-farm.com", "***-***-9416"
PARAMS = {"to": EMAIL, "call": PHONE, "subject": "Discovery Interview Request"}
EXEC = "exec_masked_1"


class Api:
    def __init__(self, base: str, token: str, signing_secret: str | None = None) -> None:
        self.base, self.auth = base, SignedAuth(token, signing_secret)

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(self.base + path, params=params, auth=self.auth, timeout=30)

    def send(self, method: str, path: str, body: dict) -> requests.Response:
        resp = requests.request(method, self.base + path, json=body, auth=self.auth, timeout=30)
        assert resp.status_code in (200, 201), resp.text
        return resp


@pytest.fixture
def scene(db, people, live_server, worker) -> dict[str, Api]:
    """Mark's execution, blocked by his agent's report full of Carol's address and number."""
    mark = Api(live_server.url, people.tokens["mark"])
    registered = mark.send("POST", "/api/agents", {"id": "agent_masked", "name": "Larry",
                                                   "capabilities": ["send_email"]}).json()
    key = registered["api_key"]
    agent = Api(live_server.url, key, registered["signing_secret"])
    mark.send("POST", "/api/plans", {"id": "plan_masked", "goal": "Interview Carol", "tasks": [
        {"id": "task_1", "title": "Interview Carol", "subtasks": [
            {"id": "task_1_a", "title": "Write to Carol", "action": "send_email", "params": PARAMS},
            {"id": "task_1_b", "title": "Write again", "action": "send_email", "params": PARAMS,
             "prerequisites": ["task_1_a"]}]}]})
    mark.send("POST", "/api/executions", {"plan_id": "plan_masked", "execution_id": EXEC, "agent_id": "agent_masked"})
    mark.send("PATCH", f"/api/executions/{EXEC}", {"status": "QUEUED"})
    return {"mark": mark, "agent": agent, "admin": Api(live_server.url, people.tokens["admin"]),
            "eve": Api(live_server.url, people.tokens["eve"]), "key": key}


def report(agent: Api, body: dict) -> dict:
    resp = agent.send("POST", f"/api/executions/{EXEC}/events", {"agent_id": "agent_masked", **body})
    assert resp.status_code == 201, resp.text  # applied by the worker
    return resp.json()


def run_to_block(scene: dict) -> None:
    agent = scene["agent"]
    work = agent.get("/api/agents/agent_masked/work").json()
    # The agent gets the real params: it has to write to Carol.
    assert (work["next_task"]["task_id"], work["next_task"]["params"]) == ("task_1_a", PARAMS)
    report(agent, {"event_type": "task_complete", "task_id": "task_1_a", "status": "success",
                   "message": f"Sent to {EMAIL}; she may call back from {PHONE}.",
                   "output_data": {"email_sent_to": EMAIL, "contact": {"phones": [PHONE], "attempts": 1}}})
    work = agent.get("/api/agents/agent_masked/work").json()
    assert (work["next_task"]["task_id"], work["next_task"]["params"]) == ("task_1_b", PARAMS)
    report(agent, {"event_type": "task_error", "task_id": "task_1_b", "status": "error",
                   "error_type": "external_dependency_blocked", "human_review_required": True, "blocking": True,
                   "error_message": f"{EMAIL} bounced (key {scene['key']} was used).",
                   "message": "Unable to send email.", "suggestions": [f"Call Carol directly at {PHONE}"]})


def agent_fields(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event_type"] in ("task_complete", "task_error")]


def test_the_event_log_is_masked_unless_the_owner_asks_for_it_raw(scene) -> None:
    run_to_block(scene)
    mark, admin, eve = scene["mark"], scene["admin"], scene["eve"]

    for who in (mark, admin):  # an admin sees every execution, masked
        resp = who.get(f"/api/executions/{EXEC}/events")
        assert resp.status_code == 200
        assert EMAIL not in resp.text and PHONE not in resp.text and scene["key"] not in resp.text, [
            json.dumps(e) for e in resp.json()["events"] if EMAIL in json.dumps(e)]
        error, complete = agent_fields(resp.json()["events"])
        assert complete["message"] == f"Sent to {MASKED_EMAIL}; she may call back from {MASKED_PHONE}."
        assert complete["output_data"] == {"email_sent_to": MASKED_EMAIL,
                                           "contact": {"phones": [MASKED_PHONE], "attempts": 1}}
        assert error["error_message"] == f"{MASKED_EMAIL} bounced (key *** was used)."
        assert error["suggestions"] == [f"Call Carol directly at {MASKED_PHONE}"]
        assert who.get(f"/api/executions/{EXEC}/events", raw="false").json() == resp.json()

    raw = mark.get(f"/api/executions/{EXEC}/events", raw="true")
    assert raw.status_code == 200
    error, complete = agent_fields(raw.json()["events"])
    assert complete["output_data"] == {"email_sent_to": EMAIL, "contact": {"phones": [PHONE], "attempts": 1}}
    assert error["error_message"] == f"{EMAIL} bounced (key {scene['key']} was used)."
    assert error["suggestions"] == [f"Call Carol directly at {PHONE}"]

    refused = admin.get(f"/api/executions/{EXEC}/events", raw="true")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert EMAIL not in refused.text
    for flag in ("true", "false"):  # someone else's execution does not exist for Eve
        assert eve.get(f"/api/executions/{EXEC}/events", raw=flag).status_code == 404
    assert mark.get(f"/api/executions/{EXEC}/events", raw="maybe").status_code == 422
    assert scene["agent"].get(f"/api/executions/{EXEC}/events", raw="true").status_code == 403


def test_the_execution_detail_is_masked_unless_the_owner_asks_for_it_raw(scene) -> None:
    run_to_block(scene)
    mark, admin = scene["mark"], scene["admin"]
    detail = mark.get(f"/api/executions/{EXEC}")
    assert detail.status_code == 200 and EMAIL not in detail.text and PHONE not in detail.text
    body = detail.json()
    task = body["tasks"][0]
    assert body["status"] == "BLOCKED" and MASKED_EMAIL in body["status_message"]
    assert task["error_message"] == f"{MASKED_EMAIL} bounced (key *** was used)."
    assert task["suggestions"] == [f"Call Carol directly at {MASKED_PHONE}"]
    assert task["subtasks"][0]["result_data"]["email_sent_to"] == MASKED_EMAIL
    listed = mark.get("/api/executions")
    assert EMAIL not in listed.text and MASKED_EMAIL in listed.json()["executions"][0]["status_message"]
    assert admin.get(f"/api/executions/{EXEC}").json() == body

    raw = mark.get(f"/api/executions/{EXEC}", raw="true").json()
    assert raw["tasks"][0]["suggestions"] == [f"Call Carol directly at {PHONE}"]
    assert raw["tasks"][0]["subtasks"][0]["result_data"]["email_sent_to"] == EMAIL
    assert admin.get(f"/api/executions/{EXEC}", raw="true").status_code == 403


def test_the_live_stream_is_masked(scene, live_server) -> None:
    mark = scene["mark"]
    token = mark.send("POST", "/api/tokens/stream", {}).json()["token"]
    ws = simple_websocket.Client.connect(ws_url(live_server, f"/api/executions/{EXEC}/stream?token={token}"))
    try:
        receive_until(ws, lambda m: m["type"] == "execution_update")
        run_to_block(scene)
        got = receive_until(ws, lambda m: m["type"] == "execution_update" and m["status"] == "BLOCKED")
        text = json.dumps(got)
        assert EMAIL not in text and PHONE not in text and scene["key"] not in text
        complete = next(m for m in got if m.get("event_type") == "task_complete")
        assert complete["message"] == f"Sent to {MASKED_EMAIL}; she may call back from {MASKED_PHONE}."
        assert MASKED_EMAIL in got[-1]["status_message"]
    finally:
        ws.close()
    # A reconnecting socket's replay is masked too: replay from the event before the agent's report.
    ids = [e["event_id"] for e in mark.get(f"/api/executions/{EXEC}/events").json()["events"]]
    since = ids[ids.index(complete["event_id"]) + 1]
    replay = simple_websocket.Client.connect(
        ws_url(live_server, f"/api/executions/{EXEC}/stream?token={token}&since={since}"))
    try:
        got = receive_until(replay, lambda m: m.get("event_type") == "task_error")
        replayed = next(m for m in got if m.get("event_type") == "task_complete")
        assert replayed["message"] == complete["message"] and EMAIL not in json.dumps(got)
    finally:
        replay.close()
