"""The live stream over real WebSockets: messages as workers apply events, scope, tokens, replay."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests
import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.extensions import PerMessageDeflate

import web.live as stream_module
from orchestrator.event_log import record_event
from orchestrator.ids import event_id
from orchestrator.models import utcnow
from orchestrator.publish import event_message, publish
from tests.factories import make_execution, make_user_with_token
from tests.workers.helpers import claim, queued_execution

pytestmark = pytest.mark.integration


def stream_token(live_server, user_token: str) -> str:
    resp = requests.post(f"{live_server.url}/api/tokens/stream", headers={"Authorization": f"Bearer {user_token}"},
                         timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def owner_token(db, scene) -> str:
    from orchestrator.credentials import issue_credential

    with db.unit_of_work() as s:
        _, token = issue_credential(s, user_id=scene.owner_id)
    return token


def ws_url(live_server, path: str) -> str:
    return live_server.url.replace("http://", "ws://") + path


def receive_until(ws, pred, timeout: float = 10) -> list[dict]:
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = ws.receive(timeout=max(0.05, deadline - time.monotonic()))
        if raw is None:
            continue
        got.append(json.loads(raw))
        if pred(got[-1]):
            return got
    raise AssertionError(f"no matching message; got {got}")


def post_event(live_server, scene, body: dict) -> requests.Response:
    return requests.post(f"{live_server.url}/api/executions/{scene.execution_id}/events",
                         json={"agent_id": scene.agent_id, **body},
                         auth=scene.auth, timeout=30)


def test_events_and_updates_arrive_live(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    token = stream_token(live_server, owner_token(db, scene))
    ws = simple_websocket.Client.connect(
        ws_url(live_server, f"/api/executions/{scene.execution_id}/stream?token={token}"))
    allws = simple_websocket.Client.connect(ws_url(live_server, f"/api/stream?token={token}"))
    try:
        first = receive_until(ws, lambda m: m["type"] == "execution_update")
        assert first[-1]["status"] == "RUNNING" and "owner_id" not in first[-1]
        resp = post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a",
                                               "message": "Email sent."})
        assert resp.status_code == 201
        got = receive_until(ws, lambda m: m["type"] == "execution_update" and m["progress"]["current_task_id"])
        event = next(m for m in got if m["type"] == "event")
        assert (event["event_id"], event["event_type"], event["task_id"], event["message"]) == (
            resp.json()["event_id"], "task_complete", "task_0_a", "Email sent.")
        assert set(got[-1]["progress"]) >= {"tasks_completed", "tasks_total", "percent", "current_task_id",
                                            "current_task_title"}
        assert any(m.get("event_id") == event["event_id"] for m in receive_until(
            allws, lambda m: m.get("event_id") == event["event_id"]))
    finally:
        ws.close()
        allws.close()


def test_other_users_see_nothing_and_bad_tokens_are_refused(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    with db.unit_of_work() as s:
        _, eve = make_user_with_token(s, "eve")
    eve_token = stream_token(live_server, eve)
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws = simple_websocket.Client.connect(
            ws_url(live_server, f"/api/executions/{scene.execution_id}/stream?token={eve_token}"))
        ws.receive(timeout=5)
    assert closed.value.reason == 1008
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws = simple_websocket.Client.connect(ws_url(live_server, "/api/stream?token=forged.jwt.token"))
        ws.receive(timeout=5)
    assert closed.value.reason == 1008
    # Eve's all-executions stream carries nothing of Mark's.
    ws = simple_websocket.Client.connect(ws_url(live_server, f"/api/stream?token={eve_token}"))
    try:
        claim(db, redis, migrated, scene, "task_0_a")
        assert post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"}).status_code == 201
        assert ws.receive(timeout=1.5) is None
    finally:
        ws.close()


def test_reconnect_with_since_replays_what_was_missed(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    first = post_event(live_server, scene, {"event_type": "task_started", "task_id": "task_0_a"}).json()
    missed = post_event(live_server, scene, {"event_type": "task_complete", "task_id": "task_0_a"}).json()
    token = stream_token(live_server, owner_token(db, scene))
    ws = simple_websocket.Client.connect(ws_url(
        live_server, f"/api/executions/{scene.execution_id}/stream?token={token}&since={first['event_id']}"))
    try:
        got = receive_until(ws, lambda m: m["type"] == "execution_update")
        replayed = [m["event_id"] for m in got if m["type"] == "event"]
        assert missed["event_id"] in replayed and first["event_id"] not in replayed
    finally:
        ws.close()


# Replay by commit position. These write events the way every writer does (one unit of work, then
# publish), without the worker, so that the order of commits is the test's to choose.


def owner_with_executions(db, n: int) -> tuple[str, str, list[str]]:
    with db.unit_of_work() as s:
        user, token = make_user_with_token(s)
        executions = [make_execution(s, user).id for _ in range(n)]
    return user.id, token, executions


def commit_events(db, redis, settings, owner_id: str, execution_ids: list[str],
                  ids: list[str] | None = None) -> list[str]:
    """One transaction with an event per entry of `execution_ids` (ids minted now unless given),
    published after the commit."""
    with db.unit_of_work() as s:
        rows = [record_event(s, ex, "note", utcnow(), message=f"note {i}") for i, ex in enumerate(execution_ids)]
        for row, eid in zip(rows, ids or [], strict=False):
            row.id = eid
        messages = [event_message(r, owner_id) for r in rows]
    publish(redis, settings.redis_key_prefix, messages)
    return [r.id for r in rows]


def receive_events(ws, n: int, timeout: float = 10) -> list[dict]:
    """The next `n` event messages, then checks that no other message follows."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        raw = ws.receive(timeout=max(0.05, deadline - time.monotonic()))
        if raw is not None:
            got.append(json.loads(raw))
    assert len(got) == n and all(m["type"] == "event" for m in got), got
    assert ws.receive(timeout=0.5) is None
    return got


def subscribed(live_server, user_id: str) -> int:
    """Sockets of `user_id` the live server's relay has subscribed."""
    relay = live_server.app.extensions.get("relay")
    if relay is None:
        return 0
    with relay._lock:
        return sum(1 for subs in relay._subs.values() for sub in subs if sub.principal.id == user_id)


def wait_subscribed(live_server, user_id: str) -> None:
    """The server subscribes a socket after the handshake the client saw, and what is published
    before that is not for it: wait until it has, before publishing."""
    deadline = time.monotonic() + 10
    while not subscribed(live_server, user_id):
        assert time.monotonic() < deadline, "the server did not subscribe the socket"
        time.sleep(0.01)


def connect(live_server, token: str, since: str | None = None, path: str = "/api/stream"):
    query = f"?token={token}" + (f"&since={since}" if since else "")
    return simple_websocket.Client.connect(ws_url(live_server, path + query))


def test_reconnect_gets_exactly_what_it_missed_in_commit_order(db, redis, migrated, live_server) -> None:
    owner, user_token, (ex1, ex2, ex3) = owner_with_executions(db, 3)
    eve, _, (ex_eve,) = owner_with_executions(db, 1)
    token = stream_token(live_server, user_token)
    early = event_id()  # minted before anything the socket sees, committed after it lost the socket
    ws = connect(live_server, token)
    wait_subscribed(live_server, owner)
    try:
        seen = commit_events(db, redis, migrated, owner, [ex1, ex2])
        live = receive_events(ws, 2)
        assert [m["event_id"] for m in live] == seen and live[0]["seq"] + 1 == live[1]["seq"]
    finally:
        ws.close()
    # While disconnected: ids out of commit order (across executions and within a transaction),
    # and someone else's event in between.
    missed = commit_events(db, redis, migrated, owner, [ex3])
    commit_events(db, redis, migrated, eve, [ex_eve])
    missed += commit_events(db, redis, migrated, owner, [ex2, ex1], ids=[event_id(), early])
    assert early < seen[-1] < missed[0]
    ws = connect(live_server, token, since=seen[-1])
    try:
        replayed = receive_events(ws, 3)
        assert [m["event_id"] for m in replayed] == missed
        assert [m["seq"] for m in replayed] == sorted(m["seq"] for m in replayed)
        assert {m["execution_id"] for m in replayed} == {ex1, ex2, ex3}
        after = commit_events(db, redis, migrated, owner, [ex3])
        assert [m["event_id"] for m in receive_events(ws, 1)] == after  # live again, once
    finally:
        ws.close()


def test_events_committed_while_replaying_arrive_once(db, redis, migrated, live_server, monkeypatch) -> None:
    owner, user_token, (ex1, ex2) = owner_with_executions(db, 2)
    token = stream_token(live_server, user_token)
    (since,) = commit_events(db, redis, migrated, owner, [ex1])
    missed = commit_events(db, redis, migrated, owner, [ex2])
    real = stream_module.since_position
    racing: list[str] = []

    def commit_then_read(*args, **kwargs):
        # Committed and published after the socket subscribed, before the replay's first read: the
        # replay and the live queue both hold it.
        racing.extend(commit_events(db, redis, migrated, owner, [ex1, ex2]))
        time.sleep(0.3)  # let the relay queue it
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "since_position", commit_then_read)
    ws = connect(live_server, token, since=since, path=f"/api/executions/{ex2}/stream")
    try:
        got = [json.loads(raw) for raw in iter(lambda: ws.receive(timeout=1), None)]
    finally:
        ws.close()
    # Both replayed, then the snapshot, then nothing: the queued copy was skipped by its position.
    assert [m.get("event_id", m["type"]) for m in got] == [*missed, racing[1], "execution_update"]


def test_replay_longer_than_the_limit_asks_to_reconnect(db, redis, migrated, live_server, monkeypatch) -> None:
    owner, user_token, (ex1,) = owner_with_executions(db, 1)
    token = stream_token(live_server, user_token)
    (since,) = commit_events(db, redis, migrated, owner, [ex1])
    missed = commit_events(db, redis, migrated, owner, [ex1, ex1, ex1])
    monkeypatch.setattr(stream_module, "REPLAY_LIMIT", 2)
    ws = connect(live_server, token, since=since)
    assert [json.loads(ws.receive(timeout=5))["event_id"] for _ in range(2)] == missed[:2]
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws.receive(timeout=5)
    assert closed.value.reason == 1013
    ws = connect(live_server, token, since=missed[1])
    try:
        assert [m["event_id"] for m in receive_events(ws, 1)] == missed[2:]
    finally:
        ws.close()


@pytest.mark.parametrize("whose", ["unknown", "someone_elses"])
def test_since_must_name_an_event_the_viewer_may_see(db, redis, migrated, live_server, whose) -> None:
    _, user_token, _ = owner_with_executions(db, 1)
    eve, _, (ex_eve,) = owner_with_executions(db, 1)
    (eves_event,) = commit_events(db, redis, migrated, eve, [ex_eve])
    since = eves_event if whose == "someone_elses" else "evt_unknown"
    ws = connect(live_server, stream_token(live_server, user_token), since=since)
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws.receive(timeout=5)
    assert closed.value.reason == 1008 and "since" in closed.value.message


def test_the_relay_delivers_in_commit_order_whatever_the_publish_order(db, redis, migrated, live_server) -> None:
    owner, user_token, executions = owner_with_executions(db, 3)
    ws = connect(live_server, stream_token(live_server, user_token))
    wait_subscribed(live_server, owner)
    try:
        messages = []
        for ex in executions:  # three commits, as three shards' workers would make them
            with db.unit_of_work() as s:
                row = record_event(s, ex, "note", utcnow())
                messages.append(event_message(row, owner))
        # Everything before the first commit has been delivered (other tests reset the positions).
        live_server.app.extensions["relay"].sequencer.next_seq = messages[0].row.seq
        publish(redis, migrated.redis_key_prefix, messages[::-1])  # the last commit publishes first
        assert [m["event_id"] for m in receive_events(ws, 3)] == [m["event_id"] for m in messages]
    finally:
        ws.close()


def test_frames_are_plain_text_even_for_a_client_that_offers_compression(db, redis, migrated, live_server) -> None:
    # Every socket gets the same bytes for a message (web/relay.py): no per-connection compression.
    owner, user_token, (ex1,) = owner_with_executions(db, 1)
    token = stream_token(live_server, user_token)
    host, port = live_server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    conn = WSConnection(ConnectionType.CLIENT)
    sock.sendall(conn.send(Request(host=host, target=f"/api/stream?token={token}", extensions=[PerMessageDeflate()])))
    accepted = None
    while accepted is None:
        conn.receive_data(sock.recv(4096))
        accepted = next((e for e in conn.events() if isinstance(e, AcceptConnection)), None)
    assert accepted.extensions == []
    wait_subscribed(live_server, owner)
    (eid,) = commit_events(db, redis, migrated, owner, [ex1])
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[2:4], "big"):
        data += sock.recv(4096)
    sock.close()
    assert data[0] == 0x81  # FIN, no RSV1 (not compressed), text
    assert data[1] == 126 and json.loads(data[4:4 + int.from_bytes(data[2:4], "big")])["event_id"] == eid
