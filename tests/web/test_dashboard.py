"""Dashboard pages with the Flask test client: login, the session on the API with its CSRF token, scope."""

from __future__ import annotations

import re

import pytest

from orchestrator.credentials import hash_password, issue_credential
from orchestrator.models import User
from tests.factories import make_agent, make_user
from tests.workers.helpers import queued_execution


@pytest.fixture
def scene(db):
    """Mark owns a queued execution (through queued_execution) and can log in; Eve owns nothing."""
    scene = queued_execution(db, n_tasks=2, n_subtasks=2)
    with db.unit_of_work() as s:
        mark = s.get(User, scene.owner_id)
        mark.username = "mark"
        mark.password_hash = hash_password("pw")
        make_user(s, "eve", password_hash=hash_password("evepw"))
    return scene


def login(client, username: str, password: str, next_path: str | None = None):
    """Log in as a browser does: the login page's form carries its CSRF token."""
    url = "/login" + (f"?next={next_path}" if next_path else "")
    return client.post(url, data={"username": username, "password": password, "csrf_token": form_csrf(client)})


def form_csrf(client) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/login").get_data(as_text=True))
    assert match
    return match.group(1)


def csrf_of(client) -> str:
    page = client.get("/executions").get_data(as_text=True)
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match, page
    return match.group(1)


@pytest.mark.parametrize("path", ["/executions", "/executions/exec_x", "/agents"])
def test_pages_require_login(client, db, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 302
    assert resp.headers["Location"].startswith("/login?next=")


def test_root_redirects_to_executions(client, db) -> None:
    resp = client.get("/")
    assert resp.status_code == 302 and resp.headers["Location"] == "/executions"


def test_bad_password_and_unknown_user_are_refused(client, scene) -> None:
    for username, password in [("mark", "wrong"), ("nobody", "pw"), ("mark", "")]:
        resp = login(client, username, password)
        assert resp.status_code == 401
        assert "Wrong username or password." in resp.get_data(as_text=True)
    assert client.get("/executions").status_code == 302


def test_inactive_user_cannot_log_in(client, scene, db) -> None:
    with db.unit_of_work() as s:
        s.get(User, scene.owner_id).is_active = False
    assert login(client, "mark", "pw").status_code == 401


def test_login_shows_the_users_executions_and_follows_next(client, scene) -> None:
    resp = login(client, "mark", "pw", next_path=f"/executions/{scene.execution_id}")
    assert resp.status_code == 302 and resp.headers["Location"] == f"/executions/{scene.execution_id}"
    listing = client.get("/executions").get_data(as_text=True)
    assert scene.execution_id in listing and "QUEUED" in listing
    detail = client.get(f"/executions/{scene.execution_id}")
    assert detail.status_code == 200
    page = detail.get_data(as_text=True)
    assert "Subtask 1.1" in page and 'id="detail-data"' in page


def test_login_never_redirects_off_site(client, scene) -> None:
    for target in ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)"]:
        resp = login(client, "mark", "pw", next_path=target)
        assert resp.headers["Location"] == "/executions"


def test_scope_other_users_see_nothing(client, scene, db) -> None:
    with db.unit_of_work() as s:
        make_agent(s, "agent_of_mark", owner_id=scene.owner_id, role="Mailer")
    login(client, "eve", "evepw")
    assert scene.execution_id not in client.get("/executions").get_data(as_text=True)
    resp = client.get(f"/executions/{scene.execution_id}")
    assert resp.status_code == 404 and "Not found" in resp.get_data(as_text=True)
    assert "agent_of_mark" not in client.get("/agents").get_data(as_text=True)
    # Nor through the API with her session.
    assert client.get(f"/api/executions/{scene.execution_id}").status_code == 404
    login(client, "mark", "pw")
    agents = client.get("/agents").get_data(as_text=True)
    assert "agent_of_mark" in agents and "Mailer" in agents


def test_session_authenticates_the_api_and_writes_need_the_csrf_token(client, scene) -> None:
    assert client.get(f"/api/executions/{scene.execution_id}").status_code == 401
    login(client, "mark", "pw")
    assert client.get(f"/api/executions/{scene.execution_id}").json["status"] == "QUEUED"
    url = f"/api/executions/{scene.execution_id}"
    assert client.patch(url, json={"status": "CANCELLED"}).status_code == 403
    assert client.patch(url, json={"status": "CANCELLED"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    token = csrf_of(client)
    assert client.post("/api/tokens/stream", headers={"X-CSRF-Token": token}).status_code == 201
    resp = client.patch(url, json={"status": "CANCELLED"}, headers={"X-CSRF-Token": token})
    assert resp.status_code == 200 and resp.json["status"] == "CANCELLED"


def test_bearer_tokens_need_no_csrf_token(client, scene, db) -> None:
    with db.unit_of_work() as s:
        _, token = issue_credential(s, user_id=scene.owner_id)
    resp = client.patch(f"/api/executions/{scene.execution_id}", json={"status": "CANCELLED"},
                        headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200


def test_logout_needs_the_csrf_token(client, scene) -> None:
    login(client, "mark", "pw")
    client.post("/logout", data={"csrf_token": "forged"})
    assert client.get("/executions").status_code == 200
    client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert client.get("/executions").status_code == 302


def test_agent_keys_do_not_open_pages(client, scene) -> None:
    resp = client.get("/executions", headers={"Authorization": f"Bearer {scene.agent_key}"})
    assert resp.status_code == 403


def test_user_data_is_escaped(client, scene, db) -> None:
    with db.unit_of_work() as s:
        make_agent(s, "agent_xss", owner_id=scene.owner_id, role="<script>alert(1)</script>")
    login(client, "mark", "pw")
    page = client.get("/agents").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_the_log_filter_offers_every_event_type_the_system_writes(client, scene) -> None:
    from orchestrator.event_log import SYSTEM_EVENT_TYPES

    login(client, "mark", "pw")
    page = client.get(f"/executions/{scene.execution_id}").get_data(as_text=True)
    for kind in SYSTEM_EVENT_TYPES:
        assert f'<option value="{kind}">' in page
