"""Users and their tokens over the API: admins at /api/admin/users, everyone at /api/me/tokens."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from orchestrator.credentials import issue_credential
from orchestrator.models import ApiCredential, User, utcnow
from tests.factories import make_agent, make_user, make_user_with_token


@pytest.fixture
def admin(db):
    """An admin's bearer header, and a plain operator's."""
    with db.unit_of_work() as s:
        boss = make_user(s, "boss", is_admin=True)
        _, admin_token = issue_credential(s, user_id=boss.id, label="admin")
        _, mark_token = make_user_with_token(s, "mark")
    return {"Authorization": f"Bearer {admin_token}"}, {"Authorization": f"Bearer {mark_token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_user(client, headers, username: str = "alice", **extra) -> dict:
    resp = client.post("/api/admin/users", headers=headers, json={"username": username, "password": "correct horse",
                                                                  **extra})
    assert resp.status_code == 201, resp.json
    return resp.json


def issue(client, headers, user_id: str, **body) -> dict:
    resp = client.post(f"/api/admin/users/{user_id}/tokens", headers=headers, json=body)
    assert resp.status_code == 201, resp.json
    return resp.json


def test_admin_creates_lists_and_reads_users(client, admin) -> None:
    boss, _ = admin
    alice = create_user(client, boss, display_name="Alice A.", email="alice@example.com", is_admin=False)
    assert alice["username"] == "alice" and alice["is_active"] and not alice["is_admin"]
    assert "password" not in alice and "password_hash" not in alice
    listing = client.get("/api/admin/users", headers=boss).json["users"]
    assert [u["username"] for u in listing] == ["alice", "boss", "mark"]
    assert client.get(f"/api/admin/users/{alice['id']}", headers=boss).json == alice
    assert client.get("/api/admin/users/user_nobody", headers=boss).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"username": "bad name"}, "username"),
    ({"username": ""}, "username"),
    ({"username": "x" * 121}, "username"),
    ({"username": "carl\u0000"}, "username"),
    ({"username": "carl", "password": "short"}, "password"),
    ({"username": "carl", "password": "long enough\u0000"}, "password"),
    ({"username": "carl", "is_admin": "yes please"}, "is_admin"),
    ({"username": "carl", "email": "not an address"}, "email"),
    ({"username": "carl", "role": "root"}, "role"),
])
def test_bad_new_users_are_422(client, admin, body: dict, field: str) -> None:
    resp = client.post("/api/admin/users", headers=admin[0], json=body)
    assert resp.status_code == 422, resp.json
    error = resp.json["error"]
    assert field in str(error.get("details")) or field in error["message"].lower()


def test_usernames_are_unique_ignoring_case(client, admin) -> None:
    create_user(client, admin[0], "alice")
    resp = client.post("/api/admin/users", headers=admin[0], json={"username": "Alice", "password": "another one"})
    assert resp.status_code == 409 and resp.json["error"]["code"] == "conflict"


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/admin/users"), ("POST", "/api/admin/users"), ("GET", "/api/admin/users/user_boss"),
    ("POST", "/api/admin/users/user_boss/deactivate"), ("POST", "/api/admin/users/user_boss/activate"),
    ("PUT", "/api/admin/users/user_boss/password"), ("GET", "/api/admin/users/user_boss/tokens"),
    ("POST", "/api/admin/users/user_boss/tokens"), ("DELETE", "/api/admin/users/user_boss/tokens/cred_x"),
])
def test_non_admins_are_told_nothing_exists(client, db, admin, method: str, path: str) -> None:
    with db.unit_of_work() as s:
        _, agent_key = issue_credential(s, agent_id=make_agent(s, "agent_x").id)
    body = {"username": "eve", "password": "long enough", "name": "n"}
    for headers in (admin[1], bearer(agent_key)):
        resp = client.open(path, method=method, headers=headers, json=body)
        assert resp.status_code == 404 and resp.json["error"]["code"] == "not_found", (headers, resp.json)
    assert client.open(path, method=method, json=body).status_code == 401
    with db.reading() as s:
        assert s.scalar(select(User).where(User.username == "eve")) is None
        assert s.get(User, "user_boss").is_active


def test_admin_issues_lists_and_revokes_a_users_tokens(client, admin) -> None:
    boss, _ = admin
    alice = create_user(client, boss)
    expires = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    first = issue(client, boss, alice["id"], name="ci", expires_at=expires.isoformat())
    second = issue(client, boss, alice["id"], name="laptop")
    assert first["token"].startswith("usr_") and first["name"] == "ci" and first["status"] == "active"
    assert first["expires_at"] == expires.isoformat().replace("+00:00", "Z") and second["expires_at"] is None
    assert client.get("/api/me", headers=bearer(first["token"])).json["username"] == "alice"

    listing = client.get(f"/api/admin/users/{alice['id']}/tokens", headers=boss).json["tokens"]
    assert [t["id"] for t in listing] == [second["id"], first["id"]]  # newest first
    assert all("token" not in t for t in listing) and listing[1]["prefix"] == first["token"][:12]

    resp = client.delete(f"/api/admin/users/{alice['id']}/tokens/{first['id']}", headers=boss)
    assert resp.status_code == 200 and resp.json["status"] == "revoked" and resp.json["revoked_at"]
    assert client.get("/api/me", headers=bearer(first["token"])).status_code == 401
    assert client.get("/api/me", headers=bearer(second["token"])).status_code == 200
    # Another user's token id under this user is not found; revoking again changes nothing.
    assert client.delete(f"/api/admin/users/user_mark/tokens/{second['id']}", headers=boss).status_code == 404
    again = client.delete(f"/api/admin/users/{alice['id']}/tokens/{first['id']}", headers=boss)
    assert again.status_code == 200 and again.json["revoked_at"] == resp.json["revoked_at"]


@pytest.mark.parametrize("body", [
    {"expires_at": "2001-01-01T00:00:00Z"},
    {"expires_at": "2030-01-01T00:00:00"},  # no offset
    {"expires_in_seconds": 10},
    {"expires_in_seconds": "3600"},
    {"expires_at": "2100-01-01T00:00:00Z", "expires_in_seconds": 3600},
    {"name": ""},
    {"name": "n" * 201},
    {"scopes": ["all"]},
])
def test_bad_token_requests_are_422(client, admin, body: dict) -> None:
    alice = create_user(client, admin[0])
    resp = client.post(f"/api/admin/users/{alice['id']}/tokens", headers=admin[0], json=body)
    assert resp.status_code == 422, resp.json


def test_expired_token_is_refused(client, db, admin) -> None:
    with db.unit_of_work() as s:
        _, stale = issue_credential(s, user_id="user_mark", expires_at=utcnow() - timedelta(seconds=1))
    assert client.get("/api/me", headers=bearer(stale)).status_code == 401
    # A token that expires while this process has it cached is refused from its expiry on.
    soon = issue(client, admin[0], "user_mark", name="soon", expires_in_seconds=60)
    expiry = utcnow() + timedelta(seconds=1.5)
    with db.unit_of_work() as s:
        s.get(ApiCredential, soon["id"]).expires_at = expiry
    assert client.get("/api/me", headers=bearer(soon["token"])).status_code == 200  # cached now
    while utcnow() <= expiry:
        time.sleep(0.1)
    assert client.get("/api/me", headers=bearer(soon["token"])).status_code == 401
    listing = client.get("/api/admin/users/user_mark/tokens", headers=admin[0]).json["tokens"]
    assert {t["id"]: t["status"] for t in listing}[soon["id"]] == "expired"


def test_deactivate_and_activate(client, admin) -> None:
    boss, _ = admin
    alice = create_user(client, boss)
    token = issue(client, boss, alice["id"], name="t")["token"]
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    resp = client.post(f"/api/admin/users/{alice['id']}/deactivate", headers=boss)
    assert resp.status_code == 200 and not resp.json["is_active"] and resp.json["deactivated_at"]
    assert client.get("/api/me", headers=bearer(token)).status_code == 401
    refused = client.post(f"/api/admin/users/{alice['id']}/tokens", headers=boss, json={"name": "n"})
    assert refused.status_code == 422
    resp = client.post(f"/api/admin/users/{alice['id']}/activate", headers=boss)
    assert resp.json["is_active"] and resp.json["deactivated_at"] is None
    assert client.get("/api/me", headers=bearer(token)).status_code == 200  # not revoked: works again


def test_the_last_active_admin_cannot_be_deactivated(client, admin) -> None:
    boss, _ = admin
    resp = client.post("/api/admin/users/user_boss/deactivate", headers=boss)
    assert resp.status_code == 409
    other = create_user(client, boss, "deputy", is_admin=True)
    assert client.post("/api/admin/users/user_boss/deactivate", headers=boss).status_code == 200
    assert client.get("/api/admin/users", headers=boss).status_code == 401  # boss's own token is now dead
    assert client.get(f"/api/admin/users/{other['id']}", headers=boss).status_code == 401


def test_set_password(client, admin) -> None:
    boss, _ = admin
    alice = create_user(client, boss)
    url = f"/api/admin/users/{alice['id']}/password"
    assert client.put(url, headers=boss, json={"password": "short"}).status_code == 422
    assert client.put(url, headers=boss, json={}).status_code == 422
    assert client.put(url, headers=boss, json={"password": "a new long one"}).status_code == 204
    from tests.web.test_dashboard import login

    assert login(client, "alice", "correct horse").status_code == 401
    assert login(client, "alice", "a new long one").status_code == 302


def test_users_manage_their_own_tokens(client, admin) -> None:
    _, mark = admin
    mine = client.post("/api/me/tokens", headers=mark, json={"name": "script", "expires_in_seconds": 3600})
    assert mine.status_code == 201 and mine.json["token"].startswith("usr_")
    me = client.get("/api/me", headers=bearer(mine.json["token"])).json
    assert me["username"] == "mark" and me["token_id"] == mine.json["id"]
    names = [t["name"] for t in client.get("/api/me/tokens", headers=mark).json["tokens"]]
    assert "script" in names
    # Someone else's token is not found; one's own, even the one in use, can be revoked.
    boss_token_id = client.get("/api/me", headers=admin[0]).json["token_id"]
    assert client.delete(f"/api/me/tokens/{boss_token_id}", headers=mark).status_code == 404
    assert client.get("/api/me", headers=admin[0]).status_code == 200
    short = bearer(mine.json["token"])
    assert client.delete(f"/api/me/tokens/{mine.json['id']}", headers=short).json["status"] == "revoked"
    assert client.get("/api/me/tokens", headers=short).status_code == 401


def test_a_token_cannot_issue_a_token_that_outlives_it(client, admin) -> None:
    _, mark = admin
    hour = client.post("/api/me/tokens", headers=mark, json={"name": "hour", "expires_in_seconds": 3600}).json
    short = bearer(hour["token"])
    for body in ({"name": "forever"}, {"name": "day", "expires_in_seconds": 86400}):
        resp = client.post("/api/me/tokens", headers=short, json=body)
        assert resp.status_code == 422 and "outlive" in resp.json["error"]["message"]
    assert client.post("/api/me/tokens", headers=short, json={"expires_in_seconds": 600}).status_code == 201
    # A token without an expiry may issue any.
    assert client.post("/api/me/tokens", headers=mark, json={"name": "forever"}).status_code == 201


def test_agents_have_no_me(client, db) -> None:
    with db.unit_of_work() as s:
        _, key = issue_credential(s, agent_id=make_agent(s, "agent_y").id)
    assert client.get("/api/me/tokens", headers=bearer(key)).status_code == 403
    assert client.post("/api/me/tokens", headers=bearer(key), json={}).status_code == 403
