"""Signed agent requests over HTTP: what passes, what is refused (401, before anything is queued),
signing modes, rotation, and AgentClient signing by itself against the live server."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from orchestrator_sdk.client import AgentClient, SignedAuth

from orchestrator.credentials import issue_credential
from orchestrator.events.protocol import Keys, shard_of
from orchestrator.models import Agent
from orchestrator.signing import MAX_SKEW_SECONDS, SIGNATURE_HEADER, content_digest, sign
from tests.factories import make_agent, make_user_with_token
from tests.test_cli_users import cli, ok  # noqa: F401 - the console fixture
from tests.web.helpers import assert_error
from tests.workers.helpers import Scene, claim, queued_execution


def _quiet(app):
    """No drain is triggered (no worker here) and the POST answers at once (202)."""
    app.extensions["ingestor"].trigger = lambda shard: None
    app.config["SETTINGS"] = app.config["SETTINGS"].replace(ingest_reply_wait_ms=0)
    return app


@pytest.fixture
def scene(app, db, redis, migrated) -> Scene:
    """An agent holding task_0_a of a running execution, so that its events reach the queue."""
    _quiet(app)
    scene = queued_execution(db)
    claim(db, redis, migrated, scene, "task_0_a")
    return scene


@pytest.fixture
def mark(db, scene) -> dict[str, str]:
    """The header of the scene agent's operator (the execution's owner)."""
    with db.unit_of_work() as s:
        s.get(Agent, scene.agent_id).owner_id = scene.owner_id
        _, token = issue_credential(s, user_id=scene.owner_id)
    return {"Authorization": f"Bearer {token}"}


def _queued(app, scene: Scene) -> int:
    settings = app.config["SETTINGS"]
    stream = Keys(settings.redis_key_prefix).stream(shard_of(scene.execution_id, settings.ingest_shards))
    return app.extensions["redis"].xlen(stream)


def _events_path(scene: Scene) -> str:
    return f"/api/executions/{scene.execution_id}/events"


def _body(scene: Scene, n: int = 1) -> bytes:
    return (f'{{"agent_id": "{scene.agent_id}", "event_type": "heartbeat", "task_id": "task_0_a", '
            f'"message": "beat {n}"}}').encode()


def _post(client, scene: Scene, body: bytes, signature: dict[str, str] | None, path: str | None = None):
    """POST `body` with exactly the signature headers given (none when None)."""
    headers = {"Authorization": f"Bearer {scene.agent_key}", "Content-Type": "application/json", **(signature or {})}
    return client.post(path or _events_path(scene), data=body, headers=headers, sign=False)


def _signed(scene: Scene, body: bytes, **kw) -> dict[str, str]:
    return sign(scene.signing_secret, "POST", _events_path(scene), body, **kw)


def test_a_signed_request_passes_and_is_queued(app, client, scene) -> None:
    before = _queued(app, scene)
    resp = _post(client, scene, _body(scene), _signed(scene, _body(scene)))
    assert resp.status_code == 202, resp.json
    assert _queued(app, scene) == before + 1


TAMPERED = {
    "wrong_secret": lambda sc, body: sign("sig_not_the_secret", "POST", _events_path(sc), body),
    "body_changed_after_signing": lambda sc, body: _signed(sc, body.replace(b"beat", b"BEAT")),
    "digest_header_swapped": lambda sc, body: {**_signed(sc, body), "Content-Digest": content_digest(b"{}")},
    "signed_for_another_path": lambda sc, body: sign(sc.signing_secret, "POST", "/api/events/batch", body),
    "signed_for_another_method": lambda sc, body: sign(sc.signing_secret, "PUT", _events_path(sc), body),
    "signature_not_hex": lambda sc, body: {**_signed(sc, body), SIGNATURE_HEADER: "sha256=zz"},
    "a_header_missing": lambda sc, body: {k: v for k, v in _signed(sc, body).items() if k != "X-Signature-Nonce"},
    "nonce_too_short": lambda sc, body: _signed(sc, body, nonce="abc"),
}


@pytest.mark.parametrize("tamper", list(TAMPERED))
def test_a_bad_signature_is_refused_before_anything_is_queued(app, client, scene, tamper) -> None:
    before = _queued(app, scene)
    body = _body(scene)
    assert_error(_post(client, scene, body, TAMPERED[tamper](scene, body)), 401, "signature_invalid")
    assert _queued(app, scene) == before


@pytest.mark.parametrize("skew", [-(MAX_SKEW_SECONDS + 60), MAX_SKEW_SECONDS + 60])
def test_a_timestamp_outside_five_minutes_is_refused(app, client, scene, skew) -> None:
    before = _queued(app, scene)
    body = _body(scene)
    err = assert_error(_post(client, scene, body, _signed(scene, body, now=time.time() + skew)), 401,
                       "signature_expired")
    assert err["details"] == {"max_skew_seconds": MAX_SKEW_SECONDS}
    assert _queued(app, scene) == before
    # the control: four minutes off is inside the window
    assert _post(client, scene, body, _signed(scene, body, now=time.time() - 240)).status_code == 202


def test_a_nonce_seen_before_is_refused(app, client, scene) -> None:
    before = _queued(app, scene)
    body = _body(scene)
    signature = _signed(scene, body)
    assert _post(client, scene, body, signature).status_code == 202
    assert_error(_post(client, scene, body, signature), 401, "nonce_reused")
    # a valid signature over another body cannot reuse it either
    other = _body(scene, 2)
    assert_error(_post(client, scene, other, _signed(scene, other, nonce=signature["X-Signature-Nonce"])), 401,
                 "nonce_reused")
    assert _queued(app, scene) == before + 1


def test_a_required_agent_must_sign_every_request(app, client, scene) -> None:
    before = _queued(app, scene)
    assert_error(_post(client, scene, _body(scene), None), 401, "signature_required")
    assert _queued(app, scene) == before
    bearer = {"Authorization": f"Bearer {scene.agent_key}"}
    assert_error(client.get(f"/api/agents/{scene.agent_id}/work", headers=bearer, sign=False), 401,
                 "signature_required")
    # signed, the same GET (with its query string in the signature) passes
    path = f"/api/agents/{scene.agent_id}/work?supported_actions=send_email"
    resp = client.get(path, headers={**bearer, **sign(scene.signing_secret, "GET", path, b"")}, sign=False)
    assert resp.status_code in (200, 204), resp.json


def test_an_optional_agent_may_send_unsigned_but_not_badly_signed(app, client, scene, mark) -> None:
    resp = client.patch(f"/api/agents/{scene.agent_id}", headers=mark, json={"signing": "optional"})
    assert resp.status_code == 200 and resp.json["signing"] == "optional"
    before = _queued(app, scene)
    assert _post(client, scene, _body(scene), None).status_code == 202
    body = _body(scene, 2)
    assert_error(_post(client, scene, body, sign("sig_wrong", "POST", _events_path(scene), body)), 401,
                 "signature_invalid")
    assert _post(client, scene, body, _signed(scene, body)).status_code == 202
    assert _queued(app, scene) == before + 2
    # and back: the mode reached the cached principal at once
    assert client.patch(f"/api/agents/{scene.agent_id}", headers=mark, json={"signing": "required"}).status_code == 200
    assert_error(_post(client, scene, _body(scene, 3), None), 401, "signature_required")


def test_rotation_makes_the_old_secret_fail_in_every_process(app, client, scene, mark, migrated) -> None:
    from web.app import create_app

    other = _quiet(create_app(migrated))
    other.config["TESTING"] = True
    try:
        far = other.test_client()
        body = _body(scene)
        assert _post(far, scene, body, _signed(scene, body)).status_code == 202  # cached there now
        resp = client.post(f"/api/agents/{scene.agent_id}/signing-secret", headers=mark)
        assert resp.status_code == 201
        new = resp.json["signing_secret"]
        assert new.startswith("sig_") and new != scene.signing_secret
        for c in (client, far):
            body = _body(scene, 2)
            assert_error(_post(c, scene, body, _signed(scene, body)), 401, "signature_invalid")
            assert _post(c, scene, body, sign(new, "POST", _events_path(scene), body)).status_code == 202
    finally:
        other.extensions["db"].dispose()


def test_registration_shows_the_secret_once(client, db) -> None:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "ann")
    headers = {"Authorization": f"Bearer {token}"}
    resp = client.post("/api/agents", headers=headers, json={"name": "Larry"})
    assert resp.status_code == 201
    body = resp.json
    assert body["signing"] == "required" and body["signing_secret"].startswith("sig_")
    shown = client.get(f"/api/agents/{body['id']}", headers=headers).json
    assert shown["signing"] == "required" and "signing_secret" not in shown
    optional = client.post("/api/agents", headers=headers, json={"name": "Bench", "signing": "optional"}).json
    assert optional["signing"] == "optional" and optional["signing_secret"].startswith("sig_")
    assert_error(client.post("/api/agents", headers=headers, json={"name": "x", "signing": "never"}), 422,
                 "invalid_request")


def test_signing_settings_refusals(client, db) -> None:
    with db.unit_of_work() as s:
        ann, token = make_user_with_token(s, "ann")
        _, eve_token = make_user_with_token(s, "eve")
        make_agent(s, "agent_old", owner_id=ann.id, signing="optional", signing_secret=None)  # migrated: no secret
    ann_h, eve_h = ({"Authorization": f"Bearer {t}"} for t in (token, eve_token))
    err = assert_error(client.patch("/api/agents/agent_old", headers=ann_h, json={"signing": "required"}), 422,
                       "validation_failed")
    assert "signing-secret" in err["message"]
    assert_error(client.patch("/api/agents/agent_old", headers=ann_h, json={"signing": "maybe"}), 422,
                 "invalid_request")
    assert_error(client.post("/api/agents/agent_old/signing-secret", headers=eve_h), 404, "not_found")
    assert_error(client.patch("/api/agents/agent_old", headers=eve_h, json={"signing": "optional"}), 404, "not_found")
    assert client.post("/api/agents/agent_old/signing-secret", headers=ann_h).status_code == 201
    assert client.patch("/api/agents/agent_old", headers=ann_h, json={"signing": "required"}).json["signing"] == \
        "required"


def test_agent_client_signs_by_itself_over_http(db, redis, migrated, live_server) -> None:
    scene = queued_execution(db)
    settings = live_server.app.config["SETTINGS"]
    live_server.app.config["SETTINGS"] = settings.replace(ingest_reply_wait_ms=0)
    try:
        agent = AgentClient(live_server.url, scene.agent_id, scene.agent_key, signing_secret=scene.signing_secret)
        work = agent.poll(["send_email"])  # a GET with a query string
        assert work is not None and work.task_id == "task_0_a"
        receipt = agent.report(work.execution_id, "task_started", work.task_id, status="running", wait=False)
        assert receipt["status_url"]
        assert agent.heartbeat()  # signed POST with a body; a refusal would raise AgentClientError
        # without the secret, the same client is refused
        unsigned = requests.get(f"{live_server.url}/api/agents/{scene.agent_id}/work",
                                auth=SignedAuth(scene.agent_key), timeout=10)
        assert unsigned.status_code == 401 and unsigned.json()["error"]["code"] == "signature_required"
    finally:
        live_server.app.config["SETTINGS"] = settings


def test_the_console_rotates_and_sets_signing(app, client, scene, cli) -> None:  # noqa: F811 - the fixture
    body = _body(scene)
    assert _post(client, scene, body, _signed(scene, body)).status_code == 202  # the secret is cached now
    out = ok(cli("agents", "signing-secret", scene.agent_id))
    new = out.strip()
    assert new.startswith("sig_") and new != scene.signing_secret
    body = _body(scene, 2)
    assert_error(_post(client, scene, body, _signed(scene, body)), 401, "signature_invalid")
    assert _post(client, scene, body, sign(new, "POST", _events_path(scene), body)).status_code == 202
    assert_error(_post(client, scene, _body(scene, 3), None), 401, "signature_required")
    assert "signing optional" in ok(cli("agents", "signing", scene.agent_id, "optional"))
    assert _post(client, scene, _body(scene, 3), None).status_code == 202
    missing = cli("agents", "signing-secret", "agent_nobody")
    assert missing.exit_code != 0 and "not found" in missing.output and "Traceback" not in missing.output


def _readme_example() -> str:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    return next(b for b in blocks if "X-Signature" in b and "openssl" in b)


def test_the_readme_curl_example_is_accepted(db, redis, migrated, live_server) -> None:
    """The Security section's openssl/curl pipeline, run as written, with this scene's values."""
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.skip("needs curl and openssl")
    scene = queued_execution(db)
    claim(db, redis, migrated, scene, "task_0_a")
    values = {"BASE": live_server.url, "KEY": scene.agent_key, "SECRET": scene.signing_secret,
              "TARGET": _events_path(scene),
              "BODY": f'{{"agent_id": "{scene.agent_id}", "event_type": "heartbeat", "task_id": "task_0_a"}}'}
    lines = _readme_example().splitlines()
    assert lines[0].startswith("BASE=") and lines[1].startswith("TARGET=") and lines[2].startswith("BODY=")
    script = "\n".join([" ".join(f"{k}={shlex.quote(v)}" for k, v in values.items()), *lines[3:]])
    settings = live_server.app.config["SETTINGS"]
    live_server.app.config["SETTINGS"] = settings.replace(ingest_reply_wait_ms=0)
    try:
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        live_server.app.config["SETTINGS"] = settings
    assert json.loads(out)["execution_id"] == scene.execution_id, out  # the 202 receipt, not an error
