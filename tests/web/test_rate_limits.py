"""Agents' rate limits over HTTP: counted per agent in Redis (shared by web processes), 429 with
Retry-After and RateLimit-* headers, a refused request does nothing, a batch is one request."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from orchestrator_sdk import client as client_mod
from orchestrator_sdk.client import AgentClient, AgentClientError
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.models import Agent, ExecutionEvent
from tests.conftest import make_test_app
from tests.factories import make_agent, make_user_with_token
from tests.web.conftest import bearer
from tests.web.helpers import assert_error
from tests.workers.helpers import claim, queued_execution

LIMIT = 5


APP_SETTINGS = {"agent_rate_limit": f"{LIMIT}/minute", "ingest_reply_wait_ms": 0}  # the `app` fixture's


def make_app(settings, **changes):
    """Another web process on the same settings."""
    return make_test_app(settings.replace(**{**APP_SETTINGS, **changes}))


@pytest.fixture
def agent_key(db) -> tuple[str, str, str]:
    """An agent: its id, API key and signing secret."""
    with db.unit_of_work() as s:
        owner, _ = make_user_with_token(s, "mark")
        row = make_agent(s, "agent_rl", owner_id=owner.id)
        _, key = issue_credential(s, agent_id="agent_rl")
        return "agent_rl", key, row.signing_secret


@pytest.fixture
def agent(agent_key) -> tuple[str, dict[str, str]]:
    """The agent and its Authorization header (the test client signs its requests: tests/signing.py)."""
    agent_id, key, _ = agent_key
    return agent_id, bearer(key)


def poll(client, agent_id: str, headers: dict[str, str]):
    return client.get(f"/api/agents/{agent_id}/work", headers=headers)


def redis_state(redis, prefix: str) -> dict[bytes, object]:
    """Every key this app wrote, with its content, but the rate limiter's counters and the signatures'
    nonces (a refused request was still authenticated)."""
    out: dict[bytes, object] = {}
    for key in redis.scan_iter(f"{prefix}*"):
        if key.startswith((f"{prefix}ratelimit:".encode(), f"{prefix}sig:nonce:".encode())):
            continue
        kind = redis.type(key)
        out[key] = redis.xlen(key) if kind == b"stream" else (kind, redis.dump(key))
    return out


def count_events(db) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(ExecutionEvent))


def test_an_agent_over_its_limit_is_answered_429_with_retry_after_and_ratelimit_headers(client, agent) -> None:
    agent_id, headers = agent
    for _ in range(LIMIT):
        resp = poll(client, agent_id, headers)
        assert resp.status_code == 204
        assert "Retry-After" not in resp.headers and "RateLimit-Limit" not in resp.headers
    refused = poll(client, agent_id, headers)
    err = assert_error(refused, 429, "rate_limited")
    assert err["details"]["limit"] == f"{LIMIT} per 1 minute"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Limit"] == str(LIMIT)
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Policy"] == f"{LIMIT};w=60"
    assert int(refused.headers["RateLimit-Reset"]) == int(refused.headers["Retry-After"])


def test_a_refused_event_is_neither_queued_nor_stored(db, redis, migrated, app) -> None:
    scene = queued_execution(db, n_tasks=1, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    headers = bearer(scene.agent_key)
    event = {"agent_id": scene.agent_id, "event_type": "task_started", "task_id": "task_0_a",
             "idempotency_key": "started-once"}
    url = f"/api/executions/{scene.execution_id}/events"
    client = app.test_client()
    for _ in range(LIMIT):
        assert poll(client, scene.agent_id, headers).status_code in (200, 204)
    before, stored = redis_state(redis, migrated.redis_key_prefix), count_events(db)
    assert_error(client.post(url, headers=headers, json=event), 429, "rate_limited")
    assert redis_state(redis, migrated.redis_key_prefix) == before
    assert count_events(db) == stored

    # The same request from an agent under its limit is queued: the refusal above is what kept it out.
    with db.unit_of_work() as s:
        s.get(Agent, scene.agent_id).rate_limit_per_minute = LIMIT + 1
    fresh = make_app(migrated)  # a new process: its principal cache loads the raised limit
    try:
        assert fresh.test_client().post(url, headers=headers, json=event).status_code in (201, 202)
    finally:
        fresh.extensions["db"].dispose()
    assert redis_state(redis, migrated.redis_key_prefix) != before


def test_a_batch_counts_as_one_request(client, agent) -> None:
    agent_id, headers = agent
    batch = {"events": [{"agent_id": agent_id, "event_type": "heartbeat"} for _ in range(3)]}
    resp = client.post("/api/events/batch", headers=headers, json=batch)
    assert resp.status_code == 202 and resp.json["accepted"] == 3
    statuses = [poll(client, agent_id, headers).status_code for _ in range(LIMIT)]
    assert statuses == [204] * (LIMIT - 1) + [429]


def test_every_endpoint_an_agent_key_reaches_counts(client, agent) -> None:
    """Heartbeats, outcome reads and calls refused for want of rights count as much as polls."""
    agent_id, headers = agent
    answers = [
        client.post(f"/api/agents/{agent_id}/heartbeat", headers=headers, json={}).status_code,
        client.get("/api/events/evt_unknown", headers=headers).status_code,
        client.get("/api/executions", headers=headers).status_code,  # an operator's endpoint: 403
        poll(client, agent_id, headers).status_code,
        poll(client, agent_id, headers).status_code,
    ]
    assert answers == [202, 404, 403, 204, 204]
    assert_error(client.get("/api/events/evt_unknown", headers=headers), 429, "rate_limited")


def test_requests_refused_before_their_round_trip_count_too(client, agent) -> None:
    """The poll and the event POSTs count in their first Redis round trip; one refused before it (a bad
    query, a bad body, another agent's id) is counted after, and over the limit is answered 429."""
    agent_id, headers = agent
    answers = [
        client.get(f"/api/agents/{agent_id}/work?supported_actions=" + "x" * 300, headers=headers).status_code,
        client.post("/api/executions/exec_x/events", headers=headers, json={"event_type": 3}).status_code,
        client.post("/api/events/batch", headers=headers, json={"events": "none"}).status_code,
        client.get("/api/agents/agent_other/work", headers=headers).status_code,
        poll(client, agent_id, headers).status_code,
    ]
    assert answers == [422, 422, 422, 403, 204]
    assert_error(client.post("/api/executions/exec_x/events", headers=headers, json={"event_type": 3}),
                 429, "rate_limited")
    assert_error(poll(client, agent_id, headers), 429, "rate_limited")


def test_an_idle_poll_counts_in_its_one_round_trip_to_redis(client, agent, redis, monkeypatch) -> None:
    """The count rides in the poll's read of Redis instead of a round trip of its own; a Redis that has
    lost the limiter's script (restarted) still counts."""
    from redis.connection import AbstractConnection

    agent_id, headers = agent
    assert poll(client, agent_id, headers).status_code == 204  # its first poll looks at the database
    sent = []
    original = AbstractConnection.send_packed_command

    def counting(self, command, *args, **kwargs):  # noqa: ANN001, ANN202
        sent.append(command)
        return original(self, command, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    assert poll(client, agent_id, headers).status_code == 204
    monkeypatch.undo()
    assert len(sent) == 2, sent  # the signature's nonce (with the epoch), then the poll's read with the count
    redis.script_flush()
    for _ in range(LIMIT - 2):
        assert poll(client, agent_id, headers).status_code == 204
    assert_error(poll(client, agent_id, headers), 429, "rate_limited")  # and it was counted


def test_two_web_processes_share_the_count(migrated, client, agent) -> None:
    """Two apps on the same Redis and key prefix stand for two web processes."""
    agent_id, headers = agent
    other = make_app(migrated)
    try:
        clients = [client, other.test_client()]
        statuses = [poll(clients[n % 2], agent_id, headers).status_code for n in range(LIMIT + 2)]
    finally:
        other.extensions["db"].dispose()
    assert statuses == [204] * LIMIT + [429, 429]


def test_an_agents_own_limit_overrides_the_default(db, client, agent) -> None:
    agent_id, headers = agent
    with db.unit_of_work() as s:
        s.get(Agent, agent_id).rate_limit_per_minute = 2
    statuses = [poll(client, agent_id, headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [204, 204, 429]
    assert statuses[2].headers["RateLimit-Limit"] == "2"


def test_an_operator_sets_an_agents_limit_at_registration_and_changes_it(db, client) -> None:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "mark")
    operator = bearer(token)
    made = client.post("/api/agents", headers=operator, json={"id": "agent_new", "name": "New",
                                                               "rate_limit_per_minute": 2})
    assert made.status_code == 201 and made.json["rate_limit_per_minute"] == 2
    agent = bearer(made.json["api_key"])
    assert [poll(client, "agent_new", agent).status_code for _ in range(3)] == [204, 204, 429]

    raised = client.patch("/api/agents/agent_new", headers=operator, json={"rate_limit_per_minute": 3})
    assert raised.status_code == 200 and raised.json["rate_limit_per_minute"] == 3
    assert poll(client, "agent_new", agent).status_code == 204  # a new limit: at once, in every process
    back = client.patch("/api/agents/agent_new", headers=operator, json={"rate_limit_per_minute": None})
    assert back.json["rate_limit_per_minute"] is None and back.json["signing"] == "required"
    assert client.get("/api/agents/agent_new", headers=operator).json["rate_limit_per_minute"] is None


@pytest.mark.parametrize("value", [0, -1, 1_000_001, 2.5, "10", True, [5]])
def test_an_agents_limit_is_a_whole_number_in_range(db, client, value) -> None:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "mark")
    operator = bearer(token)
    made = client.post("/api/agents", headers=operator, json={"name": "Bad", "rate_limit_per_minute": value})
    assert_error(made, 422, "invalid_request")
    client.post("/api/agents", headers=operator, json={"id": "agent_ok", "name": "Ok"})
    assert_error(client.patch("/api/agents/agent_ok", headers=operator, json={"rate_limit_per_minute": value}),
                 422, "invalid_request")
    assert_error(client.patch("/api/agents/agent_ok", headers=operator, json={}), 422, "invalid_request")


def test_each_agent_has_its_own_count(db, client, agent) -> None:
    agent_id, headers = agent
    with db.unit_of_work() as s:
        make_agent(s, "agent_other", owner_id="user_mark")
        _, other_key = issue_credential(s, agent_id="agent_other")
    for _ in range(LIMIT):
        poll(client, agent_id, headers)
    assert poll(client, agent_id, headers).status_code == 429
    assert poll(client, "agent_other", bearer(other_key)).status_code == 204


def test_operators_are_not_limited(db, redis, migrated, client) -> None:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "mark")
    statuses = {client.get("/api/agents", headers=bearer(token)).status_code for _ in range(LIMIT * 3)}
    assert statuses == {200}
    assert list(redis.scan_iter(f"{migrated.redis_key_prefix}ratelimit:*")) == []


def test_counts_live_under_the_apps_key_prefix(migrated, redis, client, agent) -> None:
    agent_id, headers = agent
    poll(client, agent_id, headers)
    keys = list(redis.scan_iter(f"{migrated.redis_key_prefix}ratelimit:*"))
    assert len(keys) == 1 and agent_id.encode() in keys[0]


def test_without_redis_the_limiter_answers_no_500s(db, migrated, agent) -> None:
    """Redis out of reach: what needs it answers 503 as before; the limiter counts in memory meanwhile.
    (An unsigned agent: a signed request's nonce needs Redis before the limiter is reached.)"""
    agent_id, headers = agent
    with db.unit_of_work() as s:
        unsigned = s.get(Agent, agent_id)
        unsigned.signing, unsigned.signing_secret = "optional", None
    lost = make_app(migrated, redis_url="redis://127.0.0.1:1/0")
    try:
        client = lost.test_client()
        statuses = [poll(client, agent_id, headers).status_code for _ in range(LIMIT + 1)]
    finally:
        lost.extensions["db"].dispose()
    assert statuses == [503] * LIMIT + [429]


def test_a_bad_rate_setting_stops_the_start() -> None:
    from orchestrator.settings import Settings

    with pytest.raises(ValueError, match="AGENT_RATE_LIMIT"):
        Settings.from_env({"AGENT_RATE_LIMIT": "lots", "SECRET_KEY": "k", "ENCRYPTION_KEYS": "x"})


@pytest.fixture
def server(app):
    from tests.conftest import LiveServer

    live = LiveServer(app)
    yield live
    live.stop()


class Clock:
    """Stands in for the client's `time` module: a sleep is recorded (and `on_sleep` run), not waited."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.on_sleep: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.on_sleep()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(client_mod, "time", clock)
    return clock


def test_the_agent_client_waits_out_retry_after_and_sends_again(db, app, server, agent_key, clock) -> None:
    agent_id, key, secret = agent_key
    agent = AgentClient(server.url, agent_id, key, signing_secret=secret)
    for _ in range(LIMIT):
        assert agent.poll() is None

    def window_passes() -> None:
        """Instead of waiting: the agent is given room, as the window's passing would."""
        with db.unit_of_work() as s:
            s.get(Agent, agent_id).rate_limit_per_minute = LIMIT + 1
        app.extensions["principal_cache"].clear()

    clock.on_sleep = window_passes
    assert agent.poll() is None  # 429, then after Retry-After: 204
    assert len(clock.slept) == 1 and 1 <= clock.slept[0] <= 60


def test_the_agent_client_gives_up_after_its_retries(server, agent_key, clock) -> None:
    agent_id, key, secret = agent_key
    agent = AgentClient(server.url, agent_id, key, signing_secret=secret)
    for _ in range(LIMIT):
        agent.poll()
    with pytest.raises(AgentClientError) as refused:
        agent.poll()
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert len(clock.slept) == client_mod.MAX_RETRIES
    assert all(1 <= s <= client_mod.MAX_RATE_LIMIT_WAIT_SECONDS for s in clock.slept)
