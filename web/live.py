"""The live stream: WebSocket endpoints fed by one Redis pub/sub subscriber per web process.

Workers publish after commit to one channel; this process's relay (`web/relay.py`) reads it, puts
event messages back in commit order and writes each message's frame, built once, to every local
socket that may see it. A socket that does not keep up gets its frames from a bounded backlog that
its own thread sends, so a slow socket never stalls the others: when its backlog overflows it is
closed (1013, try again) and the client reconnects with `?since=<last event id>` to catch up.

Catching up goes by position in commit order (`seq`, `orchestrator/event_positions.py`), not by
event id: `since` names an event the client saw (the one with the highest `seq`), and the replay
sends every event committed after it, in that order, that the socket may see. A `since` that names
no such event closes the socket (1008); a replay longer than REPLAY_LIMIT sends that many and
closes with 1013, to be resumed from the last one sent.

Messages are JSON in text frames. The stream declines permessage-deflate, so that one frame's bytes
serve every socket (see `web/relay.py`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from flask_sock import Sock
from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.credentials import Principal
from orchestrator.errors import Unauthorized
from orchestrator.execution_views import summary
from orchestrator.live_tokens import issue_stream_token, verify_stream_token
from orchestrator.metrics import instruments
from orchestrator.models import Execution, ExecutionEvent, utcnow
from orchestrator.publish import channel, event_message, iso
from web.auth import current_principal, grant_is_live, require_user
from web.openapi import doc
from web.relay import Relay, Subscriber, client_frame, send_all
from web.schemas.answers import StreamTokenSchema

log = logging.getLogger(__name__)
bp = Blueprint("live", __name__)
sock = Sock()

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
REPLAY_LIMIT = 1000
CLOSE_WAIT_SECONDS = 2.0
SEND_TIMEOUT_SECONDS = 10.0  # a client that takes nothing for this long is cut off
IDLE_SECONDS = 10.0  # a socket's thread looks at its connection at least this often


def relay() -> Relay:
    app = current_app
    r = app.extensions.get("relay")
    if r is None:
        r = app.extensions.setdefault(
            "relay", Relay(app.extensions["redis"], channel(app.config["SETTINGS"].redis_key_prefix)))
    return r


@bp.post("/api/tokens/stream")
@doc("A short-lived token that opens the WebSocket streams (see the description)",
     answers={201: StreamTokenSchema})
@require_user
def stream_token() -> ResponseReturnValue:
    token = issue_stream_token(current_app.config["SECRET_KEY"], current_principal(), utcnow())
    return jsonify({"token": token.token, "expires_at": iso(token.expires_at)}), 201


@bp.before_request
def _decline_compression() -> None:
    # simple_websocket accepts permessage-deflate whenever a client offers it (browsers always do),
    # and then every message is compressed once per socket. Without the offer, it is not negotiated.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


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
        send_all(ws.sock, client_frame(event_message(ev, owner)), SEND_TIMEOUT_SECONDS)
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
    # The socket's thread wakes on simple_websocket's event: set for the backlog (by the relay), and
    # when the client closes (by the socket's reader thread).
    sub = relay().subscribe(Subscriber(principal, execution_id, wake=ws.event))
    sockets = instruments().open_websockets
    sockets.inc()
    try:
        # Checked once subscribed, so that a revocation announced after the check reaches the queue.
        if not grant_is_live(principal):
            _close(ws, POLICY_VIOLATION, "Access was revoked: log in or use another token.")
            return
        _send_stream(ws, sub, snapshot)
    finally:
        sockets.dec()
        relay().unsubscribe(sub)


def _send_stream(ws: Any, sub: Subscriber, snapshot: dict[str, Any] | None) -> None:
    # Subscribed before the replay reads, so nothing committed in between is lost; what both the
    # replay and the backlog hold is skipped by position.
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
        send_all(ws.sock, client_frame(snapshot), SEND_TIMEOUT_SECONDS)
    sub.start(ws.sock, last_seq)
    _pump(ws, sub)


def _pump(ws: Any, sub: Subscriber) -> None:
    """Send the socket's backlog until it is empty and the relay writes to the socket itself; then
    wait for more backlog, a revocation, an overflow or the client's leaving."""
    while ws.connected and not sub.broken:
        if sub.revoked:
            _close(ws, POLICY_VIOLATION, "Access was revoked: log in or use another token.")
            return
        if sub.overflowed:
            _close(ws, TRY_AGAIN_LATER, "Too slow: reconnect with ?since=<last event id>.")
            return
        data = sub.take()
        if data:
            try:
                send_all(ws.sock, data, SEND_TIMEOUT_SECONDS)
            except TimeoutError:
                with contextlib.suppress(OSError):  # a close frame would not get through either
                    ws.sock.shutdown(socket.SHUT_RDWR)
                return
            continue
        sub.wake.wait(IDLE_SECONDS)
        sub.wake.clear()


@sock.route("/api/executions/<execution_id>/stream", bp=bp)
def execution_stream(ws: Any, execution_id: str) -> None:
    _serve(ws, execution_id)


@sock.route("/api/stream", bp=bp)
def all_streams(ws: Any) -> None:
    _serve(ws, None)
