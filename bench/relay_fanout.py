"""What the live stream's fan-out costs per message: one web process's relay (web/relay.py) pushing
messages from Redis pub/sub to N sockets that watch everything, alone in its process.

    python bench/relay_fanout.py                   # 100 sockets, 20,000 messages, bursts of 1 and 20
    python bench/relay_fanout.py --sockets 50 --messages 5000 --burst 1 --burst 100

The sockets are real TCP connections, read (and thrown away) by a child process. Messages are
published to Redis in bursts of --burst (one pipeline each, then a pause): a burst is what one
worker's commit publishes, and what the relay reads and writes to each socket in one go. Prints the
relay process's CPU time per message and per (message, socket), and the ceiling that implies for one
core, against messages in bursts of one (the baseline, every message on its own).

A second table times one frame's writes to every socket while other threads of the process are busy
in Python, as request threads are in a web process under load: Python's socket.send (which lets go
of the GIL for each write, the baseline) against the relay's `send_now` (which keeps it).
"""

from __future__ import annotations

import multiprocessing
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import orjson
import redis as redis_lib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import bench_parser  # noqa: E402
from orchestrator.credentials import Principal  # noqa: E402
from web.relay import Relay, Subscriber, send_now, text_frame  # noqa: E402

ADMIN = Principal("user", "user_bench", is_admin=True)


def drain_sockets(address: tuple[str, int], n: int, expected: int, done) -> None:
    """The clients: connect n sockets, read until each has `expected` bytes, then say so."""
    import selectors

    sel = selectors.DefaultSelector()
    left = {}
    for _ in range(n):
        s = socket.create_connection(address)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        left[s] = expected
    done.send("connected")
    while left:
        for key, _ in sel.select():
            data = key.fileobj.recv(1 << 20)
            left[key.fileobj] -= len(data)
            if left[key.fileobj] <= 0 or not data:
                sel.unregister(key.fileobj)
                del left[key.fileobj]
    done.send("done")


def message(seq: int) -> dict:
    return {"type": "event", "event_id": f"evt_{seq:08d}", "seq": seq, "commit_range": [seq, seq],
            "execution_id": "exec_bench", "event_type": "heartbeat", "task_id": None, "subtask_id": None,
            "status": "running", "message": "working on step, report", "timestamp": "2026-01-01T00:00:00.000000Z",
            "owner_id": "user_bench"}


def publish(url: str, channel: str, start: int, n: int, burst: int, pause: float) -> None:
    """The workers' part, in a process of its own so that the relay's process does nothing else."""
    r = redis_lib.Redis.from_url(url)
    for first in range(start, start + n, burst):
        pipe = r.pipeline(transaction=False)
        for seq in range(first, min(first + burst, start + n)):
            pipe.publish(channel, orjson.dumps(message(seq)))
        pipe.execute()
        time.sleep(pause)


def run(args, burst: int, start_seq: int) -> tuple[float, float]:
    """(relay CPU seconds, wall seconds) to push args.messages messages in bursts of `burst`."""
    relay = Relay(redis_lib.Redis.from_url(args.redis), f"bench:relay:{secrets.token_hex(4)}")
    listener = socket.create_server(("127.0.0.1", 0))
    frame_size = len(orjson.dumps({k: v for k, v in message(start_seq).items()
                                   if k not in ("owner_id", "commit_range")})) + 4
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=drain_sockets, daemon=True,
                                    args=(listener.getsockname(), args.sockets, frame_size * args.messages, theirs))
    child.start()
    for _ in range(args.sockets):
        conn, _ = listener.accept()
        sub = relay.subscribe(Subscriber(ADMIN, None))
        sub.start(conn, 0)
        sub.take()  # nothing waits: live
    assert ours.recv() == "connected"
    relay.sequencer.next_seq = start_seq
    cpu0, wall0 = time.process_time(), time.monotonic()
    publisher = multiprocessing.Process(target=publish, daemon=True, args=(
        args.redis, relay.channel, start_seq, args.messages, burst, args.pause))
    publisher.start()
    if not ours.poll(120):
        raise RuntimeError("the sockets did not get every message")
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    child.join(10)
    publisher.join(10)
    return cpu, wall


def spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))  # Python work, as a request thread parsing a batch does


def write_times(servers: list[socket.socket], write, busy: int, rounds: int) -> list[float]:
    """Seconds to write one frame to every socket, `rounds` times, with `busy` threads spinning."""
    frame = text_frame(orjson.dumps(message(1)))
    stop = threading.Event()
    spinners = [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(busy)]
    for t in spinners:
        t.start()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for s in servers:
            write(s, frame)
        times.append(time.perf_counter() - t0)
        time.sleep(0.005)
    stop.set()
    for t in spinners:
        t.join()
    return sorted(times)


def convoy(args) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=drain_sockets, daemon=True,
                                    args=(listener.getsockname(), args.sockets, 1 << 62, theirs))
    child.start()
    servers = [listener.accept()[0] for _ in range(args.sockets)]
    assert ours.recv() == "connected"
    writes = {"socket.send": lambda s, f: s.send(f, socket.MSG_DONTWAIT), "send_now": send_now}
    print(f"\none frame to {args.sockets} sockets, ms{'':<14}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for busy in (0, 1, 2):
        for name, write in writes.items():
            t = write_times(servers, write, busy, args.rounds)
            row = [t[len(t) // 2], t[int(len(t) * 0.9)], t[int(len(t) * 0.99)], t[-1]]
            print(f"{busy} busy threads, {name:<14}" + "".join(f"{v * 1e3:>8.2f}" for v in row))
    child.kill()


def main() -> None:
    ap = bench_parser(__doc__, pg=False)
    ap.add_argument("--sockets", type=int, default=100)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--burst", type=int, action="append", help="messages per burst (repeatable)")
    ap.add_argument("--pause", type=float, default=0.001, help="seconds between bursts")
    ap.add_argument("--rounds", type=int, default=300, help="frames written per row of the second table")
    args = ap.parse_args()
    bursts = args.burst or [1, 20]
    if 1 not in bursts:
        bursts.insert(0, 1)
    print(f"\nbench/relay_fanout.py --sockets {args.sockets} --messages {args.messages} "
          + " ".join(f"--burst {b}" for b in bursts))
    print(f"{'burst':>6}{'CPU us/msg':>12}{'us/(msg, socket)':>18}{'msgs/s, 1 core':>16}{'ratio':>8}")
    base = None
    for i, burst in enumerate(bursts):
        cpu, _ = run(args, burst, 1 + i * args.messages)
        per_msg = cpu / args.messages
        base = base or per_msg
        print(f"{burst:>6}{per_msg * 1e6:>12.1f}{per_msg / args.sockets * 1e6:>18.2f}{1 / per_msg:>16.0f}"
              f"{base / per_msg:>8.2f}")
    convoy(args)


if __name__ == "__main__":
    main()
