"""The agent loop over real HTTP with a real worker: the guide's examples verbatim, a full loop,
concurrent agents, pause and cancel reaching agents, block → resolve → continue."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from orchestrator_sdk.client import SignedAuth

from tests.factories import make_user_with_token
from tests.workers.helpers import assert_each_claimed_once

pytestmark = pytest.mark.integration

GUIDE_PARAMS = {"to": "carol@bittersweet-farm.com", "subject": "Discovery Interview Request", "body": "Hi Carol...",
                "cc": [], "bcc": []}


class Api:
    def __init__(self, base: str, token: str, signing_secret: str | None = None) -> None:
        self.base = base
        self.s = requests.Session()
        self.s.auth = SignedAuth(token, signing_secret)  # an agent's requests are signed

    def __getattr__(self, method: str):
        return lambda path, **kw: self.s.request(method.upper(), self.base + path, timeout=30, **kw)


@pytest.fixture
def operator(db, live_server, worker):
    with db.unit_of_work() as s:
        user, token = make_user_with_token(s, "mark")
        user_id = user.id
    api = Api(live_server.url, token)
    api.user_id = user_id
    return api


def register(operator: Api, agent_id: str, capabilities: list) -> Api:
    resp = operator.post("/api/agents", json={"id": agent_id, "name": agent_id, "role": "Full-stack contractor",
                                              "capabilities": capabilities})
    assert resp.status_code == 201, resp.text
    return Api(operator.base, resp.json()["api_key"], resp.json()["signing_secret"])


def carol_plan(operator: Api, plan_id: str = "plan_carol_breeder_sys_20260211") -> None:
    resp = operator.post("/api/plans", json={
        "id": plan_id, "goal": "Build custom breeder management system",
        "context": {"business_type": "Dog breeding"},
        "tasks": [{"id": "task_1_1", "title": "Interview Carol", "subtasks": [
            {"id": "task_1_1_a", "title": "Send initial interview request to Carol", "action": "send_email",
             "params": GUIDE_PARAMS, "timeout_hours": 24, "retry_policy": {"max_attempts": 3, "backoff_seconds": 300}},
            {"id": "task_1_1_b", "title": "Document requirements", "action": "document_requirements",
             "prerequisites": ["task_1_1_a"]},
        ]}]})
    assert resp.status_code == 201, resp.text


def start(operator: Api, plan_id: str, execution_id: str, agent_id: str | None = None) -> None:
    resp = operator.post("/api/executions", json={"plan_id": plan_id, "agent_id": agent_id,
                                                  "execution_id": execution_id})
    assert resp.status_code == 201, resp.text
    assert resp.json()["status"] == "CREATED"
    resp = operator.patch(f"/api/executions/{execution_id}", json={"status": "QUEUED"})
    assert resp.status_code == 200 and resp.json()["status"] == "QUEUED", resp.text


@pytest.fixture
def larry(operator) -> Api:
    """The guide's agent, registered, and the guide's plan for Carol."""
    api = register(operator, "agent_larry_001", ["send_email", "make_phone_call", "search_google_maps",
                                                 "document_requirements"])
    carol_plan(operator)
    return api


def test_guide_poll_and_report_examples_verbatim(operator, larry) -> None:
    start(operator, "plan_carol_breeder_sys_20260211", "exec_carol_prospect_20260211_001", "agent_larry_001")

    resp = larry.get("/api/agents/agent_larry_001/work?supported_actions=send_email,make_phone_call,search_google_maps")
    assert resp.status_code == 200, resp.text
    work = resp.json()
    assert set(work) >= {"work_available", "execution_id", "plan_id", "next_task", "force_pause", "force_cancel"}
    assert work["work_available"] is True and work["execution_id"] == "exec_carol_prospect_20260211_001"
    assert work["plan_id"] == "plan_carol_breeder_sys_20260211"
    task = work["next_task"]
    assert (task["task_id"], task["title"], task["action"], task["params"], task["timeout_hours"]) == (
        "task_1_1_a", "Send initial interview request to Carol", "send_email", GUIDE_PARAMS, 24)
    assert task["retry_policy"] == {"max_attempts": 3, "backoff_seconds": 300}
    assert task["context"] == {"plan_goal": "Build custom breeder management system", "previous_tasks": [],
                               "upcoming_tasks": ["Document requirements"]}
    assert (work["force_pause"], work["force_cancel"]) == (False, False)
    detail = operator.get("/api/executions/exec_carol_prospect_20260211_001").json()
    assert detail["status"] == "RUNNING"  # the first claim starts it

    resp = larry.post("/api/executions/exec_carol_prospect_20260211_001/events", json={
        "agent_id": "agent_larry_001", "agent_timestamp": "2026-02-11T16:09:45Z", "event_type": "task_complete",
        "task_id": "task_1_1_a", "status": "success",
        "output_data": {"email_sent_to": "carol@bittersweet-farm.com", "email_timestamp": "2026-02-11T16:09:45Z",
                        "recipient_response_received": True,
                        "response_excerpt": "Sounds good, let's schedule for Thursday at 2 PM",
                        "response_timestamp": "2026-02-11T16:45:00Z", "mailbox_used": "82deutschmark@gmail.com"},
        "message": "Email sent and response received. Ready for next step."})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert set(out) >= {"event_id", "execution_id", "recorded_at", "next_task_id", "next_action", "status_message"}
    assert (out["execution_id"], out["next_task_id"], out["next_action"]) == (
        "exec_carol_prospect_20260211_001", "task_1_1_b", "document_requirements")



def test_guide_error_example_verbatim_and_its_resolution(operator, larry) -> None:
    start(operator, "plan_carol_breeder_sys_20260211", "exec_carol_prospect_20260211_002", "agent_larry_001")
    resp = larry.get("/api/agents/agent_larry_001/work?supported_actions=send_email")
    assert resp.json()["execution_id"] == "exec_carol_prospect_20260211_002"
    resp = larry.post("/api/executions/exec_carol_prospect_20260211_002/events", json={
        "agent_id": "agent_larry_001", "agent_timestamp": "2026-02-11T17:00:00Z", "event_type": "task_error",
        "task_id": "task_1_1_a", "status": "error", "error_type": "external_dependency_blocked",
        "error_message": "Carol's email address (carol@bittersweet-farm.com) bounced. Invalid or deactivated.",
        "message": "Unable to send email. Contact verification needed.", "human_review_required": True,
        "suggestions": ["Try alternative email from website footer (info@bittersweetfarm.com)",
                        "Call Carol directly at 860-455-9416", "Find email via LinkedIn or Facebook"],
        "blocking": True})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert (out["status"], out["human_review_required"], out["escalated_to"]) == ("BLOCKED", True, operator.user_id)
    assert {"skip_task", "cancel_execution"} <= set(out["next_step_options"])

    # A person approves the alternative address; the agent gets the subtask again with it.
    detail = operator.get("/api/executions/exec_carol_prospect_20260211_002").json()
    blocked = detail["tasks"][0]  # people see personal data masked; the owner may ask for it raw
    assert blocked["status"] == "BLOCKED" and blocked["suggestions"][1] == "Call Carol directly at ***-***-9416"
    raw = operator.get("/api/executions/exec_carol_prospect_20260211_002?raw=true").json()
    assert raw["tasks"][0]["suggestions"][1] == "Call Carol directly at 860-455-9416"
    resp = operator.post("/api/executions/exec_carol_prospect_20260211_002/tasks/task_1_1/resolve",
                         json={"option": "approve_alternative", "params": {"to": "info@bittersweetfarm.com"}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "RUNNING"
    work = larry.get("/api/agents/agent_larry_001/work?supported_actions=send_email").json()
    assert work["execution_id"] == "exec_carol_prospect_20260211_002"
    assert work["next_task"]["params"]["to"] == "info@bittersweetfarm.com" and work["next_task"]["attempt"] == 2


def agent_loop(api: Api, agent_id: str, claims: list, stop: threading.Event, errors: list) -> None:
    try:
        while not stop.is_set():
            resp = api.get(f"/api/agents/{agent_id}/work")
            if resp.status_code == 204:
                time.sleep(0.05)
                continue
            work = resp.json()
            ex, sub = work["execution_id"], work["next_task"]["task_id"]
            claims.append((ex, sub))
            done = api.post(f"/api/executions/{ex}/events", json={
                "agent_id": agent_id, "event_type": "task_complete", "task_id": sub, "status": "success",
                "output_data": {"by": agent_id}})
            if done.status_code not in (201, 202):
                errors.append(done.text)
    except Exception as exc:  # noqa: BLE001 - surfaced by the test
        errors.append(repr(exc))


def test_twenty_agents_two_hundred_subtasks_each_exactly_once(operator) -> None:
    agents = {f"agent_crowd_{i}": register(operator, f"agent_crowd_{i}", ["send_email"]) for i in range(20)}
    for e in range(10):
        resp = operator.post("/api/plans", json={"id": f"plan_crowd_{e}", "goal": "crowd", "tasks": [
            {"id": "t", "title": "many", "subtasks": [
                {"id": f"s{j}", "title": f"s{j}", "action": "send_email"} for j in range(20)]}]})
        assert resp.status_code == 201, resp.text
        start(operator, f"plan_crowd_{e}", f"exec_crowd_{e}")
    claims: list = []
    errors: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=agent_loop, args=(api, aid, claims, stop, errors))
               for aid, api in agents.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            listing = operator.get("/api/executions?status=COMPLETED&limit=200").json()["executions"]
            if sum(1 for x in listing if x["execution_id"].startswith("exec_crowd_")) == 10:
                break
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert_each_claimed_once(claims, errors, 200)
    for e in range(10):
        detail = operator.get(f"/api/executions/exec_crowd_{e}").json()
        assert detail["status"] == "COMPLETED" and detail["progress"]["percent"] == 100


def test_pause_and_cancel_reach_the_agent(operator) -> None:
    larry = register(operator, "agent_pc", ["send_email", "document_requirements"])
    carol_plan(operator, "plan_pc")
    start(operator, "plan_pc", "exec_pc", "agent_pc")
    work = larry.get("/api/agents/agent_pc/work").json()
    assert work["next_task"]["task_id"] == "task_1_1_a"
    assert operator.patch("/api/executions/exec_pc", json={"status": "PAUSED"}).json()["status"] == "PAUSED"
    paused = larry.get("/api/agents/agent_pc/work")
    assert paused.status_code == 200 and paused.json()["force_pause"] is True
    assert paused.json()["work_available"] is False
    # The held work may still be reported while paused; nothing new is handed out.
    done = larry.post("/api/executions/exec_pc/events", json={"agent_id": "agent_pc", "event_type": "task_complete",
                                                              "task_id": "task_1_1_a"})
    assert done.status_code == 201 and done.json()["status"] == "PAUSED"
    assert larry.get("/api/agents/agent_pc/work").status_code == 204
    bad = operator.patch("/api/executions/exec_pc", json={"status": "QUEUED"})
    assert bad.status_code == 409 and bad.json()["error"]["details"] == {"current": "PAUSED", "target": "QUEUED"}
    assert operator.patch("/api/executions/exec_pc", json={"status": "RUNNING"}).json()["status"] == "RUNNING"
    work = larry.get("/api/agents/agent_pc/work").json()
    assert work["next_task"]["task_id"] == "task_1_1_b"
    assert operator.patch("/api/executions/exec_pc", json={"status": "CANCELLED"}).json()["status"] == "CANCELLED"
    cancelled = larry.get("/api/agents/agent_pc/work").json()
    assert cancelled["force_cancel"] is True and cancelled["held"][0]["task_id"] == "task_1_1_b"
    late = larry.post("/api/executions/exec_pc/events", json={"agent_id": "agent_pc", "event_type": "task_complete",
                                                              "task_id": "task_1_1_b"})
    assert late.status_code == 409
    events = operator.get("/api/executions/exec_pc/events?event_type=status_change").json()["events"]
    assert [e["output_data"]["to"] for e in reversed(events)] == ["QUEUED", "RUNNING", "PAUSED", "RUNNING",
                                                                  "CANCELLED"]
