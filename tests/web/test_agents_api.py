"""POST/GET /api/agents: registration shows the key once, listings are the owner's, bad input writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import hash_token, issue_credential
from orchestrator.models import Agent, ApiCredential
from tests.factories import make_agent
from tests.web.helpers import assert_error


@pytest.fixture
def auth(db, people):
    with db.unit_of_work() as s:
        agent = make_agent(s, "agent_x", owner_id=people.mark_id)
        _, agent_key = issue_credential(s, agent_id=agent.id)
    return people.headers(agent=agent_key)


def n_agents(db) -> tuple[int, int]:
    with db.reading() as s:
        return (s.scalar(select(func.count()).select_from(Agent)),
                s.scalar(select(func.count()).select_from(ApiCredential)))


LARRY = {"name": "Larry", "role": "Full-stack contractor", "webhook_url": "https://larry.example.com/hook",
         "capabilities": ["send_email", {"action": "make_phone_call", "params": ["number", "script"]},
                          "send_email"]}


def test_register_shows_the_key_once_and_stores_its_hash(client, auth, db) -> None:
    resp = client.post("/api/agents", json={**LARRY, "id": "agent_larry_001"}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert resp.headers["Location"] == "/api/agents/agent_larry_001"
    assert (body["id"], body["name"], body["role"], body["webhook_url"]) == (
        "agent_larry_001", "Larry", "Full-stack contractor", "https://larry.example.com/hook")
    assert body["capabilities"] == [{"action": "send_email", "params": []},
                                    {"action": "make_phone_call", "params": ["number", "script"]}]
    assert body["poll_endpoint"] == "/api/agents/agent_larry_001/work" and body["is_active"] is True
    key = body["api_key"]
    with db.reading() as s:
        cred = s.scalar(select(ApiCredential).where(ApiCredential.agent_id == "agent_larry_001"))
        assert cred.token_hash == hash_token(key) and key not in (cred.token_hash, cred.token_prefix)
        assert s.get(Agent, "agent_larry_001").owner_id == "user_mark"
    shown = client.get("/api/agents/agent_larry_001", headers=auth["mark"]).get_json()
    assert "api_key" not in shown and shown["holding"] == []
    # The key is an agent's: it opens no operator endpoint.
    assert_error(client.get("/api/agents", headers={"Authorization": f"Bearer {key}"}), 403, "forbidden")


def test_generated_id_is_a_slug_of_the_name(client, auth) -> None:
    body = client.post("/api/agents", json={"name": "Larry's Phone Bot!"}, headers=auth["mark"]).get_json()
    prefix = "agent_larry_s_phone_bot_"
    assert body["id"].startswith(prefix) and len(body["id"]) == len(prefix) + 6
    assert body["capabilities"] == [] and body["role"] is None


def test_listing_and_reading_are_scoped(client, auth) -> None:
    client.post("/api/agents", json={"name": "Larry", "id": "agent_larry"}, headers=auth["mark"])
    client.post("/api/agents", json={"name": "Eve's", "id": "agent_eve"}, headers=auth["eve"])
    listed = client.get("/api/agents", headers=auth["mark"]).get_json()["agents"]
    assert [a["id"] for a in listed] == ["agent_x", "agent_larry"]
    assert [a["id"] for a in client.get("/api/agents", headers=auth["eve"]).get_json()["agents"]] == ["agent_eve"]
    assert len(client.get("/api/agents", headers=auth["admin"]).get_json()["agents"]) == 3
    assert_error(client.get("/api/agents/agent_larry", headers=auth["eve"]), 404, "not_found")
    assert_error(client.get("/api/agents/agent_nope", headers=auth["mark"]), 404, "not_found")
    assert client.get("/api/agents/agent_larry", headers=auth["admin"]).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"role": "no name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x", "capabilities": [3]}, "capabilities"),
    ({"name": "x", "capabilities": [{"params": ["a"]}]}, "capabilities"),
    ({"name": "x", "capabilities": [{"action": "a", "params": "to"}]}, "capabilities"),
    ({"name": "x", "capabilities": "send_email"}, "capabilities"),
    ({"name": "x", "webhook_url": "ftp://example.com"}, "webhook_url"),
    ({"name": "x", "id": "has space"}, "id"),
    ({"name": "x", "api_key": "mine"}, "api_key"),
])
def test_bad_registrations_are_422_and_write_nothing(client, auth, db, body, field) -> None:
    before = n_agents(db)
    err = assert_error(client.post("/api/agents", json=body, headers=auth["mark"]), 422, "invalid_request")
    assert field in err["details"]
    assert n_agents(db) == before


def test_refusals(client, auth, db) -> None:
    before = n_agents(db)
    assert_error(client.post("/api/agents", json={"name": "x", "id": "agent_x"}, headers=auth["mark"]), 409, "conflict")
    assert_error(client.post("/api/agents", json={"name": "x"}), 401, "unauthorized")
    assert_error(client.post("/api/agents", json={"name": "x"}, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.post("/api/agents", json={"name": "x"}, headers=auth["agent"]), 403, "forbidden")
    assert_error(client.get("/api/agents/agent_x", headers=auth["agent"]), 403, "forbidden")
    assert_error(client.post("/api/agents", data="{", headers={**auth["mark"], "Content-Type": "application/json"}),
                 400)
    assert n_agents(db) == before
