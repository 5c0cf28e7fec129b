"""Stream tokens and open WebSockets stop at once when their access is taken away (closed 1008):
a revoked token, a deactivated user, a logout. Over real HTTP and WebSockets (the live server)."""

from __future__ import annotations

import json
import re

import pytest
import requests
import simple_websocket

from orchestrator.credentials import hash_password, issue_credential
from orchestrator.models import User
from tests.factories import make_user
from tests.web.test_stream import commit_events, connect, owner_with_executions, receive_events, stream_token

pytestmark = pytest.mark.integration


@pytest.fixture
def boss(db) -> dict[str, str]:
    with db.unit_of_work() as s:
        _, token = issue_credential(s, user_id=make_user(s, "boss", is_admin=True).id)
    return {"Authorization": f"Bearer {token}"}


def api(live_server, method: str, path: str, headers: dict[str, str], **kw) -> requests.Response:
    return requests.request(method, live_server.url + path, headers=headers, timeout=10, **kw)


def assert_closed_1008(ws) -> None:
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        for _ in range(3):  # a message already on its way may come first
            ws.receive(timeout=10)
    assert closed.value.reason == 1008


def subscribed(live_server, stream: str, execution: str):
    """A socket on the execution's stream, known to be subscribed and past its checks: the snapshot
    it sends first comes after both."""
    ws = connect(live_server, stream, path=f"/api/executions/{execution}/stream")
    assert json.loads(ws.receive(timeout=10))["type"] == "execution_update"
    return ws


def live_socket(db, redis, migrated, live_server, owner: str, token: str, execution: str):
    ws = subscribed(live_server, stream_token(live_server, token), execution)
    commit_events(db, redis, migrated, owner, [execution])
    receive_events(ws, 1)
    return ws


def token_id(live_server, token: str) -> str:
    return api(live_server, "GET", "/api/me", {"Authorization": f"Bearer {token}"}).json()["token_id"]


def test_revoking_a_token_closes_its_sockets_and_voids_its_stream_tokens(db, redis, migrated, live_server,
                                                                        boss) -> None:
    owner, token, (ex,) = owner_with_executions(db, 1)
    with db.unit_of_work() as s:
        _, other_token = issue_credential(s, user_id=owner, label="other")
    ws = live_socket(db, redis, migrated, live_server, owner, token, ex)
    kept = live_socket(db, redis, migrated, live_server, owner, other_token, ex)
    unused = stream_token(live_server, token)
    try:
        resp = api(live_server, "DELETE", f"/api/admin/users/{owner}/tokens/{token_id(live_server, token)}", boss)
        assert resp.status_code == 200
        assert_closed_1008(ws)
        assert_closed_1008(connect(live_server, unused))
        # The same user's socket opened with another token stays open and keeps receiving.
        after = commit_events(db, redis, migrated, owner, [ex])
        assert [m["event_id"] for m in receive_events(kept, 1)] == after
    finally:
        kept.close()


def test_deactivating_a_user_closes_its_sockets_and_voids_its_stream_tokens(db, redis, migrated, live_server,
                                                                           boss) -> None:
    owner, token, (ex,) = owner_with_executions(db, 1)
    ws = live_socket(db, redis, migrated, live_server, owner, token, ex)
    unused = stream_token(live_server, token)
    assert api(live_server, "POST", f"/api/admin/users/{owner}/deactivate", boss).status_code == 200
    assert_closed_1008(ws)
    assert_closed_1008(connect(live_server, unused))


def test_a_stream_token_of_a_revoked_token_cannot_open_a_socket(db, live_server) -> None:
    owner, token, _ = owner_with_executions(db, 1)
    unused = stream_token(live_server, token)
    tid = token_id(live_server, token)
    assert api(live_server, "DELETE", f"/api/me/tokens/{tid}", {"Authorization": f"Bearer {token}"}).ok
    assert_closed_1008(connect(live_server, unused))


def _dashboard_login(live_server, username: str, password: str) -> tuple[requests.Session, str]:
    browser = requests.Session()
    page = browser.get(live_server.url + "/login", timeout=10).text
    form_token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    resp = browser.post(live_server.url + "/login", data={"username": username, "password": password,
                                                          "csrf_token": form_token}, timeout=10)
    assert resp.status_code == 200 and "/executions" in resp.url
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)">', resp.text).group(1)
    return browser, meta


def test_logout_closes_the_sessions_sockets(db, redis, migrated, live_server) -> None:
    owner, _, (ex,) = owner_with_executions(db, 1)
    with db.unit_of_work() as s:
        user = s.get(User, owner)
        user.password_hash = hash_password("pw")
        username = user.username
    browser, csrf = _dashboard_login(live_server, username, "pw")
    resp = browser.post(live_server.url + "/api/tokens/stream", headers={"X-CSRF-Token": csrf}, timeout=10)
    assert resp.status_code == 201
    ws = subscribed(live_server, resp.json()["token"], ex)
    unused = browser.post(live_server.url + "/api/tokens/stream", headers={"X-CSRF-Token": csrf}, timeout=10)
    browser.post(live_server.url + "/logout", data={"csrf_token": csrf}, timeout=10)
    assert_closed_1008(ws)
    assert_closed_1008(connect(live_server, unused.json()["token"]))
