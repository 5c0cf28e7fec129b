"""A cheap WebSocket and pub/sub listener for bench/stream_latency.py, run as its own process.

    python bench/ws_listen.py WS_URL SOCKETS REDIS_HOST:PORT CHANNEL

Opens SOCKETS WebSockets to WS_URL and one Redis pub/sub subscription to CHANNEL, all in one thread
on one epoll: one Python thread per socket (simple_websocket's client) would make the client's GIL,
not the server, the tail being measured. Prints "ready" once every socket is open, then records, on
the wall clock, when each event message arrives on each socket and when Redis delivers it to this
subscriber (the moment the web tier's relay can have it too). Stops when stdin closes, and prints one
JSON object: {"events": {event_id: [accepted timestamp, published at, [arrival, ...], seq,
commit range]}, "frames": n, "closed": n}; the last two as published, for replaying the relay's
ordering.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import selectors
import socket
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

EVENT_ID = re.compile(rb'"event_id":"([^"]+)"')
TIMESTAMP = re.compile(rb'"timestamp":"([^"]+)"')
SEQ = re.compile(rb'"seq":(\d+)')
COMMIT_RANGE = re.compile(rb'"commit_range":\[(\d+),(\d+)\]')


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fileno(self) -> int:
        return self.sock.fileno()


def open_socket(url: str) -> Conn:
    """A WebSocket's TCP connection, past its handshake, left non-blocking."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    sock.setblocking(False)
    conn = Conn(sock)
    conn.buf = head.split(b"\r\n\r\n", 1)[1]
    return conn


def frames(conn: Conn) -> list[tuple[int, bytes]]:
    """Complete frames in `conn.buf` as (opcode, payload); server frames are never masked."""
    out = []
    buf = conn.buf
    while len(buf) >= 2:
        opcode, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + n:
            break
        out.append((opcode, buf[at:at + n]))
        buf = buf[at + n:]
    conn.buf = buf
    return out


def pong(payload: bytes) -> bytes:
    mask = secrets.token_bytes(4)
    return bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def subscribe(address: str, channel: str) -> Conn:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    name = channel.encode()
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
    sock.setblocking(False)
    return Conn(sock)


class Record:
    def __init__(self) -> None:
        self.events: dict[str, list[Any]] = {}
        self.frames = 0
        self.closed = 0

    def entry(self, payload: bytes) -> list[Any] | None:
        if not payload.startswith(b'{"type":"event"'):
            return None
        m = EVENT_ID.search(payload)
        if m is None:
            return None
        eid = m.group(1).decode()
        got = self.events.get(eid)
        if got is None:
            ts = TIMESTAMP.search(payload)
            got = self.events[eid] = [ts.group(1).decode() if ts else None, None, [], None, None]
        return got


def on_socket(conn: Conn, rec: Record, sel: selectors.BaseSelector) -> None:
    try:
        data = conn.sock.recv(1 << 16)
    except BlockingIOError:
        return
    now = time.time()
    if not data:
        sel.unregister(conn)
        rec.closed += 1
        return
    conn.buf += data
    for opcode, payload in frames(conn):
        rec.frames += 1
        if opcode == 0x9:
            conn.sock.sendall(pong(payload))
        elif opcode == 0x8:
            sel.unregister(conn)
            rec.closed += 1
            return
        elif (got := rec.entry(payload)) is not None:
            got[2].append(now)


def on_pubsub(conn: Conn, rec: Record) -> None:
    try:
        conn.buf += conn.sock.recv(1 << 20)
    except BlockingIOError:
        return
    now = time.time()
    # RESP lines: a published JSON message has no CR LF inside, so every complete line starting with
    # "{" is one message's data.
    *lines, conn.buf = conn.buf.split(b"\r\n")
    for line in lines:
        if line.startswith(b"{") and (got := rec.entry(line)) is not None and got[1] is None:
            got[1] = now
            seq, span = SEQ.search(line), COMMIT_RANGE.search(line)
            got[3] = int(seq.group(1)) if seq else None
            got[4] = [int(span.group(1)), int(span.group(2))] if span else None


def main() -> None:
    url, n, redis_address, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rec = Record()
    sel = selectors.DefaultSelector()
    bus = subscribe(redis_address, channel)
    sel.register(bus, selectors.EVENT_READ, "bus")
    for _ in range(n):
        sel.register(open_socket(url), selectors.EVENT_READ, "ws")
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    print("ready", flush=True)
    while True:
        # The subscription first: it is what the relay hears, and it must not queue behind the sockets.
        for key, _ in sorted(sel.select(), key=lambda ready: ready[0].data != "bus"):
            if key.data == "ws":
                on_socket(key.fileobj, rec, sel)  # type: ignore[arg-type]
            elif key.data == "bus":
                on_pubsub(key.fileobj, rec)  # type: ignore[arg-type]
            elif not os.read(sys.stdin.fileno(), 1024):
                sys.stdout.buffer.write(orjson.dumps({"events": rec.events, "frames": rec.frames,
                                                      "closed": rec.closed}))
                sys.stdout.flush()
                return


def accepted_at(stamp: str) -> float:
    """A message's `timestamp` (the event's acceptance, ISO, UTC) on the wall clock."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
