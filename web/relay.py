"""The live stream's fan-out: one Redis pub/sub subscription per web process, its messages put back
in commit order, each written once to every local socket that may see it.

What a message costs here is paid once per socket it reaches, so that part is kept to a write:
- a message becomes a WebSocket frame once (the client's JSON, then the frame header), and the same
  bytes go to every socket. That needs frames without per-connection state: the stream declines
  permessage-deflate (`web/live.py`), which would compress each message once per socket, each with
  that socket's own zlib context, to save a few hundred bytes;
- the relay thread writes the frames itself, without blocking (MSG_DONTWAIT), to every socket that
  keeps up, and all the frames one read from Redis brought for a socket go in one write: no thread
  per socket is woken for a message (a hundred wake-ups, each queueing for the GIL, were most of a
  message's way from Redis to the sockets). It keeps the GIL through those writes (`send_now`);
- a socket that does not keep up (its kernel buffer is full) or is not live yet (still replaying what
  it missed) gets its frames in a bounded backlog that its own thread sends; once the backlog is
  empty the relay writes to it directly again. When the backlog overflows the socket is closed
  (1013, try again), and the others never wait for it.

Figures: docs/performance-stream.md; bench/relay_fanout.py measures this module alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import heapq
import logging
import os
import select
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import orjson
import redis

from orchestrator.credentials import Principal
from orchestrator.publish import for_client
from orchestrator.revocation import ACCESS_REVOKED, revokes

log = logging.getLogger(__name__)

BACKLOG_LIMIT = 1000  # frames a socket may have waiting before it is closed as too slow
HOLD_SECONDS = 0.2  # how long the relay waits for an earlier commit's messages
READ_BURST = 500  # messages read from Redis, at most, before they are dispatched together
READ_BURST_SECONDS = 0.002  # and for at most this long

Frame = tuple[int | None, bytes]  # (commit position of an event message, the frame's bytes)


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2), as a server sends it: the same for every socket."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def client_frame(msg: dict[str, Any]) -> bytes:
    return text_frame(orjson.dumps(for_client(msg)))


def no_delay(sock: socket.socket) -> None:
    """Send small frames at once: with Nagle's algorithm on, a frame written while the previous one is
    unacknowledged waits for the client's (possibly delayed, up to 40 ms) ACK."""
    with contextlib.suppress(OSError):  # not TCP (a unix socket): nothing to do
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@functools.cache
def _send_holding_the_gil() -> Callable[[int, bytes, int, int], int] | None:
    """libc's send(2), called through ctypes.PyDLL, which keeps the GIL during the call; None where
    there is no such C library."""
    try:
        send = ctypes.PyDLL(None, use_errno=True).send
    except (OSError, AttributeError):
        return None
    send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    send.restype = ctypes.c_ssize_t
    return send


def send_now(sock: socket.socket, data: bytes) -> int:
    """Write what the socket takes at once, without waiting; returns how many bytes it took.

    Python's socket.send lets go of the GIL for the system call. Every time, a thread busy in Python
    (a request being parsed) may take the GIL, and the relay then waits up to the switch interval
    (5 ms) to get it back: one frame to 100 sockets beside two busy threads took 678 ms at p99 that
    way, 2.3 ms this way (bench/relay_fanout.py). A send that cannot block takes microseconds, so the
    relay keeps the GIL through it."""
    send = _send_holding_the_gil()
    if send is None:
        try:
            return sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
    # MSG_NOSIGNAL: a closed peer is an error returned here, never a SIGPIPE for the process.
    sent = send(sock.fileno(), data, len(data), socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0))
    if sent >= 0:
        return sent
    err = ctypes.get_errno()
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
        return 0
    raise OSError(err, os.strerror(err))


def send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Write all of `data`; TimeoutError when the socket accepts nothing for `timeout` seconds."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            if not select.select([], [sock], [], timeout)[1]:
                raise TimeoutError("the client stopped reading") from None


@dataclass(eq=False)
class Subscriber:
    """One socket's subscription. The relay thread `offer`s it frames; the socket's own thread sends
    what waits in its backlog (`take`) until it can go `live`, when the relay writes directly."""

    principal: Principal
    execution_id: str | None
    wake: threading.Event = field(default_factory=threading.Event)  # set when the backlog has frames
    overflowed: bool = False
    broken: bool = False  # a write failed: the connection is gone
    revoked: bool = False  # an `access_revoked` message named its user or grant
    retired: bool = False  # unsubscribed: the socket is closing, the relay writes no more to it
    _sock: socket.socket | None = None
    _live: bool = False
    _skip_through: int = 0  # event messages up to this position were replayed already
    _backlog: deque[Frame] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wants(self, msg: dict[str, Any]) -> bool:
        if msg.get("type") == ACCESS_REVOKED:
            return revokes(msg, self.principal.id, self.principal.via)
        if self.execution_id is not None and msg.get("execution_id") != self.execution_id:
            return False
        return self.principal.is_admin or msg.get("owner_id") == self.principal.id

    def offer(self, frames: list[Frame]) -> None:
        """Frames for this socket, in order (relay thread only): written now if the socket is live and
        has room, else kept for the socket's own thread."""
        with self._lock:
            frames = [f for f in frames if f[0] is None or f[0] > self._skip_through]
            if not frames or self.overflowed or self.broken or self.revoked or self.retired:
                return
            if self._live and not self._backlog:
                data = b"".join(f for _, f in frames)
                try:
                    sent = send_now(self._sock, data)  # type: ignore[arg-type]
                except OSError:
                    self.broken = True
                    self.wake.set()
                    return
                if sent == len(data):
                    return
                frames = [(None, data[sent:])]  # the rest of this write, first in line
            self._backlog.extend(frames)
            if len(self._backlog) > BACKLOG_LIMIT:
                self.overflowed = True
                self._backlog.clear()
            self.wake.set()

    def revoke(self) -> None:
        """Nothing more goes to this socket; its thread closes it (1008)."""
        with self._lock:
            self.revoked = True
            self._backlog.clear()
        self.wake.set()

    def retire(self) -> None:
        """No more writes from the relay (a dispatch under way may still hold this subscriber): the
        socket's thread is about to close the connection, and a close frame must not meet a frame."""
        with self._lock:
            self.retired = True
            self._backlog.clear()

    def start(self, sock: socket.socket, skip_through: int) -> None:
        """The socket is past its replay: event messages up to `skip_through` were sent already."""
        no_delay(sock)
        with self._lock:
            self._sock = sock
            self._skip_through = skip_through

    def take(self) -> bytes:
        """What waits in the backlog, in one piece (the socket's own thread sends it); when nothing
        waits, the socket goes live and the relay writes to it directly from now on."""
        with self._lock:
            data = b"".join(f for seq, f in self._backlog if seq is None or seq > self._skip_through)
            self._backlog.clear()
            self._live = not data
            return data


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
        # arrival number -> (arrival time, message), in arrival order (an OrderedDict: finding the oldest
        # stays O(1) however many were taken from the front, which a dict's iteration does not)
        self._arrivals: OrderedDict[int, tuple[float, dict[str, Any]]] = OrderedDict()
        self._positions: list[tuple[int, int]] = []  # heap of (position, arrival number) of held events
        self._numbers = count()

    def push(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        self.add(msg, now)
        return self.release(now)

    def add(self, msg: dict[str, Any], now: float) -> None:
        """Hold `msg` without releasing anything (a burst is released once, after its last message)."""
        n = next(self._numbers)
        self._arrivals[n] = (now, msg)
        if (pos := _position(msg)) is not None:
            heapq.heappush(self._positions, (pos, n))

    def wait(self, now: float, idle: float = 5.0) -> float:
        """Seconds until a held message is due (`idle` when none is held)."""
        if not self._arrivals:
            return idle
        return max(0.0, self._arrivals[next(iter(self._arrivals))][0] + self.hold - now)

    def release(self, now: float) -> list[dict[str, Any]]:
        """The messages that may go now, in order."""
        out: list[dict[str, Any]] = []
        while self._arrivals:
            oldest = next(iter(self._arrivals))
            arrived, msg = self._arrivals[oldest]
            if _position(msg) is None:
                out.append(self._arrivals.pop(oldest)[1])
                continue
            _, n = self._positions[0]  # the held event with the lowest position
            first, last = _span(self._arrivals[n][1])
            if self.next_seq is not None and first > self.next_seq and now - arrived < self.hold:
                break  # an earlier commit's messages may still be on their way
            heapq.heappop(self._positions)
            out.append(self._arrivals.pop(n)[1])
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
        self._subs: dict[str | None, set[Subscriber]] = {}  # by execution watched (None: all of them)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.sequencer = Sequencer()  # only the relay thread touches it

    def subscribe(self, sub: Subscriber) -> Subscriber:
        with self._lock:
            self._subs.setdefault(sub.execution_id, set()).add(sub)
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(target=self._run, name="stream-relay", daemon=True)
                self._thread.start()
        # Messages published before our SUBSCRIBE would be lost: wait until it is in place.
        self._ready.wait(5)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.retire()
        with self._lock:
            subs = self._subs.get(sub.execution_id, set())
            subs.discard(sub)
            if not subs:
                self._subs.pop(sub.execution_id, None)

    def _run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._ready.set()
                while True:
                    self._read(pubsub)
                    self.dispatch(self.sequencer.release(time.monotonic()))
            except redis.RedisError as exc:
                log.warning("stream relay lost Redis (%s); reconnecting", exc)
                time.sleep(1)

    def _read(self, pubsub: redis.client.PubSub) -> None:
        """Wait for a message (or until a held one is due), then take whatever else has arrived.

        Messages are read blocking once their first bytes are in: redis-py's reads with a timeout
        (`get_message(timeout=...)`) raise TimeoutError when a message is only partly received when
        the timeout ends, and the connection is then lost, with whatever it still held."""
        pubsub.check_health()  # a PING now and then (the client's health_check_interval) finds a dead link
        conn = pubsub.connection
        if not conn.can_read(timeout=self.sequencer.wait(time.monotonic())):
            return
        # A burst ends when nothing more has arrived, or after READ_BURST_SECONDS: under a steady
        # stream, the first message read must not wait for an endless burst behind it.
        deadline = time.monotonic() + READ_BURST_SECONDS
        for _ in range(READ_BURST):
            msg = pubsub.get_message(timeout=None)
            now = time.monotonic()
            if msg is not None and msg["type"] == "message":
                self.sequencer.add(orjson.loads(msg["data"]), now)
            if now >= deadline or not conn.can_read(timeout=0):
                return

    def dispatch(self, messages: list[dict[str, Any]]) -> None:
        """Hand `messages` (in order) to the local sockets that may see them: each message's frame is
        built once, and each socket gets all of its frames in one offer."""
        if not messages:
            return
        with self._lock:
            everything = list(self._subs.get(None, ()))
            watching = {ex: list(subs) for ex, subs in self._subs.items() if ex is not None}
        frames: dict[Subscriber, list[Frame]] = {}
        for msg in messages:
            if msg.get("type") == ACCESS_REVOKED:
                for sub in (*everything, *(s for subs in watching.values() for s in subs)):
                    if sub.wants(msg):
                        sub.revoke()
                continue
            frame = None
            for sub in (*watching.get(msg.get("execution_id"), ()), *everything):
                if sub.wants(msg):
                    frame = frame or (_position(msg), client_frame(msg))
                    frames.setdefault(sub, []).append(frame)
        for sub, its_frames in frames.items():
            sub.offer(its_frames)
