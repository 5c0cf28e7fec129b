"""The live stream: WebSocket endpoints fed by one Redis pub/sub subscriber per web process.

Workers publish after commit to one channel; this process's `Relay` thread reads it and drops each
message into the bounded queue of every local socket that may see it. Each socket's own thread
sends from its queue, so a slow socket never stalls the others: when its queue overflows it is
closed (1013, try again) and the client reconnects with `?since=<last event id>` to catch up.
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

from orchestrator.credentials import Principal
from orchestrator.errors import Unauthorized
from orchestrator.execution_views import summary
from orchestrator.models import Execution, ExecutionEvent, utcnow
from orchestrator.publish import channel, event_message, iso
from orchestrator.stream_tokens import issue_stream_token, verify_stream_token
from web.auth import current_principal, require_user

log = logging.getLogger(__name__)
bp = Blueprint("stream", __name__)
sock = Sock()

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
QUEUE_SIZE = 1000
REPLAY_LIMIT = 1000


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


class Relay:
    """One pub/sub subscription per process, fanned out to local sockets."""

    def __init__(self, r: redis.Redis, channel_name: str) -> None:
        self.redis = r
        self.channel = channel_name
        self._subs: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

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
                    msg = pubsub.get_message(timeout=5.0)
                    if msg is None or msg["type"] != "message":
                        continue
                    self.dispatch(orjson.loads(msg["data"]))
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
    return orjson.dumps({k: v for k, v in msg.items() if k != "owner_id"})


def _replay(ws: Any, principal: Principal, execution_id: str | None, since: str) -> str | None:
    """Send what the client missed after event `since`; return the last id sent."""
    with current_app.extensions["db"].reading() as s:
        q = (select(ExecutionEvent, Execution.owner_id).join(Execution, Execution.id == ExecutionEvent.execution_id)
             .where(ExecutionEvent.id > since).order_by(ExecutionEvent.id).limit(REPLAY_LIMIT))
        if execution_id is not None:
            q = q.where(ExecutionEvent.execution_id == execution_id)
        if not principal.is_admin:
            q = q.where(Execution.owner_id == principal.id)
        rows = s.execute(q).all()
    last = None
    for ev, owner in rows:
        ws.send(_client_view(event_message(ev, owner)))
        last = ev.id
    return last


def _serve(ws: Any, execution_id: str | None) -> None:
    try:
        principal = verify_stream_token(current_app.config["SECRET_KEY"], request.args.get("token"))
    except Unauthorized as exc:
        ws.close(POLICY_VIOLATION, exc.message)
        return
    snapshot = None
    if execution_id is not None:
        with current_app.extensions["db"].reading() as s:
            ex = s.get(Execution, execution_id)
            if ex is None or not (principal.is_admin or ex.owner_id == principal.id):
                ws.close(POLICY_VIOLATION, "No such execution.")
                return
            snapshot = {"type": "execution_update", **summary(ex), "timestamp": iso(utcnow())}
    sub = relay().subscribe(Subscriber(principal, execution_id))
    try:
        last_sent = None
        if request.args.get("since"):
            last_sent = _replay(ws, principal, execution_id, request.args["since"])
        if snapshot is not None:
            ws.send(_client_view(snapshot))
        while ws.connected:
            if sub.overflowed:
                ws.close(TRY_AGAIN_LATER, "Too slow: reconnect with ?since=<last event id>.")
                return
            try:
                msg = sub.queue.get(timeout=10)
            except queue.Empty:
                continue
            if last_sent is not None and msg.get("type") == "event" and msg["event_id"] <= last_sent:
                continue  # already replayed
            ws.send(_client_view(msg))
    finally:
        relay().unsubscribe(sub)


@sock.route("/api/executions/<execution_id>/stream", bp=bp)
def execution_stream(ws: Any, execution_id: str) -> None:
    _serve(ws, execution_id)


@sock.route("/api/stream", bp=bp)
def all_streams(ws: Any) -> None:
    _serve(ws, None)
