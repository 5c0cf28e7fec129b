"""Live-stream latency: time from an event's POST to its message on 100 open WebSockets while a
background load of events flows through the same stack (PostgreSQL, Redis, gunicorn, Celery).

    python bench/stream_latency.py                # 100 sockets, ~1,000 events/s of load
    python bench/stream_latency.py --sockets 50 --load 500 --probes 100

The baseline in the same run is the same probes with no background load. Prints p50 and p99 over
every (probe, socket) arrival, and the load actually achieved.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import threading
import time
from pathlib import Path

import redis as redis_lib
import requests
import simple_websocket

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from bench.ingest import Stack, clean_up, event_body, fresh_stack_env, pct, setup_scene  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.models import Execution  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402


class Listener(threading.Thread):
    def __init__(self, url: str, arrivals: dict[str, list[float]], lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.ws = simple_websocket.Client.connect(url)
        self.arrivals = arrivals
        self.lock = lock
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            try:
                raw = self.ws.receive(timeout=0.5)
            except simple_websocket.ConnectionClosed:
                return
            if raw is None:
                continue
            now = time.perf_counter()
            msg = json.loads(raw)
            if msg.get("type") == "event" and (msg.get("message") or "").startswith("probe"):
                with self.lock:
                    self.arrivals.setdefault(msg["event_id"], []).append(now)


def load(stack: Stack, scene, rate: int, stop: threading.Event, sent: list[int]) -> None:
    """Send about `rate` events/s as batches of 100 from the load agents."""
    sess = requests.Session()
    batch, n = 100, 0
    interval = batch / rate
    next_at = time.perf_counter()
    while not stop.is_set():
        agent_id, key, ex_id, sub_id = scene[n % len(scene)]
        items = [{**event_body(agent_id, sub_id, n + i), "execution_id": ex_id} for i in range(batch)]
        sess.post(stack.url + "/api/events/batch", json={"events": items},
                  headers={"Authorization": f"Bearer {key}"}, timeout=30).raise_for_status()
        n += batch
        sent[0] += batch
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))


def probe_round(stack: Stack, probe, n_probes: int, n_sockets: int, arrivals, lock) -> list[float]:
    agent_id, key, ex_id, sub_id = probe
    sess = requests.Session()
    sess.headers["Authorization"] = f"Bearer {key}"
    sent_at: dict[str, float] = {}
    for i in range(n_probes):
        t0 = time.perf_counter()
        resp = sess.post(f"{stack.url}/api/executions/{ex_id}/events", timeout=30, json={
            "agent_id": agent_id, "event_type": "heartbeat", "message": f"probe {i} {secrets.token_hex(3)}"})
        sent_at[resp.json()["event_id"]] = t0
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if all(len(arrivals.get(e, [])) >= n_sockets for e in sent_at):
                break
        time.sleep(0.05)
    with lock:
        return [t - sent_at[e] for e in sent_at for t in arrivals.get(e, [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--sockets", type=int, default=100)
    ap.add_argument("--load", type=int, default=1000, help="background events per second")
    ap.add_argument("--probes", type=int, default=60)
    args = ap.parse_args()

    db_url, env, log_dir = fresh_stack_env(args.pg, args.redis, "orch_stream", INGEST_REPLY_WAIT_MS="0",
                                           LOG_LEVEL="WARNING")
    prefix = env["REDIS_KEY_PREFIX"]
    r = redis_lib.Redis.from_url(args.redis)
    listeners: list[Listener] = []
    try:
        migrations.upgrade(db_url)
        db = Database(Settings.from_env(env))
        scene = setup_scene(db, r, prefix, 9)
        probe, load_scene = scene[0], scene[1:]
        with db.unit_of_work() as s:
            owner = s.get(Execution, probe[2]).owner_id
            _, user_token = issue_credential(s, user_id=owner)
        stack = Stack(env, "web.wsgi:app", log_dir, 2, max(64, args.sockets), 2)
        try:
            token = requests.post(stack.url + "/api/tokens/stream", timeout=10,
                                  headers={"Authorization": f"Bearer {user_token}"}).json()["token"]
            arrivals: dict[str, list[float]] = {}
            lock = threading.Lock()
            ws_url = stack.url.replace("http://", "ws://") + f"/api/executions/{probe[2]}/stream?token={token}"
            for _ in range(args.sockets):
                listener = Listener(ws_url, arrivals, lock)
                listener.start()
                listeners.append(listener)
            time.sleep(1)
            idle = probe_round(stack, probe, args.probes, args.sockets, arrivals, lock)
            stop, sent = threading.Event(), [0]
            loader = threading.Thread(target=load, args=(stack, load_scene, args.load, stop, sent), daemon=True)
            t0 = time.perf_counter()
            loader.start()
            time.sleep(1)
            busy = probe_round(stack, probe, args.probes, args.sockets, arrivals, lock)
            stop.set()
            loader.join(30)
            achieved = sent[0] / (time.perf_counter() - t0)
        finally:
            for listener in listeners:
                listener.stop = True
            stack.stop()
        print(f"\nbench/stream_latency.py  sockets={args.sockets}  probes={args.probes}  "
              f"load target={args.load}/s achieved={achieved:.0f}/s")
        print(f"{'condition':<22}{'arrivals':>10}{'p50 ms':>10}{'p99 ms':>10}")
        for name, vals in (("no load (baseline)", idle), ("under load", busy)):
            print(f"{name:<22}{len(vals):>10}{pct(vals, 50) * 1000:>10.1f}{pct(vals, 99) * 1000:>10.1f}")
        expected = args.probes * args.sockets
        print(f"delivered: {len(idle)}/{expected} idle, {len(busy)}/{expected} under load; "
              f"p50 ratio under load / idle: {statistics.median(busy) / statistics.median(idle):.2f}")
    finally:
        clean_up(args.pg, db_url, r, prefix)


if __name__ == "__main__":
    main()
