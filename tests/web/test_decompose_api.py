"""Decomposition and import endpoints: the guide's request and response, applying, bad input → 4xx, no writes."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.models import Plan, PlanSubtask, PlanTask
from tests.factories import make_agent, make_plan, make_user_with_token
from tests.orchestrator.test_decomposition import GUIDE_KEYS, GUIDE_REQUEST, assert_valid
from tests.orchestrator.test_planexe import FIXTURE


@pytest.fixture
def auth(db):
    with db.unit_of_work() as s:
        mark, token = make_user_with_token(s, "mark")
        _, other = make_user_with_token(s, "eve")
        make_agent(s, "agent_larry", owner_id=mark.id,
                   capabilities=[{"action": a, "params": []} for a in GUIDE_REQUEST["agent_capabilities"]])
        _, agent_key = issue_credential(s, agent_id="agent_larry")
        make_agent(s, "agent_other", owner_id=mark.id)
        _, other_key = issue_credential(s, agent_id="agent_other")
        plan = make_plan(s, mark, "plan_1", n_tasks=1, n_subtasks=1)
        plan.tasks.append(PlanTask(id="task_1_1", title="Interview Carol about current workflow", position=1,
                                   description=GUIDE_REQUEST["task"]["description"]))
    h = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    return {"mark": h(token), "eve": h(other), "agent": h(agent_key), "other_agent": h(other_key)}


def subtasks_of(db, task_id: str = "task_1_1") -> list[str]:
    with db.reading() as s:
        return list(s.scalars(select(PlanSubtask.id).where(PlanSubtask.task_id == task_id)
                              .order_by(PlanSubtask.position)))


def test_agent_gets_the_guide_response(client, auth) -> None:
    resp = client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST, headers=auth["agent"])
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == set(GUIDE_KEYS)  # Flask sorts keys on the wire
    assert_valid(body, GUIDE_REQUEST["agent_capabilities"])
    assert body["decomposition_confidence"] >= 0.9


def test_who_may_ask(client, auth) -> None:
    assert client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST, headers=auth["mark"]).status_code == 200
    assert client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST,
                       headers=auth["other_agent"]).status_code == 404
    assert client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST, headers=auth["eve"]).status_code == 404
    assert client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST).status_code == 401
    assert client.post("/api/agents/agent_larry/decompose", json={"task": {}}, headers=auth["mark"]).status_code == 422


def test_requested_capabilities_cannot_exceed_registered_ones(client, auth) -> None:
    body = client.post("/api/agents/agent_larry/decompose", headers=auth["agent"], json={
        **GUIDE_REQUEST, "agent_capabilities": ["conduct_interview", "document_findings", "launch_rocket"]}).get_json()
    assert {s["action"] for s in body["decomposed_subtasks"]} <= {"conduct_interview", "document_findings"}
    assert "launch_rocket" in body["warnings"][0]


def test_apply_above_threshold_stores_subtasks(client, auth, db) -> None:
    resp = client.post("/api/agents/agent_larry/decompose", headers=auth["agent"],
                       json={**GUIDE_REQUEST, "plan_id": "plan_1", "apply": True})
    body = resp.get_json()
    assert resp.status_code == 200 and body["applied"] is True and body["proposal"] is False, body
    assert subtasks_of(db) == body["execution_sequence"]
    with db.reading() as s:
        task = s.get(PlanTask, ("plan_1", "task_1_1"))
        assert task.decomposed and task.decomposition_confidence == body["decomposition_confidence"]
    again = client.post("/api/agents/agent_larry/decompose", headers=auth["agent"],
                        json={**GUIDE_REQUEST, "plan_id": "plan_1", "apply": True})
    assert again.status_code == 409


def test_below_threshold_is_only_a_proposal(client, auth, db) -> None:
    resp = client.post("/api/agents/agent_larry/decompose", headers=auth["mark"], json={
        **GUIDE_REQUEST, "agent_capabilities": ["conduct_interview"], "plan_id": "plan_1", "apply": True})
    body = resp.get_json()
    assert body["applied"] is False and body["proposal"] is True and body["decomposition_confidence"] < 0.75
    assert subtasks_of(db) == []


def test_apply_needs_a_known_plan_and_task(client, auth, db) -> None:
    url = "/api/agents/agent_larry/decompose"
    assert client.post(url, headers=auth["mark"], json={**GUIDE_REQUEST, "apply": True}).status_code == 422
    assert client.post(url, headers=auth["mark"], json={**GUIDE_REQUEST, "plan_id": "nope", "apply": True}
                       ).status_code == 404
    other_task = {**GUIDE_REQUEST, "task": {**GUIDE_REQUEST["task"], "task_id": "task_9"}, "plan_id": "plan_1",
                  "apply": True}
    assert client.post(url, headers=auth["mark"], json=other_task).status_code == 404


def test_operator_stores_an_edited_decomposition(client, auth, db) -> None:
    proposal = client.post("/api/agents/agent_larry/decompose", json=GUIDE_REQUEST, headers=auth["mark"]).get_json()
    edited = proposal["decomposed_subtasks"][:2]
    edited[0]["params"]["to"] = "carol@bittersweet-farm.com"
    url = "/api/plans/plan_1/tasks/task_1_1/decomposition"
    resp = client.post(url, json={"decomposed_subtasks": edited, "notes": "checked by Mark"}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    task = resp.get_json()["task"]
    assert [s["id"] for s in task["subtasks"]] == ["task_1_1_a", "task_1_1_b"]
    assert task["subtasks"][0]["params"]["to"] == "carol@bittersweet-farm.com"
    assert task["decomposed"] and task["decomposition_confidence"] == 1.0
    assert client.post(url, json={"decomposed_subtasks": edited}, headers=auth["mark"]).status_code == 409
    resp = client.post(url, json={"subtasks": edited[:1], "replace": True}, headers=auth["mark"])
    assert resp.status_code == 201 and subtasks_of(db) == ["task_1_1_a"]


@pytest.mark.parametrize(("subtasks", "status"), [
    ([{"subtask_id": "a", "title": "A", "action": "send_email", "depends_on": ["b"]},
      {"subtask_id": "b", "title": "B", "action": "send_email", "depends_on": ["a"]}], 422),
    ([{"subtask_id": "a", "title": "A", "action": "send_email", "depends_on": ["ghost"]}], 422),
    ([{"subtask_id": "task_0_a", "title": "A", "action": "send_email"}], 422),  # id of another task's subtask
    ([{"title": "no id"}], 422),
    ([], 422),
])
def test_bad_decompositions_write_nothing(client, auth, db, subtasks, status) -> None:
    resp = client.post("/api/plans/plan_1/tasks/task_1_1/decomposition", json={"decomposed_subtasks": subtasks},
                       headers=auth["mark"])
    assert resp.status_code == status, resp.get_json()
    assert subtasks_of(db) == []


def test_operator_decomposition_checks_agent_capabilities(client, auth, db) -> None:
    resp = client.post("/api/plans/plan_1/tasks/task_1_1/decomposition", headers=auth["mark"], json={
        "agent_id": "agent_larry", "decomposed_subtasks": [{"subtask_id": "x", "title": "X", "action": "fly"}]})
    assert resp.status_code == 422 and resp.get_json()["error"]["details"]["actions"] == ["fly"]
    assert client.post("/api/plans/plan_1/tasks/task_1_1/decomposition", headers=auth["agent"], json={
        "decomposed_subtasks": [{"subtask_id": "x", "title": "X"}]}).status_code == 403


def n_plans(db) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(Plan))


def fixture_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in FIXTURE.iterdir()}


def test_import_planexe_as_json(client, auth, db) -> None:
    resp = client.post("/api/plans/import", json={"format": "planexe", "files": fixture_files()}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["plan"]["source"] == "planexe" and len(body["plan"]["tasks"]) == 4
    assert any("cycle" in w for w in body["warnings"])
    assert resp.headers["Location"] == f"/api/plans/{body['plan']['id']}"


def test_import_planexe_as_multipart(client, auth) -> None:
    data = {"files": [(io.BytesIO(c.encode()), n) for n, c in fixture_files().items()]}
    resp = client.post("/api/plans/import", data=data, headers=auth["mark"], content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    assert len(resp.get_json()["plan"]["tasks"]) == 4


def test_import_our_plan_file(client, auth) -> None:
    plan = {"id": "plan_file", "goal": "g", "tasks": [{"id": "t1", "title": "T1", "subtasks": [
        {"id": "s1", "title": "S1", "action": "send_email"}]}]}
    resp = client.post("/api/plans/import", headers=auth["mark"],
                       json={"format": "plan", "files": {"plan.yaml": f"plan: {json.dumps(plan)}"}})
    assert resp.status_code == 201 and resp.get_json()["plan"]["id"] == "plan_file"
    assert resp.get_json()["plan"]["source"] == "file"


@pytest.mark.parametrize(("body", "status"), [
    ({"format": "plan", "files": {"p.json": json.dumps({"goal": "g", "tasks": [
        {"id": "a", "title": "A", "prerequisites": ["b"]}, {"id": "b", "title": "B", "prerequisites": ["a"]}]})}},
     422),  # cyclic
    ({"format": "plan", "files": {"p.json": json.dumps({"goal": "g", "tasks": [
        {"id": "a", "title": "A", "prerequisites": ["zzz"]}]})}}, 422),  # unknown ids
    ({"format": "plan", "files": {"p.json": "{not json"}}, 422),
    ({"format": "plan", "files": {"p.yaml": "- just\n- a list\n"}}, 422),
    ({"format": "plan", "files": {"p.json": json.dumps({"tasks": []})}}, 422),  # no goal
    ({"format": "planexe", "files": {"001-wbs_level1.json": "{}"}}, 422),  # missing files
    ({"format": "planexe", "files": {"002-wbs_level2.json": "[oops"}}, 422),
    ({"format": "nope", "files": {"a": "b"}}, 422),
    ({"files": {}}, 422),
])
def test_bad_imports_are_4xx_and_write_nothing(client, auth, db, body, status) -> None:
    before = n_plans(db)
    resp = client.post("/api/plans/import", json=body, headers=auth["mark"])
    assert resp.status_code == status, resp.get_json()
    assert resp.get_json()["error"]["message"]
    assert n_plans(db) == before


def test_import_needs_an_operator(client, auth) -> None:
    resp = client.post("/api/plans/import", json={"files": fixture_files()}, headers=auth["agent"])
    assert resp.status_code == 403
