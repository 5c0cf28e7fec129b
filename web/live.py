"""The live stream: WebSocket endpoints fed by one Redis pub/sub subscriber per web process.

Workers publish after commit to one channel; this process's `Relay` thread reads it, puts event
messages back in commit order (`Sequencer`) and drops each message into the bounded queue of every
local socket that may see it. Each socket's own thread sends from its queue, so a slow socket never
stalls the others: when its queue overflows it is closed (1013, try again) and the client
reconnects with `?since=<last event id>` to catch up.

Catching up goes by position in commit order (`seq`, `orchestrator/event_positions.py`), not by
event id: `since` names an event the client saw (the one with the highest `seq`), and the replay
sends every event committed after it, in that order, that the socket may see. A `since` that names
no such event closes the socket (1008); a replay longer than REPLAY_LIMIT sends that many and
closes with 1013, to be resumed from the last one sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from flask_sock import Sock
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.credentials import Principal
from orchestrator.errors import Unauthorized
from orchestrator.execution_views import summary
from orchestrator.live_tokens import issue_stream_token, verify_stream_token
from orchestrator.models import Execution, ExecutionEvent, utcnow
from orchestrator.publish import channel, event_message, for_client, iso
from web.auth import current_principal, require_user

log = logging.getLogger(__name__)
bp = Blueprint("live", __name__)
sock = Sock()

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
QUEUE_SIZE = 1000
REPLAY_LIMIT = 1000
CLOSE_WAIT_SECONDS = 2.0
HOLD_SECONDS = 0.2  # how long the relay waits for an earlier commit's messages


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    execution_id: str | None
    queue: queue.Queue[dict[str, Any]] = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    overflowed: bool = False

    def wants(self, msg: dict[str, Any]) -> bool:
        if self.execution_id is not None and msg.get("execution_id") != self.execution_id:
            return False
        return self.principal.is_admin or msg.get("owner_id") == self.principal.id


class Sequencer:
    """Puts event messages back into commit order before they reach the sockets.

    Each shard's worker publishes after its own commit, so pub/sub order is not commit order: the
    commit that drew positions 10-11 may publish after the one that drew 12. A socket that got 12
    and then lost its connection would reconnect with `since` = 12 and never see 10-11. So a
    message whose commit does not come next is held, up to `hold` seconds, for the commits before
    it; then it goes anyway (their messages may never come: not every event is published, a
    publisher can die between commit and publish). Messages without a position (execution
    updates) keep their place behind any held event. Late messages go at once.
    """

    def __init__(self, hold: float = HOLD_SECONDS) -> None:
        self.hold = hold
        self.next_seq: int | None = None  # the first position no delivered commit covers
        self._held: list[tuple[float, dict[str, Any]]] = []  # (arrival time, message), arrival order

    def push(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        self._held.append((now, msg))
        return self.release(now)

    def wait(self, now: float, idle: float = 5.0) -> float:
        """Seconds until a held message is due (`idle` when none is held)."""
        return max(0.0, self._held[0][0] + self.hold - now) if self._held else idle

    def release(self, now: float) -> list[dict[str, Any]]:
        """The messages that may go now, in order."""
        out: list[dict[str, Any]] = []
        while self._held:
            if _position(self._held[0][1]) is None:
                out.append(self._held.pop(0)[1])
                continue
            _, i = min((pos, k) for k, (_, m) in enumerate(self._held) if (pos := _position(m)) is not None)
            first, last = _span(self._held[i][1])
            due = now - self._held[0][0] >= self.hold
            if self.next_seq is not None and first > self.next_seq and not due:
                break  # an earlier commit's messages may still be on their way
            out.append(self._held.pop(i)[1])
            self.next_seq = max(self.next_seq or 0, last + 1)
        return out


def _position(msg: dict[str, Any]) -> int | None:
    return msg.get("seq") if msg.get("type") == "event" else None


def _span(msg: dict[str, Any]) -> tuple[int, int]:
    # Positions drawn by the message's commit; a publisher that did not say covers just its own.
    seq = msg["seq"]
    span = msg.get("commit_range")
    return (span[0], span[1]) if span else (seq, seq)


class Relay:
    """One pub/sub subscription per process, put in commit order and fanned out to local sockets."""

    def __init__(self, r: redis.Redis, channel_name: str) -> None:
        self.redis = r
        self.channel = channel_name
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.sequencer = Sequencer()  # only the relay thread touches it

    def subscribe(self, sub: Subscriber) -> Subscriber:
        with self._lock:
            self._subs.add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name="stream-relay", daemon=True)
                self._thread.start()
        # Messages published before our SUBSCRIBE would be lost: wait until it is in place.
        self._ready.wait(5)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._ready.set()
                while True:
                    msg = pubsub.get_message(timeout=self.sequencer.wait(time.monotonic()))
                    if msg is not None and msg["type"] == "message":
                        ready = self.sequencer.push(orjson.loads(msg["data"]), time.monotonic())
                    else:
                        ready = self.sequencer.release(time.monotonic())
                    for m in ready:
                        self.dispatch(m)
            except redis.RedisError as exc:
                log.warning("stream relay lost Redis (%s); reconnecting", exc)
                time.sleep(1)

    def dispatch(self, msg: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if sub.wants(msg):
                try:
                    sub.queue.put_nowait(msg)
                except queue.Full:
                    sub.overflowed = True


def relay() -> Relay:
    app = current_app
    r = app.extensions.get("relay")
    if r is None:
        r = app.extensions.setdefault(
            "relay", Relay(app.extensions["redis"], channel(app.config["SETTINGS"].redis_key_prefix)))
    return r


@bp.post("/api/tokens/stream")
@require_user
def stream_token() -> ResponseReturnValue:
    token = issue_stream_token(current_app.config["SECRET_KEY"], current_principal(), utcnow())
    return jsonify({"token": token.token, "expires_at": iso(token.expires_at)}), 201


def _client_view(msg: dict[str, Any]) -> bytes:
    return orjson.dumps(for_client(msg))


class UnknownSince(Exception):
    """`since` names no event this principal may see."""


def since_position(session: Session, principal: Principal, since: str) -> int:
    """The commit position of event `since`, which must be one the principal may see. It may belong
    to any of the principal's executions: positions are one order across all of them."""
    q = (select(ExecutionEvent.seq).join(Execution, Execution.id == ExecutionEvent.execution_id)
         .where(ExecutionEvent.id == since))
    if not principal.is_admin:
        q = q.where(Execution.owner_id == principal.id)
    seq = session.scalar(q)
    if seq is None:  # no such event, someone else's (indistinguishable on purpose), or not committed
        raise UnknownSince(since)
    return seq


def missed_events(session: Session, principal: Principal, execution_id: str | None, after: int,
                  limit: int) -> list[tuple[ExecutionEvent, str]]:
    """(event, owner id) committed after position `after`, in commit order, at most `limit`."""
    q = (select(ExecutionEvent, Execution.owner_id).join(Execution, Execution.id == ExecutionEvent.execution_id)
         .where(ExecutionEvent.seq > after).order_by(ExecutionEvent.seq).limit(limit))
    if execution_id is not None:
        q = q.where(ExecutionEvent.execution_id == execution_id)
    if not principal.is_admin:
        q = q.where(Execution.owner_id == principal.id)
    return [(ev, owner) for ev, owner in session.execute(q)]


def _close(ws: Any, code: int, message: str) -> None:
    """Close with `code` and wait (briefly) for the client's reply to the close frame. Returning at
    once lets the server drop the TCP connection while the reply is in flight: the reset can make the
    client lose the close frame itself, and it then sees 1005 (no code) instead of ours."""
    ws.close(code, message)
    reader = getattr(ws, "thread", None)  # simple_websocket's reader ends on the client's reply
    if reader is not None:
        reader.join(CLOSE_WAIT_SECONDS)


def _replay(ws: Any, principal: Principal, execution_id: str | None, since: str) -> tuple[int, bool]:
    """Send what the client missed after event `since`, in commit order; return the last position
    covered and whether REPLAY_LIMIT cut the replay short."""
    with current_app.extensions["db"].reading() as s:
        last = since_position(s, principal, since)
        rows = missed_events(s, principal, execution_id, last, REPLAY_LIMIT)
    for ev, owner in rows:
        ws.send(_client_view(event_message(ev, owner)))
        last = ev.seq or last
    return last, len(rows) >= REPLAY_LIMIT


def _serve(ws: Any, execution_id: str | None) -> None:
    try:
        principal = verify_stream_token(current_app.config["SECRET_KEY"], request.args.get("token"))
    except Unauthorized as exc:
        _close(ws, POLICY_VIOLATION, exc.message)
        return
    snapshot = None
    if execution_id is not None:
        with current_app.extensions["db"].reading() as s:
            ex = s.get(Execution, execution_id)
            if ex is None or not (principal.is_admin or ex.owner_id == principal.id):
                _close(ws, POLICY_VIOLATION, "No such execution.")
                return
            snapshot = {"type": "execution_update", **summary(ex), "timestamp": iso(utcnow())}
    sub = relay().subscribe(Subscriber(principal, execution_id))
    try:
        _send_stream(ws, sub, snapshot)
    finally:
        relay().unsubscribe(sub)


def _send_stream(ws: Any, sub: Subscriber, snapshot: dict[str, Any] | None) -> None:
    # Subscribed before the replay reads, so nothing committed in between is lost; what both the
    # replay and the queue hold is skipped by position.
    last_seq = 0
    if request.args.get("since"):
        try:
            last_seq, cut_short = _replay(ws, sub.principal, sub.execution_id, request.args["since"])
        except UnknownSince:
            _close(ws, POLICY_VIOLATION, "Unknown event in since: reconnect without it and reload.")
            return
        if cut_short:
            _close(ws, TRY_AGAIN_LATER, "More to replay: reconnect with ?since=<last event id>.")
            return
    if snapshot is not None:
        ws.send(_client_view(snapshot))
    while ws.connected:
        if sub.overflowed:
            _close(ws, TRY_AGAIN_LATER, "Too slow: reconnect with ?since=<last event id>.")
            return
        try:
            msg = sub.queue.get(timeout=10)
        except queue.Empty:
            continue
        seq = msg.get("seq") if msg.get("type") == "event" else None
        if seq is not None and seq <= last_seq:
            continue  # replayed already
        ws.send(_client_view(msg))


@sock.route("/api/executions/<execution_id>/stream", bp=bp)
def execution_stream(ws: Any, execution_id: str) -> None:
    _serve(ws, execution_id)


@sock.route("/api/stream", bp=bp)
def all_streams(ws: Any) -> None:
    _serve(ws, None)
