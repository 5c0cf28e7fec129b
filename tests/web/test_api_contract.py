"""The API keeps its OpenAPI document: schemathesis generates requests for every operation from the
document, sends them to a live stack (the app over real HTTP, a Celery worker, Redis, the database),
and checks each answer: no 5xx, a documented status, a documented content type, a body that matches.
Requests that keep the document (positive) and requests that break it (negative: those must be 4xx).

Operators' requests carry a token; agents' are signed with the agent's secret, as `AgentClient` signs
them. Ids in the path are those of a real agent, plan and execution half of the time, so generated
bodies reach the rules behind the 404s. Bounded: SCHEMATHESIS_MAX_EXAMPLES per operation (default 8).
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator import signing
from tests.web.conftest import bearer

pytestmark = [pytest.mark.integration, pytest.mark.contract]

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Operations that would take the agent's own credentials away from the rest of the run.
KEEP_RANDOM_IDS = {("POST", "/api/agents/{agent_id}/signing-secret"), ("PATCH", "/api/agents/{agent_id}")}


class Bearer(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class SignedAgent(Bearer):
    """An agent's key, and the four signature headers over the request exactly as it goes out."""

    def __init__(self, token: str, secret: str) -> None:
        super().__init__(token)
        self.secret = secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        super().__call__(r)
        body = r.body or b""
        body = body.encode() if isinstance(body, str) else body
        r.headers.update(signing.sign(self.secret, r.method or "GET", r.path_url, body))
        return r


@pytest.fixture
def stack(db, redis, live_server, worker, people) -> dict:
    """An agent (signing required), a plan and a queued execution of Mark's, made through the API."""
    url, mark = live_server.url, people.headers()["mark"]
    agent = requests.post(f"{url}/api/agents", json={"name": "Contract", "capabilities": ["send_email"]},
                          headers=mark, timeout=10).json()
    plan = requests.post(f"{url}/api/plans", headers=mark, timeout=10, json={
        "title": "Contract", "goal": "Keep the contract", "tasks": [{"id": "t1", "title": "Task", "subtasks": [
            {"id": "s1", "title": "Mail", "action": "send_email", "params": {"to": "a@example.com"}}]}]}).json()
    ex = requests.post(f"{url}/api/executions", json={"plan_id": plan["id"], "agent_id": agent["id"]},
                       headers=mark, timeout=10).json()
    queued = requests.patch(f"{url}/api/executions/{ex['execution_id']}", json={"status": "QUEUED"}, headers=mark,
                            timeout=10)
    assert queued.status_code == 200, queued.text
    return {"agent": SignedAgent(agent["api_key"], agent["signing_secret"]), "operator": Bearer(people.tokens["mark"]),
            "admin": Bearer(people.tokens["admin"]),
            "ids": {"agent_id": agent["id"], "plan_id": plan["id"], "execution_id": ex["execution_id"],
                    "task_id": "t1"}}


def _auth(operation, stack: dict) -> requests.auth.AuthBase:
    security = operation.definition.raw.get("security") or []
    names = {name for requirement in security for name in requirement}
    if "agentKey" in names:
        return stack["agent"]
    admin_only = "404" in operation.definition.raw["responses"] and "403" not in operation.definition.raw["responses"]
    return stack["admin"] if admin_only else stack["operator"]


def _use_real_ids(values: dict | None, ids: dict[str, str]) -> None:
    """Half of the generated ids (by their length) become real ones, so both 404s and what lies behind
    them are reached."""
    for name, value in (values or {}).items():
        if name in ids and isinstance(value, str) and len(value) % 2 == 0:
            values[name] = ids[name]


def _run(operation, stack: dict, base_url: str, mode: GenerationMode) -> None:
    auth = _auth(operation, stack)
    real_ids = (operation.method.upper(), operation.path) not in KEEP_RANDOM_IDS

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def check(case) -> None:
        if real_ids:
            _use_real_ids(case.path_parameters, stack["ids"])
        body = case.body if isinstance(case.body, dict) else {}
        events = body.get("events") if isinstance(body.get("events"), list) else []
        for item in [body, *[e for e in events if isinstance(e, dict)]]:
            _use_real_ids(item, stack["ids"])
            if auth is stack["agent"] and "agent_id" in item:
                item["agent_id"] = stack["ids"]["agent_id"]  # an agent reports as itself, or is refused (403)
        case.call_and_validate(base_url=base_url, auth=auth, checks=CHECKS, timeout=30)

    check()


def test_every_operation_keeps_the_document(stack, live_server):
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/openapi.json")
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _run(operation, stack, live_server.url, mode)
            except Unsatisfiable:  # nothing to break: an operation without inputs has no negative case
                assert mode is GenerationMode.NEGATIVE, operation.path
            except Exception as exc:  # every operation is tried; all failures are reported together
                failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_an_unsigned_agent_request_is_refused_as_documented(stack, live_server):
    """The signing is what the contract run exercises: without it, the agent is refused with 401."""
    resp = requests.get(f"{live_server.url}/api/agents/{stack['ids']['agent_id']}/work",
                        headers=bearer(stack["agent"].token), timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "signature_required"
