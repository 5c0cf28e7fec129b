"""The operators' API through the Flask test client: bad input is a clear 4xx and writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.models import Plan
from tests.factories import make_agent, make_user_with_token


@pytest.fixture
def auth(db):
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "mark")
        _, other = make_user_with_token(s, "eve")
        agent = make_agent(s, "agent_x")
        _, agent_key = issue_credential(s, agent_id=agent.id)
    return {"mark": {"Authorization": f"Bearer {token}"}, "eve": {"Authorization": f"Bearer {other}"},
            "agent": {"Authorization": f"Bearer {agent_key}"}}


def plan(tasks):
    return {"goal": "g", "tasks": tasks}


def sub(i, **kw):
    return {"id": i, "title": i, "action": "send_email", **kw}


def n_plans(db) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(Plan))


def test_plan_round_trip_and_scope(client, auth) -> None:
    body = plan([{"id": "t1", "title": "T1", "subtasks": [sub("a"), sub("b", prerequisites=["a"])]},
                 {"id": "t2", "title": "T2", "prerequisites": ["t1"], "subtasks": [sub("c")]}])
    resp = client.post("/api/plans", json={**body, "id": "plan_1"}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    got = client.get("/api/plans/plan_1", headers=auth["mark"]).get_json()
    assert got["tasks"][1]["prerequisite_task_ids"] == ["t1"]
    assert got["tasks"][0]["subtasks"][1]["prerequisite_subtask_ids"] == ["a"]
    assert client.get("/api/plans/plan_1", headers=auth["eve"]).status_code == 404
    assert [p["id"] for p in client.get("/api/plans", headers=auth["mark"]).get_json()["plans"]] == ["plan_1"]
    assert client.get("/api/plans", headers=auth["eve"]).get_json()["plans"] == []
    again = client.post("/api/plans", json={**body, "id": "plan_1"}, headers=auth["mark"])
    assert again.status_code == 409


@pytest.mark.parametrize(("tasks", "detail_key", "ids"), [
    ([{"id": "t1", "title": "T", "prerequisites": ["t9"], "subtasks": []}], "unknown_prerequisites", {"t1": ["t9"]}),
    ([{"id": "t1", "title": "T", "prerequisites": ["t2"]}, {"id": "t2", "title": "T", "prerequisites": ["t1"]}],
     "cycle", ["t1", "t2", "t1"]),
    ([{"id": "t1", "title": "T", "subtasks": [sub("a", prerequisites=["b"]), sub("b", prerequisites=["a"])]}],
     "cycle", ["a", "b", "a"]),
    ([{"id": "t1", "title": "T", "subtasks": [sub("a", prerequisites=["c"])]},
      {"id": "t2", "title": "T", "prerequisites": ["t1"], "subtasks": [sub("c")]}], "cycle", ["a", "c", "a"]),
    ([{"id": "t1", "title": "T", "subtasks": [sub("t1")]}], "duplicate_ids", ["t1"]),
])
def test_bad_plans_are_422_naming_the_ids(client, auth, db, tasks, detail_key, ids) -> None:
    resp = client.post("/api/plans", json=plan(tasks), headers=auth["mark"])
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["details"][detail_key] == ids
    assert n_plans(db) == 0


def test_malformed_requests(client, auth, db) -> None:
    assert client.post("/api/plans", json={"tasks": []}, headers=auth["mark"]).status_code == 422
    resp = client.post("/api/plans", data="not json", headers={**auth["mark"], "Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "bad_request"
    assert client.post("/api/plans", json=plan([]), headers=auth["agent"]).status_code == 403
    assert client.post("/api/plans", json=plan([])).status_code == 401
    assert client.post("/api/plans", json=plan([]), headers={"Authorization": "Bearer nope"}).status_code == 401
    bad_policy = plan([{"id": "t", "title": "T", "subtasks": [sub("a", retry_policy={"backoff": "random"})]}])
    assert client.post("/api/plans", json=bad_policy, headers=auth["mark"]).status_code == 422
    assert n_plans(db) == 0


def test_executions_lifecycle_errors(client, auth) -> None:
    client.post("/api/plans", json={**plan([{"id": "t", "title": "T"}]), "id": "plan_empty"}, headers=auth["mark"])
    resp = client.post("/api/executions", json={"plan_id": "plan_empty"}, headers=auth["mark"])
    assert resp.status_code == 422 and resp.get_json()["error"]["details"]["undecomposed_task_ids"] == ["t"]
    client.post("/api/plans", json={**plan([{"id": "t", "title": "T", "subtasks": [sub("a")]}]), "id": "plan_ok"},
                headers=auth["mark"])
    assert client.post("/api/executions", json={"plan_id": "plan_ok"}, headers=auth["eve"]).status_code == 404
    resp = client.post("/api/executions", json={"plan_id": "plan_ok", "execution_id": "exec_1"}, headers=auth["mark"])
    assert resp.status_code == 201 and resp.get_json()["tasks"][0]["subtasks"][0]["status"] == "QUEUED"
    bad = client.patch("/api/executions/exec_1", json={"status": "RUNNING"}, headers=auth["mark"])
    assert bad.status_code == 409 and bad.get_json()["error"]["code"] == "invalid_transition"
    assert client.patch("/api/executions/exec_1", json={"status": "DONE"}, headers=auth["mark"]).status_code == 422
    assert client.patch("/api/executions/exec_1", json={"status": "QUEUED"}, headers=auth["eve"]).status_code == 404
    assert client.patch("/api/executions/exec_1", json={"status": "QUEUED"}, headers=auth["mark"]).status_code == 200
    listing = client.get("/api/executions?status=QUEUED", headers=auth["mark"]).get_json()
    assert [e["execution_id"] for e in listing["executions"]] == ["exec_1"]
    assert client.get("/api/executions?limit=0", headers=auth["mark"]).status_code == 422
    assert client.get("/api/executions?cursor=%%%", headers=auth["mark"]).status_code in (400, 422)
    resolve = client.post("/api/executions/exec_1/tasks/t/resolve", json={"option": "skip_task"},
                          headers=auth["mark"])
    assert resolve.status_code == 409  # not blocked
    events = client.get("/api/executions/exec_1/events?limit=1", headers=auth["mark"]).get_json()
    assert len(events["events"]) == 1 and events["next_before"]
    older = client.get(f"/api/executions/exec_1/events?before={events['next_before']}",
                       headers=auth["mark"]).get_json()
    assert older["events"][0]["event_type"] == "execution_created"


def test_agent_registration(client, auth) -> None:
    resp = client.post("/api/agents", json={"name": "Larry Bot", "capabilities": [
        "send_email", {"action": "make_phone_call", "params": ["number"]}]}, headers=auth["mark"])
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["api_key"].startswith("agt_") and body["id"].startswith("agent_larry_bot_")
    assert body["capabilities"] == [{"action": "send_email", "params": []},
                                    {"action": "make_phone_call", "params": ["number"]}]
    listed = client.get("/api/agents", headers=auth["mark"]).get_json()["agents"]
    assert "api_key" not in listed[0] and listed[0]["holding"] == []
    assert client.post("/api/agents", json={"name": "x", "capabilities": [3]}, headers=auth["mark"]).status_code == 422
    work = client.get(f"/api/agents/{body['id']}/work", headers={"Authorization": f"Bearer {body['api_key']}"})
    assert work.status_code == 204
    assert client.get(f"/api/agents/{body['id']}/work", headers=auth["agent"]).status_code == 403
