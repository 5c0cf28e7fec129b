"""Event ingestion benchmark: the whole path (HTTP → Redis → Celery → PostgreSQL) against a naive
baseline (the handler commits each event itself), measured in the same run on the same machine.

    python bench/ingest.py                      # PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379
    python bench/ingest.py --events 6000 --clients 16 --repeat 3

It creates a fresh database, starts gunicorn (2 workers × 16 threads) and a Celery worker
(2 processes), sets up agents that each hold a subtask, then drives events from client threads:
  single   one event per POST (the guide's endpoint), answered 201 once applied
  batch    POST /api/events/batch with --batch-size events; applied = outcome present in Redis
  naive    one event per POST to a handler that commits it in the request (baseline)
Prints events/s accepted and applied, p50/p99 latency from POST to applied, batch sizes the worker
used, and the ratio to the baseline. Medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis as redis_lib
import requests
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.events.protocol import read_outcome  # noqa: E402
from orchestrator.execution_graph import load_graphs, start_subtask  # noqa: E402
from orchestrator.executions import create_execution  # noqa: E402
from orchestrator.holds import record_hold  # noqa: E402
from orchestrator.models import Agent, ExecutionEvent, Plan, PlanSubtask, PlanTask, User, utcnow  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, env: dict[str, str], app: str, log_dir: Path, web_workers: int, threads: int,
                 concurrency: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        log = open(log_dir / f"web-{self.port}.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread",
             "--workers", str(web_workers), "--threads", str(threads), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
        self.worker_log = log_dir / f"worker-{self.port}.log"
        wlog = open(self.worker_log, "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "--loglevel", "INFO", "--concurrency",
             str(concurrency), "--without-gossip", "--without-mingle", "--hostname", f"bench-{self.port}@%h"],
            env=env, stdout=wlog, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200 and \
                        b" ready." in self.worker_log.read_bytes():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"stack did not start; see {log_dir}")

    def batch_sizes(self) -> list[int]:
        sizes: list[int] = []
        for m in re.finditer(rb"batches \[([0-9, ]+)\]", self.worker_log.read_bytes()):
            sizes.extend(int(x) for x in m.group(1).split(b","))
        return sizes

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def fresh_stack_env(pg: str, redis_url: str, stem: str, **extra: str) -> tuple[str, dict[str, str], Path]:
    """A new database named after `stem` and now, and the environment that points a stack at it:
    (database URL, environment, log folder)."""
    dbname = f"{stem}_{int(time.time())}"
    admin = create_engine(pg.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{dbname}"'))
    admin.dispose()
    db_url = pg.rsplit("/", 1)[0] + "/" + dbname
    log_dir = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")) / dbname
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url,
           "REDIS_KEY_PREFIX": f"{stem}:{secrets.token_hex(3)}:", "SECRET_KEY": "bench-secret",
           "ORCHESTRATOR_DATA_DIR": str(log_dir), "PYTHONPATH": str(ROOT), **extra}
    return db_url, env, log_dir


def clean_up(pg: str, db_url: str, r: redis_lib.Redis, prefix: str) -> None:
    """Drop what `fresh_stack_env` made: the database and every Redis key under the run's prefix."""
    for key in r.scan_iter(f"{prefix}*"):
        r.delete(key)
    admin = create_engine(pg.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{db_url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def agent_session(key: str) -> requests.Session:
    sess = requests.Session()
    sess.headers["Authorization"] = f"Bearer {key}"
    return sess


def setup_scene(db: Database, r: redis_lib.Redis, prefix: str, n_agents: int) -> list[tuple[str, str, str, str]]:
    """n_agents agents, each holding the first subtask of its own execution: (agent, key, execution, subtask)."""
    scene = []
    now = utcnow()
    with db.unit_of_work() as s:
        user = User(id=f"user_bench_{secrets.token_hex(3)}", username=f"bench_{secrets.token_hex(3)}")
        s.add(user)
        s.flush()
        for i in range(n_agents):
            agent = Agent(id=f"agent_bench_{i}_{secrets.token_hex(2)}", name=f"bench {i}",
                          capabilities=[{"action": "send_email", "params": []}])
            s.add(agent)
            _, key = issue_credential(s, agent_id=agent.id)
            plan = Plan(id=f"plan_bench_{i}_{secrets.token_hex(3)}", goal="bench", owner_id=user.id)
            task = PlanTask(id="task_1", title="Outreach", description="")
            for j in range(3):
                task.subtasks.append(PlanSubtask(plan_id=plan.id, id=f"task_1_{j}", title=f"step {j}",
                                                 action="send_email", position=j))
            plan.tasks.append(task)
            s.add(plan)
            s.flush()
            ex = create_execution(s, user.id, plan.id, now, agent_id=agent.id)
            ex.status = "QUEUED"
            s.flush()
            g = load_graphs(s, [ex.id])[ex.id]
            start_subtask(g, g.subtasks["task_1_0"], agent.id, now)
            ex.status = "RUNNING"
            scene.append((agent.id, key, ex.id, "task_1_0"))
    for agent_id, _, ex_id, sub_id in scene:
        record_hold(r, prefix, ex_id, sub_id, agent_id)
    return scene


def event_body(agent_id: str, sub_id: str, n: int) -> dict:
    kind = "task_started" if n % 2 else "heartbeat"
    body = {"agent_id": agent_id, "event_type": kind, "status": "running",
            "message": f"working on step, report {n}", "output_data": {"progress": n, "note": "x" * 120}}
    if kind != "heartbeat":
        body["task_id"] = sub_id
    return body


def count_events(db: Database, execution_ids: list[str]) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(ExecutionEvent).where(
            ExecutionEvent.execution_id.in_(execution_ids), ExecutionEvent.source == "agent")) or 0


def run_single(url_for, scene, events: int, clients: int, db: Database) -> dict:
    per_client = events // clients
    latencies: list[float] = []
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    before = count_events(db, [s[2] for s in scene])

    def client(idx: int) -> None:
        agent_id, key, ex_id, sub_id = scene[idx % len(scene)]
        sess = agent_session(key)
        local = []
        for n in range(per_client):
            t0 = time.perf_counter()
            resp = sess.post(url_for(ex_id), json=event_body(agent_id, sub_id, n), timeout=30)
            local.append(time.perf_counter() - t0)
            with lock:
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        with lock:
            latencies.extend(local)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    accepted_s = time.perf_counter() - t0
    total = per_client * clients
    while count_events(db, [s[2] for s in scene]) - before < total and time.perf_counter() - t0 < 120:
        time.sleep(0.05)
    applied_s = time.perf_counter() - t0
    return {"events": total, "accepted_per_s": total / accepted_s, "applied_per_s": total / applied_s,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000, "statuses": statuses}


def run_batch(base: str, scene, events: int, clients: int, batch_size: int, db: Database,
              r: redis_lib.Redis, prefix: str) -> dict:
    per_client = events // clients
    latencies: list[float] = []
    lock = threading.Lock()
    before = count_events(db, [s[2] for s in scene])

    def client(idx: int) -> None:
        agent_id, key, ex_id, sub_id = scene[idx % len(scene)]
        sess = agent_session(key)
        local = []
        for start in range(0, per_client, batch_size):
            items = [{**event_body(agent_id, sub_id, n), "execution_id": ex_id}
                     for n in range(start, min(per_client, start + batch_size))]
            t0 = time.perf_counter()
            resp = sess.post(base + "/api/events/batch", json={"events": items}, timeout=60)
            resp.raise_for_status()
            keys = [f"{prefix}outcome:{e['event_id']}" for e in resp.json()["events"]]
            while True:  # applied = every outcome of the batch is no longer "pending"
                vals = r.mget(keys)
                if all(v is not None and not read_outcome(v)[0] for v in vals):
                    break
                time.sleep(0.002)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    total = per_client * clients
    while count_events(db, [s[2] for s in scene]) - before < total and time.perf_counter() - t0 < 120:
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    return {"events": total, "accepted_per_s": total / elapsed, "applied_per_s": total / elapsed,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()

    db_url, env, log_dir = fresh_stack_env(args.pg, args.redis, "orch_bench", INGEST_SHARDS=str(args.shards),
                                           INGEST_REPLY_WAIT_MS="5000", LOG_LEVEL="INFO")
    prefix = env["REDIS_KEY_PREFIX"]
    settings = Settings.from_env(env)
    r = redis_lib.Redis.from_url(args.redis)
    try:
        migrations.upgrade(db_url)
        db = Database(settings)
        scene = setup_scene(db, r, prefix, args.clients)
        results: dict[str, list[dict]] = {"single": [], "batch": [], "naive": []}
        stack = Stack(env, "web.wsgi:app", log_dir, 2, 16, 2)
        naive = Stack(env, "bench.naive_app:app", log_dir, 2, 16, 1)
        try:
            for i in range(args.repeat):
                results["naive"].append(run_single(lambda ex: f"{naive.url}/naive/executions/{ex}/events",
                                                   scene, args.events, args.clients, db))
                results["single"].append(run_single(lambda ex: f"{stack.url}/api/executions/{ex}/events",
                                                    scene, args.events, args.clients, db))
                results["batch"].append(run_batch(stack.url, scene, args.events * 3, args.clients,
                                                  args.batch_size, db, r, prefix))
                print(f"round {i + 1}/{args.repeat} done", flush=True)
            sizes = stack.batch_sizes()
        finally:
            stack.stop()
            naive.stop()
        print(f"\nbench/ingest.py  events/run={args.events} (batch mode ×3)  clients={args.clients}  "
              f"batch-size={args.batch_size}  shards={args.shards}  repeat={args.repeat}  (medians)")
        print(f"{'mode':<8}{'accepted/s':>12}{'applied/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
        med = {}
        for mode, runs in results.items():
            med[mode] = {k: statistics.median(run[k] for run in runs)
                         for k in ("accepted_per_s", "applied_per_s", "p50_ms", "p99_ms")}
            m = med[mode]
            print(f"{mode:<8}{m['accepted_per_s']:>12.0f}{m['applied_per_s']:>12.0f}{m['p50_ms']:>10.1f}"
                  f"{m['p99_ms']:>10.1f}")
        for mode in ("single", "batch"):
            print(f"{mode} vs naive: applied/s ×{med[mode]['applied_per_s'] / med['naive']['applied_per_s']:.2f}")
        if sizes:
            print(f"worker batch sizes: n={len(sizes)} median={statistics.median(sizes):.0f} max={max(sizes)}")
        print("statuses (last single run):", results["single"][-1]["statuses"],
              " naive:", results["naive"][-1]["statuses"])
    finally:
        clean_up(args.pg, db_url, r, prefix)


if __name__ == "__main__":
    main()
