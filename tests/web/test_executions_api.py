"""/api/executions: create, control through the state machine, read, page events, resolve blocks."""

from __future__ import annotations

import logging

import orjson
import pytest
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask, User
from orchestrator.publish import channel
from tests.factories import block_subtask, make_agent, make_execution, make_plan
from tests.web.helpers import assert_error

EXEC = "exec_1"


@pytest.fixture
def auth(db, people):
    with db.unit_of_work() as s:
        mark, eve = s.get(User, people.mark_id), s.get(User, people.eve_id)
        make_plan(s, mark, "plan_mark", n_tasks=2)
        make_plan(s, eve, "plan_eve")
        make_plan(s, mark, "plan_later", n_subtasks=0)
        make_agent(s, "agent_mark", owner_id=mark.id)
        make_agent(s, "agent_eve", owner_id=eve.id)
        _, agent_key = issue_credential(s, agent_id="agent_mark")
    return people.headers(agent=agent_key)


def written(db) -> tuple[int, int, int]:
    with db.reading() as s:
        return tuple(s.scalar(select(func.count()).select_from(m))
                     for m in (Execution, ExecutionSubtask, ExecutionEvent))


def start(client, auth, db=None, *, running: bool = False, block: str | None = None) -> None:
    """exec_1 of plan_mark (CREATED); made RUNNING by hand (only an agent's claim does that otherwise)."""
    resp = client.post("/api/executions", json={"plan_id": "plan_mark", "execution_id": EXEC}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    if running or block:
        with db.unit_of_work() as s:
            s.get(Execution, EXEC).status = "RUNNING"
            if block:
                block_subtask(s, EXEC, block)  # and BLOCKED


def test_create(client, auth, db) -> None:
    resp = client.post("/api/executions", json={"plan_id": "plan_mark", "agent_id": "agent_mark"},
                       headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert resp.headers["Location"] == f"/api/executions/{body['execution_id']}"
    assert body["execution_id"].startswith("exec_") and (body["status"], body["agent_id"]) == ("CREATED", "agent_mark")
    assert body["progress"]["tasks_total"] == 2 and body["progress"]["current_task_id"] == "task_0"
    assert [[x["status"] for x in t["subtasks"]] for t in body["tasks"]] == [["QUEUED"] * 2] * 2
    assert written(db) == (1, 4, 1)


@pytest.mark.parametrize(("body", "who", "status", "code"), [
    ({"plan_id": "plan_eve"}, "mark", 404, "not_found"),
    ({"plan_id": "plan_none"}, "mark", 404, "not_found"),
    ({"plan_id": "plan_mark", "agent_id": "agent_eve"}, "mark", 404, "not_found"),
    ({"plan_id": "plan_mark", "agent_id": "agent_none"}, "mark", 404, "not_found"),
    ({"plan_id": "plan_later"}, "mark", 422, "validation_failed"),
    ({}, "mark", 422, "invalid_request"),
    ({"plan_id": "plan_mark", "status": "RUNNING"}, "mark", 422, "invalid_request"),
    ({"plan_id": "plan_mark"}, "agent", 403, "forbidden"),
    ({"plan_id": "plan_mark"}, None, 401, "unauthorized"),
])
def test_create_refusals_write_nothing(client, auth, db, body, who, status, code) -> None:
    resp = client.post("/api/executions", json=body, headers=auth[who] if who else {})
    err = assert_error(resp, status, code)
    if body.get("plan_id") == "plan_later":
        assert err["details"] == {"undecomposed_task_ids": ["task_0"]}
    assert written(db) == (0, 0, 0)


def test_an_existing_execution_id_is_a_conflict(client, auth, db) -> None:
    start(client, auth)
    before = written(db)
    assert_error(client.post("/api/executions", json={"plan_id": "plan_mark", "execution_id": EXEC},
                             headers=auth["mark"]), 409, "conflict")
    assert written(db) == before


def test_patch_queues_and_refuses_running_with_the_attempted_transition(client, auth, db) -> None:
    start(client, auth)
    resp = client.patch(f"/api/executions/{EXEC}", json={"status": "QUEUED"}, headers=auth["mark"])
    assert resp.status_code == 200 and resp.get_json()["status"] == "QUEUED"
    before = written(db)
    err = assert_error(client.patch(f"/api/executions/{EXEC}", json={"status": "RUNNING"}, headers=auth["mark"]),
                       409, "invalid_transition")
    assert err["details"] == {"current": "QUEUED", "target": "RUNNING"} and "claims its first subtask" in err["message"]
    err = assert_error(client.patch(f"/api/executions/{EXEC}", json={"status": "PAUSED"}, headers=auth["mark"]),
                       409, "invalid_transition")
    assert err["details"] == {"current": "QUEUED", "target": "PAUSED"}
    assert written(db) == before


def test_pause_resume_cancel(client, auth, db, redis, app, caplog) -> None:
    start(client, auth, db, running=True)
    pubsub = redis.pubsub()
    pubsub.subscribe(channel(app.config["SETTINGS"].redis_key_prefix))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    caplog.set_level(logging.INFO, logger="orchestrator.state_machine")

    def patch(target: str) -> dict:
        resp = client.patch(f"/api/executions/{EXEC}", json={"status": target}, headers=auth["mark"])
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    body = patch("PAUSED")
    assert (body["status"], body["pause_requested"], body["cancel_requested"]) == ("PAUSED", True, False)
    body = patch("RUNNING")
    assert (body["status"], body["pause_requested"]) == ("RUNNING", False)
    body = patch("CANCELLED")
    assert (body["status"], body["cancel_requested"]) == ("CANCELLED", True) and body["completed_at"].endswith("Z")
    assert_error(client.patch(f"/api/executions/{EXEC}", json={"status": "QUEUED"}, headers=auth["mark"]), 409)

    published = []
    while (msg := pubsub.get_message(timeout=1)) is not None:
        published.append(orjson.loads(msg["data"]))
    pubsub.close()
    updates = [m["status"] for m in published if m["type"] == "execution_update"]
    assert updates == ["PAUSED", "RUNNING", "CANCELLED"]
    assert sum(1 for m in published if m["type"] == "event" and m["event_type"] == "status_change") == 3
    assert [r.getMessage() for r in caplog.records if "transitioned" in r.getMessage()] == [
        f"Execution {EXEC} transitioned: RUNNING -> PAUSED", f"Execution {EXEC} transitioned: PAUSED -> RUNNING",
        f"Execution {EXEC} transitioned: RUNNING -> CANCELLED"]


def test_patch_refusals(client, auth) -> None:
    start(client, auth)
    for body in ({"status": "DONE"}, {"status": "COMPLETED"}, {}, {"status": "QUEUED", "reason": "x"}):
        assert_error(client.patch(f"/api/executions/{EXEC}", json=body, headers=auth["mark"]), 422, "invalid_request")
    assert_error(client.patch(f"/api/executions/{EXEC}", json={"status": "QUEUED"}, headers=auth["eve"]), 404)
    assert_error(client.patch("/api/executions/exec_none", json={"status": "QUEUED"}, headers=auth["mark"]), 404)
    assert_error(client.patch(f"/api/executions/{EXEC}", json={"status": "QUEUED"}, headers=auth["agent"]), 403)
    assert client.patch(f"/api/executions/{EXEC}", json={"status": "QUEUED"}, headers=auth["admin"]).status_code == 200


def test_list_and_detail(client, auth, db) -> None:
    with db.unit_of_work() as s:
        mark, eve = s.get(User, "user_mark"), s.get(User, "user_eve")
        for i in range(3):
            make_execution(s, mark, make_plan(s, mark, f"plan_{i}"), status="QUEUED" if i == 1 else "CREATED",
                           execution_id=f"exec_{i}")
        make_execution(s, eve, execution_id="exec_eve")
    page = client.get("/api/executions?limit=2", headers=auth["mark"]).get_json()
    assert [e["execution_id"] for e in page["executions"]] == ["exec_2", "exec_1"] and page["next_cursor"]
    rest = client.get(f"/api/executions?limit=2&cursor={page['next_cursor']}", headers=auth["mark"]).get_json()
    assert ([e["execution_id"] for e in rest["executions"]], rest["next_cursor"]) == (["exec_0"], None)
    queued = client.get("/api/executions?status=QUEUED", headers=auth["mark"]).get_json()["executions"]
    assert [e["execution_id"] for e in queued] == ["exec_1"]
    assert len(client.get("/api/executions", headers=auth["admin"]).get_json()["executions"]) == 4
    for bad in ("status=DONE", "limit=0", "limit=201", "limit=x", "colour=red"):
        assert_error(client.get(f"/api/executions?{bad}", headers=auth["mark"]), 422, "invalid_request")
    assert_error(client.get("/api/executions?cursor=eHx5", headers=auth["mark"]), 422, "validation_failed")

    detail = client.get("/api/executions/exec_1", headers=auth["mark"]).get_json()
    assert (detail["status"], detail["plan_id"], detail["progress"]["percent"]) == ("QUEUED", "plan_1", 0)
    assert set(detail["tasks"][0]) >= {"task_id", "title", "phase_id", "phase_title", "status", "progress_percent",
                                       "subtasks_completed", "subtasks_total", "error_message", "suggestions",
                                       "next_step_options", "started_at", "completed_at", "subtasks"}
    assert_error(client.get("/api/executions/exec_1", headers=auth["eve"]), 404, "not_found")
    assert client.get("/api/executions/exec_eve", headers=auth["admin"]).status_code == 200
    assert_error(client.get("/api/executions", headers=auth["agent"]), 403, "forbidden")
    assert_error(client.get("/api/executions"), 401, "unauthorized")


def test_events_page_newest_first(client, auth) -> None:
    start(client, auth)
    for target in ("QUEUED", "CANCELLED"):
        client.patch(f"/api/executions/{EXEC}", json={"status": target}, headers=auth["mark"])
    url = f"/api/executions/{EXEC}/events"
    first = client.get(f"{url}?limit=2", headers=auth["mark"]).get_json()
    assert [e["output_data"]["to"] for e in first["events"]] == ["CANCELLED", "QUEUED"]
    assert all(e["source"] == "user" and e["timestamp"].endswith("Z") for e in first["events"])
    rest = client.get(f"{url}?limit=2&before={first['next_before']}", headers=auth["mark"]).get_json()
    assert ([e["event_type"] for e in rest["events"]], rest["next_before"]) == (["execution_created"], None)
    assert_error(client.get(f"{url}?limit=0", headers=auth["mark"]), 422, "invalid_request")
    assert_error(client.get(f"{url}?before=evt_none", headers=auth["mark"]), 404, "not_found")
    assert_error(client.get(url, headers=auth["eve"]), 404, "not_found")


def resolve(client, auth, body: dict, task: str = "task_0", who: str = "mark"):
    return client.post(f"/api/executions/{EXEC}/tasks/{task}/resolve", json=body, headers=auth[who])


def test_resolve_approve_alternative(client, auth, db) -> None:
    start(client, auth, db, block="task_0_a")
    detail = client.get(f"/api/executions/{EXEC}", headers=auth["mark"]).get_json()
    assert detail["status"] == "BLOCKED" and "approve_alternative" in detail["tasks"][0]["next_step_options"]
    err = assert_error(resolve(client, auth, {"option": "approve_alternative"}), 422, "validation_failed")
    assert err["details"] == {"option": "approve_alternative"}
    resp = resolve(client, auth, {"option": "approve_alternative", "params": {"to": "info@example.com"}})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    a = body["tasks"][0]["subtasks"][0]
    assert (body["status"], body["tasks"][0]["status"], a["status"], a["attempt"]) == (
        "RUNNING", "RUNNING", "QUEUED", 2)
    with db.reading() as s:
        assert s.get(ExecutionSubtask, f"{EXEC}:task_0_a").params_override == {"to": "info@example.com"}
    # Both written in one transaction, at one timestamp: their relative order is not defined.
    events = client.get(f"/api/executions/{EXEC}/events?limit=2", headers=auth["mark"]).get_json()["events"]
    by_type = {e["event_type"]: e for e in events}
    assert set(by_type) == {"status_change", "task_resolved"}
    assert by_type["task_resolved"]["output_data"] == {"option": "approve_alternative",
                                                       "params": {"to": "i***@example.com"}}  # masked for people
    raw = client.get(f"/api/executions/{EXEC}/events?limit=2&raw=true", headers=auth["mark"]).get_json()["events"]
    assert {"option": "approve_alternative", "params": {"to": "info@example.com"}} in [e["output_data"] for e in raw]


@pytest.mark.parametrize(("option", "status", "task_status"), [
    ("retry_task", "RUNNING", "RUNNING"),
    ("skip_task", "RUNNING", "SKIPPED"),
    ("cancel_execution", "CANCELLED", "BLOCKED"),
])
def test_resolve_options(client, auth, db, option, status, task_status) -> None:
    start(client, auth, db, block="task_0_a")
    resp = resolve(client, auth, {"option": option, "params": None}, task="task_0_a")  # a subtask names its task
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert (body["status"], body["tasks"][0]["status"], body["tasks"][0]["next_step_options"]) == (
        status, task_status, None)
    assert body["cancel_requested"] is (option == "cancel_execution")


def test_resolve_refusals(client, auth, db) -> None:
    start(client, auth, db, block="task_0_a")
    before = written(db)
    err = assert_error(resolve(client, auth, {"option": "reboot"}), 422, "validation_failed")
    assert err["details"]["offered"] == ["approve_alternative", "retry_task", "skip_task", "cancel_execution"]
    err = assert_error(resolve(client, auth, {"option": "skip_task"}, task="task_1"), 409, "conflict")
    assert err["details"] == {"task_id": "task_1", "status": "QUEUED"}
    assert_error(resolve(client, auth, {"option": "skip_task"}, task="task_9"), 404, "not_found")
    assert_error(resolve(client, auth, {"option": "skip_task"}, who="eve"), 404, "not_found")
    assert_error(resolve(client, auth, {"option": "skip_task"}, who="agent"), 403, "forbidden")
    assert_error(resolve(client, auth, {}), 422, "invalid_request")
    assert_error(resolve(client, auth, {"option": "approve_alternative", "params": ["x"]}), 422, "invalid_request")
    assert written(db) == before
    assert client.get(f"/api/executions/{EXEC}", headers=auth["mark"]).get_json()["status"] == "BLOCKED"
