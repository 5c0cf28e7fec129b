"""The relay's fan-out over real sockets: one frame per message, written straight to the sockets that
keep up, a bounded backlog for those that do not, and nothing lost, doubled or reordered on the way."""

from __future__ import annotations

import secrets
import socket
import threading

import orjson
import pytest
import redis as redis_lib
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

import web.relay as relay_module
from orchestrator.credentials import Principal
from orchestrator.revocation import revoked_message
from web.relay import Relay, Sequencer, Subscriber, no_delay, send_now, text_frame

MARK = Principal("user", "user_mark", via="cred_mark")


def tcp_pair(buffer: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a real TCP connection on loopback; small kernel buffers if asked."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        if buffer:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    if buffer:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    return server, client


def read_messages(client: socket.socket, n: int) -> list[dict]:
    """The next `n` messages the client gets, parsed by wsproto as a browser's WebSocket would."""
    conn = Connection(ConnectionType.CLIENT)
    got: list[dict] = []
    part = ""  # wsproto hands a large message over in pieces as it arrives
    client.settimeout(10)
    while len(got) < n:
        conn.receive_data(client.recv(1 << 16))
        for e in conn.events():
            if isinstance(e, TextMessage):
                part += e.data
                if e.message_finished:
                    got.append(orjson.loads(part))
                    part = ""
    return got


def event(seq: int, execution_id: str = "exec_a", owner_id: str = "user_mark", size: int = 10) -> dict:
    return {"type": "event", "event_id": f"evt_{seq}", "seq": seq, "execution_id": execution_id,
            "owner_id": owner_id, "message": "x" * size}


def publish_and_read(redis, relay: Relay, client: socket.socket, n: int, size: int) -> list[int]:
    """Publish events 1..n in one burst while `client` reads; the sequence numbers it received."""
    received: list[dict] = []
    reader = threading.Thread(target=lambda: received.extend(read_messages(client, n)))
    reader.start()
    pipe = redis.pipeline(transaction=False)
    for seq in range(1, n + 1):
        pipe.publish(relay.channel, orjson.dumps(event(seq, size=size)))
    pipe.execute()
    reader.join(30)
    return [m["seq"] for m in received]


@pytest.fixture
def relay(migrated):
    """A relay on a channel of its own, on the test Redis. Its own client: the thread outlives the test."""
    name = f"{migrated.redis_key_prefix}relay-{secrets.token_hex(3)}"
    return Relay(redis_lib.Redis.from_url(migrated.redis_url), name)


def live(relay: Relay, sub: Subscriber, sock: socket.socket) -> Subscriber:
    relay.subscribe(sub)
    sub.start(sock, 0)
    assert sub.take() == b""  # nothing waiting: the socket goes live
    return sub


def pump(sub: Subscriber, sock: socket.socket) -> threading.Thread:
    """What a socket's own thread does (web/live.py's `_pump`): send the backlog whenever there is one."""
    def run() -> None:
        while not (sub.overflowed or sub.broken):
            while data := sub.take():
                sock.sendall(data)
            sub.wake.wait(0.2)
            sub.wake.clear()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_a_frame_is_what_a_websocket_client_reads_as_one_text_message(size: int) -> None:
    conn = Connection(ConnectionType.CLIENT)
    conn.receive_data(text_frame(b"a" * size))
    (msg,) = list(conn.events())
    assert isinstance(msg, TextMessage) and msg.data == "a" * size and msg.message_finished


def test_messages_reach_a_live_socket_without_its_thread_and_without_internal_keys(redis, relay) -> None:
    server, client = tcp_pair()
    sub = live(relay, Subscriber(MARK, "exec_a"), server)
    for msg in ({**event(1), "commit_range": [1, 1]}, event(2, "exec_b"), event(3)):
        redis.publish(relay.channel, orjson.dumps(msg))
    got = read_messages(client, 2)
    assert [m["event_id"] for m in got] == ["evt_1", "evt_3"]
    assert all("owner_id" not in m and "commit_range" not in m for m in got)
    assert not sub.wake.is_set()  # written by the relay itself: the socket's thread was not woken


def test_each_message_is_serialised_once_whatever_the_number_of_sockets(redis, relay, monkeypatch) -> None:
    built: list[dict] = []
    real = relay_module.client_frame
    monkeypatch.setattr(relay_module, "client_frame", lambda msg: built.append(msg) or real(msg))
    pairs = [tcp_pair() for _ in range(10)]
    for i, (server, _) in enumerate(pairs):
        live(relay, Subscriber(MARK, "exec_a" if i % 2 else None), server)
    for msg in (event(1), event(2)):
        redis.publish(relay.channel, orjson.dumps(msg))
    for _, client in pairs:
        assert [m["event_id"] for m in read_messages(client, 2)] == ["evt_1", "evt_2"]
    assert [m["event_id"] for m in built] == ["evt_1", "evt_2"]


def test_a_burst_of_large_messages_arrives_whole_and_in_order(redis, relay) -> None:
    # Read from Redis in bursts: a message only partly received when a read starts must be waited
    # for, not given up on (redis-py's timed reads drop the connection, and what it held, if so).
    server, client = tcp_pair()
    pump(live(relay, Subscriber(MARK, None), server), server)
    assert publish_and_read(redis, relay, client, 300, size=20_000) == list(range(1, 301))


def test_only_the_owner_and_admins_get_a_message_and_a_revocation_reaches_its_grant_only(redis, relay) -> None:
    (s1, _), (s2, c2), (s3, c3) = tcp_pair(), tcp_pair(), tcp_pair()
    eve = live(relay, Subscriber(Principal("user", "user_eve", via="cred_eve"), None), s2)
    admin = live(relay, Subscriber(Principal("user", "user_root", is_admin=True, via="cred_root"), None), s3)
    mark = live(relay, Subscriber(MARK, "exec_a"), s1)
    for msg in (event(1), revoked_message(user_ids=["user_mark"]), event(2)):
        redis.publish(relay.channel, orjson.dumps(msg))
    assert [m["event_id"] for m in read_messages(c3, 2)] == ["evt_1", "evt_2"]
    assert mark.revoked and mark.wake.is_set() and not eve.revoked and not admin.revoked
    c2.setblocking(False)
    with pytest.raises(BlockingIOError):
        c2.recv(1)  # Eve got nothing of Mark's


def test_a_socket_that_is_replaying_gets_the_messages_after_its_replay_once() -> None:
    server, client = tcp_pair()
    sub = Subscriber(MARK, None)
    sub.offer([(1, text_frame(b'{"seq":1}')), (2, text_frame(b'{"seq":2}')), (None, text_frame(b'{"seq":null}'))])
    assert sub.wake.is_set()  # queued for the socket's thread: not live yet
    sub.start(server, skip_through=1)  # the replay covered position 1
    server.sendall(sub.take())
    assert sub.take() == b""  # sent: live from now on
    sub.offer([(1, text_frame(b'{"seq":1}')), (3, text_frame(b'{"seq":3}'))])  # a late copy of 1, then 3
    assert sub.take() == b""  # 3 went straight out once the backlog was sent
    assert [m["seq"] for m in read_messages(client, 3)] == [2, None, 3]


def test_a_socket_that_stops_reading_is_cut_off_and_the_others_get_everything(redis, relay, monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "BACKLOG_LIMIT", 20)
    (slow_server, _), (fast_server, fast_client) = tcp_pair(buffer=4096), tcp_pair()
    slow = live(relay, Subscriber(MARK, None), slow_server)
    fast = live(relay, Subscriber(MARK, None), fast_server)
    pump(fast, fast_server)
    assert publish_and_read(redis, relay, fast_client, 200, size=2000) == list(range(1, 201))
    assert slow.overflowed and slow.take() == b""  # its backlog was dropped: it reconnects with since


def test_a_partial_write_is_finished_by_the_sockets_thread_in_order(relay) -> None:
    server, client = tcp_pair(buffer=4096)
    sub = live(relay, Subscriber(MARK, None), server)
    for seq in range(1, 41):
        sub.offer([(seq, text_frame(orjson.dumps(event(seq, size=3000))))])
    assert sub.wake.is_set()
    received: list[dict] = []
    reader = threading.Thread(target=lambda: received.extend(read_messages(client, 41)))
    reader.start()
    pump(sub, server)
    sub.offer([(41, text_frame(orjson.dumps(event(41))))])  # behind the rest, whichever way it goes
    reader.join(20)
    assert [m["seq"] for m in received] == list(range(1, 42))


def test_a_closed_connection_marks_its_subscriber_broken(relay) -> None:
    server, client = tcp_pair()
    sub = live(relay, Subscriber(MARK, None), server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # a reset, as a vanished browser leaves
    for seq in range(1, 4):
        sub.offer([(seq, text_frame(b"{}"))])
    assert sub.broken and sub.wake.is_set()


def test_a_write_takes_what_fits_at_once_and_a_dead_peer_is_an_error() -> None:
    server, client = tcp_pair(buffer=4096)
    taken = [send_now(server, b"x" * 65536) for _ in range(50)]
    assert taken[0] > 0 and taken[-1] == 0  # the buffers filled: nothing more, and no waiting
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()
    with pytest.raises(OSError):
        for _ in range(3):
            send_now(server, b"x")


def test_small_frames_are_not_held_back_by_nagle() -> None:
    server, _ = tcp_pair()
    no_delay(server)
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@given(st.permutations(range(12)), st.lists(st.integers(0, 3), min_size=12, max_size=12))
def test_the_sequencer_releases_commits_in_position_order_however_they_arrive(order, sizes) -> None:
    # Twelve commits, each of 1-4 positions of which only the last is published; published in any
    # order, close together: they leave in commit order.
    spans, first = [], 1
    for size in sizes:
        spans.append((first, first + size))
        first += size + 1
    seq = Sequencer(hold=10)
    seq.next_seq = 1
    out = []
    for i, k in enumerate(order):
        first, last = spans[k]
        out += seq.push({"type": "event", "event_id": k, "seq": last, "commit_range": [first, last]}, i * 0.001)
    assert [m["event_id"] for m in out] == list(range(12))
