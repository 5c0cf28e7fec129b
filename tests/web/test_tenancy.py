"""Tenancy on the operator side: agents act as plain operators, ids cannot collide, duplicate ids are 409s."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from orchestrator.credentials import issue_credential
from orchestrator.ids import ID_PATTERN
from orchestrator.models import Plan, PlanSubtask, PlanTask, User
from orchestrator.plan_schema import ID
from tests.factories import make_agent, make_execution, make_plan, make_user_with_token
from tests.orchestrator.test_decomposition import GUIDE_REQUEST
from tests.web.helpers import assert_error

CAPABILITIES = [{"action": a, "params": []} for a in GUIDE_REQUEST["agent_capabilities"]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tenants(db) -> dict[str, dict[str, str]]:
    """Ann (an admin) and Bob (a plain operator), each with a plan whose task_1_1 waits to be decomposed
    (plan_<name>), a plan ready to run (ready_<name>) and an agent with a key."""
    keys = {}
    with db.unit_of_work() as s:
        for name, admin in (("ann", True), ("bob", False)):
            user, keys[name] = make_user_with_token(s, name)
            user.is_admin = admin
            plan = make_plan(s, user, f"plan_{name}", n_tasks=1, n_subtasks=1)
            plan.tasks.append(PlanTask(id="task_1_1", title=GUIDE_REQUEST["task"]["title"], position=1,
                                       description=GUIDE_REQUEST["task"]["description"]))
            make_plan(s, user, f"ready_{name}")
            make_agent(s, f"agent_{name}", owner_id=user.id, capabilities=CAPABILITIES)
            _, keys[f"agent_{name}"] = issue_credential(s, agent_id=f"agent_{name}")
    return {who: bearer(key) for who, key in keys.items()}


def decompose(client, agent: str, plan_id: str, headers: dict[str, str], **extra):
    return client.post(f"/api/agents/{agent}/decompose", headers=headers,
                       json={**GUIDE_REQUEST, "plan_id": plan_id, **extra})


def task_state(db, plan_id: str) -> tuple:
    with db.reading() as s:
        task = s.get(PlanTask, (plan_id, "task_1_1"))
        subs = list(s.scalars(select(PlanSubtask.id).where(PlanSubtask.plan_id == plan_id,
                                                           PlanSubtask.task_id == "task_1_1")))
        return task.decomposed, task.decomposition_confidence, task.decomposition_notes, subs


@pytest.mark.parametrize("extra", [{}, {"apply": True}, {"apply": True, "replace": True}])
def test_an_admins_agent_cannot_reach_another_operators_plan(client, tenants, db, extra) -> None:
    before = task_state(db, "plan_bob")
    err = assert_error(decompose(client, "agent_ann", "plan_bob", tenants["agent_ann"], **extra), 404, "not_found")
    assert err["details"] == {"plan_id": "plan_bob"}  # the same answer as for a plan that does not exist
    assert task_state(db, "plan_bob") == before == (False, None, None, [])


@pytest.mark.parametrize("agent", ["agent_ann", "agent_bob"])
def test_an_agent_decomposes_into_its_own_operators_plan(client, tenants, db, agent) -> None:
    own = agent.replace("agent_", "plan_")
    resp = decompose(client, agent, own, tenants[agent], apply=True)
    assert resp.status_code == 200 and resp.get_json()["applied"] is True, resp.get_json()
    assert task_state(db, own)[3] == resp.get_json()["execution_sequence"]


def test_a_plain_operators_agent_cannot_reach_the_admins_plan(client, tenants, db) -> None:
    assert_error(decompose(client, "agent_bob", "plan_ann", tenants["agent_bob"], apply=True), 404, "not_found")
    assert task_state(db, "plan_ann")[3] == []


def test_the_admin_keeps_admin_rights_when_acting_with_his_own_token(client, tenants, db) -> None:
    # The operator, not the agent, is the admin: Ann's own token may use her agent on Bob's plan.
    resp = decompose(client, "agent_ann", "plan_bob", tenants["ann"], apply=True)
    assert resp.status_code == 200 and resp.get_json()["applied"] is True, resp.get_json()


def test_a_deactivated_operators_agent_reaches_no_plan(client, tenants, db) -> None:
    with db.unit_of_work() as s:
        s.get(User, "user_bob").is_active = False
    assert_error(decompose(client, "agent_bob", "plan_bob", tenants["agent_bob"]), 404, "not_found")


def test_an_admins_agent_polls_only_its_operators_work(client, tenants, db) -> None:
    with db.unit_of_work() as s:
        make_execution(s, s.get(User, "user_bob"), s.get(Plan, "ready_bob"), status="QUEUED")
    assert client.get("/api/agents/agent_ann/work", headers=tenants["agent_ann"]).status_code == 204
    assert client.get("/api/agents/agent_bob/work", headers=tenants["agent_bob"]).status_code == 200


# Ids ------------------------------------------------------------------------------------------------------


def test_the_schema_and_the_domain_share_one_id_alphabet() -> None:
    samples = ["a", "A.b-c_9", "x" * 128, "x" * 129, "a:b", "-a", ".a", "a\n", "a b", "a/b", "a\x00", "é", ""]
    for value in samples:
        try:
            ID(value)
            schema_ok = True
        except Exception:
            schema_ok = False
        assert schema_ok == (ID_PATTERN.fullmatch(value) is not None), repr(value)


def test_colliding_row_keys_are_refused_not_500(client, tenants, db) -> None:
    """Execution X:x of a plan with task y, and execution X of a plan with task x:y, would both key a row
    X:x:y: a colon is refused wherever an id is named."""
    plan_y = {"id": "plan_y", "goal": "g", "tasks": [{"id": "y", "title": "Y", "subtasks": [
        {"id": "y_a", "title": "Y a", "action": "send_email"}]}]}
    plan_xy = {"id": "plan_xy", "goal": "g", "tasks": [{"id": "x:y", "title": "XY", "subtasks": [
        {"id": "x:y_a", "title": "XY a", "action": "send_email"}]}]}
    assert client.post("/api/plans", json=plan_y, headers=tenants["ann"]).status_code == 201
    resp = client.post("/api/executions", json={"plan_id": "plan_y", "execution_id": "X:x"}, headers=tenants["ann"])
    assert "execution_id" in assert_error(resp, 422, "invalid_request")["details"]
    resp = client.post("/api/plans", json=plan_xy, headers=tenants["bob"])
    assert set(assert_error(resp, 422, "invalid_request")["details"]["tasks"]["0"]) == {"id", "subtasks"}
    with db.reading() as s:
        assert s.get(Plan, "plan_xy") is None
    resp = client.post("/api/executions", json={"plan_id": "plan_y", "execution_id": "X"}, headers=tenants["ann"])
    assert resp.status_code == 201, resp.get_json()


@pytest.mark.parametrize(("url", "body"), [
    ("/api/plans", {"id": "p:1", "goal": "g"}),
    ("/api/agents", {"id": "a:1", "name": "Larry"}),
    ("/api/executions", {"plan_id": "ready_ann", "agent_id": "agent:ann"}),
])
def test_every_id_field_refuses_a_colon(client, tenants, url, body) -> None:
    resp = client.post(url, json=body, headers=tenants["ann"])
    assert set(assert_error(resp, 422, "invalid_request")["details"]) & {"id", "agent_id"}


def test_decompose_refuses_an_unusable_plan_id(client, tenants) -> None:
    resp = decompose(client, "agent_ann", "plan:ann", tenants["agent_ann"])
    assert "plan_id" in assert_error(resp, 422, "invalid_request")["details"]


def test_an_execution_id_too_long_for_the_plans_ids_is_422(client, tenants) -> None:
    # Execution rows are keyed "{execution}:{task}" in a column of 160 characters.
    plan = {"id": "plan_long", "goal": "g", "tasks": [{"id": "t" * 100, "title": "T", "subtasks": [
        {"id": "s", "title": "S", "action": "send_email"}]}]}
    assert client.post("/api/plans", json=plan, headers=tenants["ann"]).status_code == 201
    resp = client.post("/api/executions", json={"plan_id": "plan_long", "execution_id": "e" * 128},
                       headers=tenants["ann"])
    assert assert_error(resp, 422, "validation_failed")["details"] == {"execution_id": "e" * 128, "max_length": 59}
    resp = client.post("/api/executions", json={"plan_id": "plan_long", "execution_id": "e" * 59},
                       headers=tenants["ann"])
    assert resp.status_code == 201, resp.get_json()


@pytest.mark.parametrize(("method", "path", "who"), [
    ("GET", "/api/executions/a:b", "ann"),
    ("GET", "/api/executions/%00", "ann"),
    ("GET", "/api/executions/abc%0A", "ann"),
    ("PATCH", "/api/executions/a:b", "ann"),
    ("GET", "/api/plans/plan_ann%00", "ann"),
    ("GET", "/api/plans/.hidden", "ann"),
    ("GET", "/api/agents/agent:ann", "ann"),
    ("GET", "/api/agents/agent_ann:x/work", "agent_ann"),
    ("POST", "/api/agents/agent_ann%00/decompose", "agent_ann"),
    ("POST", "/api/plans/plan_ann/tasks/task:1/decomposition", "ann"),
    ("GET", "/api/events/evt%3A1", "ann"),
    ("GET", f"/api/plans/{'p' * 129}", "ann"),
])
def test_a_url_id_outside_the_alphabet_is_a_json_404(client, tenants, method, path, who) -> None:
    err = assert_error(client.open(path, method=method, headers=tenants[who], json={}), 404, "not_found")
    assert "details" not in err  # the router's answer: no view ran, so no lookup either


def test_a_url_id_inside_the_alphabet_still_reaches_the_view(client, tenants) -> None:
    assert client.get("/api/plans/plan_ann", headers=tenants["ann"]).status_code == 200
    err = assert_error(client.get("/api/plans/plan_nope", headers=tenants["ann"]), 404, "not_found")
    assert err["details"] == {"plan_id": "plan_nope"}  # the domain's 404, not the router's


# Conflicts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "body", "detail"), [
    ("/api/plans", {"id": "plan_same", "goal": "g"}, {"plan_id": "plan_same"}),
    ("/api/agents", {"id": "agent_same", "name": "Larry"}, {"agent_id": "agent_same"}),
    ("/api/executions", {"plan_id": "ready_bob", "execution_id": "exec_same"}, {"execution_id": "exec_same"}),
])
def test_a_second_create_with_the_same_id_is_409(client, tenants, url, body, detail) -> None:
    assert client.post(url, json=body, headers=tenants["bob"]).status_code == 201
    assert assert_error(client.post(url, json=body, headers=tenants["bob"]), 409, "conflict")["details"] == detail
