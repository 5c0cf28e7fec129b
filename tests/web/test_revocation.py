"""Taking access away works at once in every web process: two app instances share the database and
Redis, each with its own token cache, as two gunicorn workers do. What one revokes, the other refuses
on its next request; the controls show that without the announcement the other would still say yes."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from orchestrator.credentials import issue_credential
from orchestrator.events.protocol import Keys, shard_of
from orchestrator.models import ApiCredential, utcnow
from orchestrator.revocation import announce
from tests.factories import make_user
from tests.web.test_dashboard import csrf_of, login
from tests.workers.helpers import claim, queued_execution


def _quiet(app):
    """No drain is triggered (no worker here) and the POST answers at once (202)."""
    app.extensions["ingestor"].trigger = lambda shard: None
    app.config["SETTINGS"] = app.config["SETTINGS"].replace(ingest_reply_wait_ms=0)
    return app


@pytest.fixture
def apps(app, migrated):
    from web.app import create_app

    other = create_app(migrated)
    other.config["TESTING"] = True
    yield _quiet(app), _quiet(other)
    other.extensions["db"].dispose()


@pytest.fixture
def people(db):
    """An admin's header and Mark's token; Mark can log in to the dashboard too."""
    from orchestrator.credentials import hash_password

    with db.unit_of_work() as s:
        boss = make_user(s, "boss", is_admin=True)
        _, boss_token = issue_credential(s, user_id=boss.id)
        mark = make_user(s, "mark", password_hash=hash_password("pw"))
        cred, mark_token = issue_credential(s, user_id=mark.id, label="laptop")
    return {"Authorization": f"Bearer {boss_token}"}, mark_token, cred.id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_revoked_token_is_refused_at_once_by_another_process(apps, people) -> None:
    a, b = (x.test_client() for x in apps)
    boss, mark_token, cred_id = people
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 200  # B has it cached
    resp = a.delete(f"/api/admin/users/user_mark/tokens/{cred_id}", headers=boss)
    assert resp.status_code == 200
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 401
    assert a.get("/api/executions", headers=bearer(mark_token)).status_code == 401


def test_control_without_the_announcement_the_other_process_still_trusts_its_cache(apps, people, db) -> None:
    _, b = (x.test_client() for x in apps)
    _, mark_token, cred_id = people
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 200
    with db.unit_of_work() as s:
        s.execute(update(ApiCredential).where(ApiCredential.id == cred_id).values(revoked_at=utcnow()))
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 200  # cached: the test can fail


def test_a_deactivated_users_tokens_are_refused_at_once_by_another_process(apps, people) -> None:
    a, b = (x.test_client() for x in apps)
    boss, mark_token, _ = people
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 200
    assert a.post("/api/admin/users/user_mark/deactivate", headers=boss).status_code == 200
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 401


def _stream_length(app, scene) -> int:
    settings = app.config["SETTINGS"]
    keys = Keys(settings.redis_key_prefix)
    return app.extensions["redis"].xlen(keys.stream(shard_of(scene.execution_id, settings.ingest_shards)))


def _post_event(client, scene, n: int):
    return client.post(f"/api/executions/{scene.execution_id}/events", headers=bearer(scene.agent_key), json={
        "agent_id": scene.agent_id, "event_type": "heartbeat", "task_id": "task_0_a", "message": f"beat {n}"})


def test_a_revoked_agent_key_is_refused_on_the_event_path_before_anything_is_queued(apps, db, redis, migrated) -> None:
    a, b = apps
    scene = queued_execution(db)
    claim(db, redis, migrated, scene, "task_0_a")
    client = b.test_client()
    assert _post_event(client, scene, 1).status_code == 202  # the key is cached now
    assert _post_event(client, scene, 2).status_code == 202  # from the cache, the epoch checked in submit
    queued = _stream_length(b, scene)
    with db.unit_of_work() as s:
        s.execute(update(ApiCredential).where(ApiCredential.agent_id == scene.agent_id).values(revoked_at=utcnow()))
    announce(a.extensions["redis"], a.config["SETTINGS"].redis_key_prefix, grants=["any"])
    resp = _post_event(client, scene, 3)
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"
    batch = client.post("/api/events/batch", headers=bearer(scene.agent_key), json={"events": [
        {"agent_id": scene.agent_id, "execution_id": scene.execution_id, "event_type": "heartbeat",
         "task_id": "task_0_a"}]})
    assert batch.status_code == 401
    heartbeat = client.post(f"/api/agents/{scene.agent_id}/heartbeat", headers=bearer(scene.agent_key), json={})
    assert heartbeat.status_code == 401
    assert _stream_length(b, scene) == queued


def test_an_unrelated_revocation_costs_the_event_path_one_reload_not_a_refusal(apps, db, redis, migrated,
                                                                               people) -> None:
    a, b = apps
    boss, _, cred_id = people
    scene = queued_execution(db)
    claim(db, redis, migrated, scene, "task_0_a")
    client = b.test_client()
    assert _post_event(client, scene, 1).status_code == 202
    queued = _stream_length(b, scene)
    assert a.test_client().delete(f"/api/admin/users/user_mark/tokens/{cred_id}", headers=boss).status_code == 200
    assert _post_event(client, scene, 2).status_code == 202  # the view ran again once, after a reload
    assert _stream_length(b, scene) == queued + 1  # and queued its event once


def _cookie(client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def _with_cookie(app, value: str):
    client = app.test_client()
    client.set_cookie("session", value)
    return client


def test_a_deactivated_users_session_is_refused_at_once_by_another_process(apps, people) -> None:
    a_app, b_app = apps
    a = a_app.test_client()
    boss, _, _ = people
    assert login(a, "mark", "pw").status_code == 302
    b = _with_cookie(b_app, _cookie(a))
    assert b.get("/executions").status_code == 200 and b.get("/api/executions").status_code == 200
    assert a_app.test_client().post("/api/admin/users/user_mark/deactivate", headers=boss).status_code == 200
    assert b.get("/api/executions").status_code == 401
    page = b.get("/executions")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")


def test_logout_ends_the_session_everywhere(apps, people) -> None:
    a_app, b_app = apps
    a = a_app.test_client()
    login(a, "mark", "pw")
    kept = _cookie(a)  # what a thief, or a shared computer's browser, would have kept
    b = _with_cookie(b_app, kept)
    assert b.get("/api/executions").status_code == 200
    resp = a.post("/logout", data={"csrf_token": csrf_of(a)})
    assert resp.status_code == 302
    assert a.get("/executions").status_code == 302
    assert b.get("/api/executions").status_code == 401
    assert _with_cookie(a_app, kept).get("/executions").status_code == 302


def test_a_new_password_ends_the_users_sessions(apps, people) -> None:
    a_app, b_app = apps
    boss, mark_token, _ = people
    a = a_app.test_client()
    login(a, "mark", "pw")
    b = _with_cookie(b_app, _cookie(a))
    assert b.get("/api/executions").status_code == 200
    resp = a_app.test_client().put("/api/admin/users/user_mark/password", headers=boss,
                                   json={"password": "a brand new one"})
    assert resp.status_code == 204
    assert b.get("/api/executions").status_code == 401
    assert b.get("/api/executions", headers=bearer(mark_token)).status_code == 200  # tokens stay


def test_logging_in_again_ends_the_browsers_previous_session(apps, people) -> None:
    a_app, _ = apps
    a = a_app.test_client()
    login(a, "mark", "pw")
    first = _cookie(a)
    login(a, "mark", "pw")
    assert _cookie(a) != first
    assert _with_cookie(a_app, first).get("/api/executions").status_code == 401
    assert a.get("/api/executions").status_code == 200


def test_the_login_form_needs_its_csrf_token(client, people) -> None:
    for data in ({"username": "mark", "password": "pw"},
                 {"username": "mark", "password": "pw", "csrf_token": "forged"}):
        resp = client.post("/login", data=data)
        assert resp.status_code == 400 and "expired" in resp.get_data(as_text=True)
        assert client.get("/executions").status_code == 302


def test_session_writes_need_the_csrf_token_and_bearer_writes_do_not(client, people) -> None:
    _, mark_token, _ = people
    login(client, "mark", "pw")
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        resp = client.post("/api/me/tokens", headers=headers, json={"name": "x"})
        assert resp.status_code == 403 and resp.json["error"]["code"] == "forbidden"
    ok = client.post("/api/me/tokens", headers={"X-CSRF-Token": csrf_of(client)}, json={"name": "from the page"})
    assert ok.status_code == 201
    other = client.application.test_client()
    assert other.post("/api/me/tokens", headers=bearer(mark_token), json={"name": "y"}).status_code == 201


@pytest.mark.parametrize("username", ["mark%00", "admin%00", "%00", "m" * 5000, "%E2%80%AEmark", "mark%09x",
                                      "mark'+OR+'1'%3D'1", "..%2F..%2Fetc%2Fpasswd", "%ED%A0%80", "%FF%FE",
                                      "boss"])
def test_hostile_login_names_are_refused_with_4xx(client, people, username: str) -> None:
    from urllib.parse import quote

    from tests.web.test_dashboard import form_csrf

    body = f"username={username}&password=pw&csrf_token={quote(form_csrf(client))}"
    resp = client.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    assert 400 <= resp.status_code < 500
    assert client.get("/api/executions").status_code == 401


def test_without_redis_tokens_are_checked_against_the_database_alone(migrated, people, db) -> None:
    """The cache needs Redis, the truth does not: reads that need no Redis keep working, and a
    revoked token is still refused."""
    from web.app import create_app

    _, mark_token, cred_id = people
    lost = create_app(migrated.replace(redis_url="redis://127.0.0.1:1/0"))
    try:
        client = lost.test_client()
        assert client.get("/api/executions", headers=bearer(mark_token)).status_code == 200
        with db.unit_of_work() as s:
            s.execute(update(ApiCredential).where(ApiCredential.id == cred_id).values(revoked_at=utcnow()))
        assert client.get("/api/executions", headers=bearer(mark_token)).status_code == 401
        assert client.get("/api/executions").status_code == 401
    finally:
        lost.extensions["db"].dispose()
