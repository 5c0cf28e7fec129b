"""POST/GET /api/plans: nested plans in, the same shape out; every bad plan is a 4xx that writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.models import Plan, PlanSubtask, PlanTask
from tests.factories import make_agent
from tests.web.helpers import assert_error


@pytest.fixture
def auth(db, people):
    with db.unit_of_work() as s:
        _, agent_key = issue_credential(s, agent_id=make_agent(s, "agent_x").id)
    return people.headers(agent=agent_key)


def counts(db) -> tuple[int, int, int]:
    with db.reading() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Plan, PlanTask, PlanSubtask))


def sub(i: str, **kw) -> dict:
    return {"id": i, "title": f"Subtask {i}", "action": "send_email", **kw}


def task(i: str, pres: list[str] | None = None, subs: list[dict] | None = None, **kw) -> dict:
    return {"id": i, "title": f"Task {i}", "prerequisites": pres or [], "subtasks": subs or [], **kw}


PLAN = {
    "id": "plan_carol_breeder_sys_20260211", "title": "Breeder system", "goal": "Build a breeder system",
    "context": {"business_type": "Dog breeding", "owner": "Carol"},
    "tasks": [
        task("task_1_1", subs=[
            sub("task_1_1_a", params={"to": "carol@example.com"},
                retry_policy={"max_attempts": 3, "backoff": "exponential", "backoff_seconds": 300,
                              "max_backoff_seconds": 3600}),
            sub("task_1_1_b", prerequisites=["task_1_1_a"], timeout_hours=2, success_criteria=["notes saved"]),
        ], phase_id="phase_1", phase_title="Discovery", assignee_role="Business Analyst", estimated_hours=3,
            priority=1, is_blocking=True, description="Interview Carol"),
        task("task_1_2", ["task_1_1"], [sub("task_1_2_a")], priority=2),
    ],
}


def test_create_then_read_the_same_shape(client, auth, db) -> None:
    resp = client.post("/api/plans", json=PLAN, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"] == f"/api/plans/{PLAN['id']}"
    body = resp.get_json()
    assert body == client.get(resp.headers["Location"], headers=auth["mark"]).get_json()
    assert (body["goal"], body["context"], body["source"], body["owner_id"]) == (
        PLAN["goal"], PLAN["context"], "api", "user_mark")
    t1, t2 = body["tasks"]
    assert (t1["phase_title"], t1["is_blocking"], t1["decomposed"], t2["prerequisite_task_ids"]) == (
        "Discovery", True, True, ["task_1_1"])
    a, b = t1["subtasks"]
    assert a["retry_policy"]["backoff_seconds"] == 300 and a["timeout_hours"] == 24
    assert (b["prerequisite_subtask_ids"], b["timeout_hours"], b["success_criteria"]) == (
        ["task_1_1_a"], 2, ["notes saved"])
    assert counts(db) == (1, 2, 3)


def test_a_plan_without_id_or_subtasks(client, auth) -> None:
    resp = client.post("/api/plans", json={"goal": "Later", "tasks": [{"id": "t", "title": "T"}]},
                       headers=auth["mark"])
    body = resp.get_json()
    assert resp.status_code == 201 and body["id"].startswith("plan_")
    assert body["tasks"][0]["decomposed"] is False and body["tasks"][0]["subtasks"] == []


def test_list_pages_and_scopes(client, auth) -> None:
    for i in range(3):
        resp = client.post("/api/plans", json={"id": f"plan_{i}", "goal": f"g{i}"}, headers=auth["mark"])
        assert resp.status_code == 201
    client.post("/api/plans", json={"id": "plan_eve", "goal": "e"}, headers=auth["eve"])
    first = client.get("/api/plans?limit=2", headers=auth["mark"]).get_json()
    assert [p["id"] for p in first["plans"]] == ["plan_2", "plan_1"] and first["next_cursor"]
    assert set(first["plans"][0]) == {"id", "title", "goal", "source", "created_at"}
    rest = client.get(f"/api/plans?limit=2&cursor={first['next_cursor']}", headers=auth["mark"]).get_json()
    assert ([p["id"] for p in rest["plans"]], rest["next_cursor"]) == (["plan_0"], None)
    assert [p["id"] for p in client.get("/api/plans", headers=auth["eve"]).get_json()["plans"]] == ["plan_eve"]
    assert len(client.get("/api/plans", headers=auth["admin"]).get_json()["plans"]) == 4
    assert_error(client.get("/api/plans/plan_0", headers=auth["eve"]), 404, "not_found")
    assert client.get("/api/plans/plan_0", headers=auth["admin"]).status_code == 200
    assert_error(client.get("/api/plans?limit=0", headers=auth["mark"]), 422, "invalid_request")
    assert_error(client.get("/api/plans?limit=201", headers=auth["mark"]), 422, "invalid_request")
    assert_error(client.get("/api/plans?cursor=eHx5", headers=auth["mark"]), 422, "validation_failed")


@pytest.mark.parametrize(("tasks", "details"), [
    pytest.param([task("t1", ["t9"]), task("t2", subs=[sub("a", prerequisites=["nope"])])],
                 {"unknown_prerequisites": {"t1": ["t9"], "a": ["nope"]}}, id="unknown"),
    pytest.param([task("t1", ["t2"]), task("t2", ["t1"])],
                 {"cycle": ["t1", "t2", "t1"], "cycles": [["t1", "t2", "t1"]]}, id="task-cycle"),
    pytest.param([task("t1", ["t1"])], {"cycle": ["t1", "t1"], "cycles": [["t1", "t1"]]}, id="self"),
    pytest.param([task("t1", subs=[sub("a", prerequisites=["b"]), sub("b", prerequisites=["a"])])],
                 {"cycle": ["a", "b", "a"], "cycles": [["a", "b", "a"]]}, id="subtask-cycle"),
    pytest.param([task("t1", subs=[sub("a", prerequisites=["c"])]), task("t2", ["t1"], [sub("c")])],
                 {"cycle": ["a", "c", "a"], "cycles": [["a", "c", "a"]]}, id="through-task-order"),
    pytest.param([task("t1", subs=[sub("a")]), task("t2", subs=[sub("a"), sub("t1")])],
                 {"duplicate_ids": ["a", "t1"]}, id="duplicates"),
])
def test_graph_errors_are_422_naming_the_ids(client, auth, db, tasks, details) -> None:
    err = assert_error(client.post("/api/plans", json={"goal": "g", "tasks": tasks}, headers=auth["mark"]),
                       422, "validation_failed")
    assert err["details"] == details
    assert counts(db) == (0, 0, 0)


@pytest.mark.parametrize(("body", "field"), [
    ({"tasks": []}, "goal"),
    ({"goal": ""}, "goal"),
    ({"goal": "g", "owner_id": "user_eve"}, "owner_id"),
    ({"goal": "g", "context": ["not", "a", "dict"]}, "context"),
    ({"goal": "g", "tasks": [{"id": "t"}]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", priority=0)]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", subs=[{"title": "no id"}])]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", subs=[sub("a", retry_policy={"backoff": "random"})])]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", subs=[sub("a", retry_policy={"max_attempts": 0})])]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", subs=[sub("a", timeout_hours=0)])]}, "tasks"),
    ({"goal": "g", "tasks": [task("t", prerequisite_task_ids=["x"])]}, "tasks"),  # both names at once
])
def test_malformed_plans_are_422_and_write_nothing(client, auth, db, body, field) -> None:
    err = assert_error(client.post("/api/plans", json=body, headers=auth["mark"]), 422, "invalid_request")
    assert field in err["details"]
    assert counts(db) == (0, 0, 0)


def test_refusals(client, auth, db) -> None:
    assert client.post("/api/plans", json=PLAN, headers=auth["mark"]).status_code == 201
    assert_error(client.post("/api/plans", json=PLAN, headers=auth["eve"]), 409, "conflict")
    assert_error(client.post("/api/plans", json={"goal": "g"}), 401, "unauthorized")
    assert_error(client.post("/api/plans", json={"goal": "g"}, headers=auth["agent"]), 403, "forbidden")
    assert_error(client.get("/api/plans", headers=auth["agent"]), 403, "forbidden")
    assert_error(client.post("/api/plans", data="nope", headers={**auth["mark"], "Content-Type": "application/json"}),
                 400)
    assert counts(db) == (1, 2, 3)
