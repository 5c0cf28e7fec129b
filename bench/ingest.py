"""Event ingestion benchmark: the whole path (HTTP → Redis → Celery → PostgreSQL) against baselines
measured in the same run on the same machine, with load from wrk (a C load generator).

    python bench/ingest.py                  # PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379
    python bench/ingest.py --duration 15 --repeat 3 --curve

It creates a fresh database, starts the stack as `orchestrator up` does (gunicorn gthread 2 × 32,
a Celery worker with 2 processes), gives --agents agents a subtask each, and drives, with
`wrk -t2 -c64`:
  noop     POST to a route that does nothing: the ceiling of HTTP and Flask here
  naive    one event per POST to a handler that authenticates, validates, INSERTs and COMMITs it
  single   one event per POST /api/executions/{id}/events (the guide's endpoint), 201 once applied
  paced    the same at half the rate single reached: p99 from POST to applied at that load
  batch    POST /api/events/batch with --batch-size events each
Applied counts come from the database: events/s applied is what committed, divided by the time from
the first request until the last one committed. Prints medians of --repeat rounds and the ratios;
--curve adds events/s applied in batch mode for shards × worker batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis as redis_lib
import requests
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from bench.wrk import Template, WrkResult, run_wrk  # noqa: E402
from cli.main import celery_argv, gunicorn_argv  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.execution_graph import load_graphs, start_subtask  # noqa: E402
from orchestrator.executions import create_execution  # noqa: E402
from orchestrator.holds import record_hold  # noqa: E402
from orchestrator.metrics import metrics_env  # noqa: E402
from orchestrator.models import Agent, ExecutionEvent, Plan, PlanSubtask, PlanTask, User, utcnow  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def bench_parser(doc: str | None, *, pg: bool = True, redis: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the services a bench connects to: --pg and --redis, unless told not."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if pg:
        ap.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="an existing database, used to CREATE and DROP the bench's own")
    if redis:
        ap.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    return ap


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The web tier and a Celery worker, run the way `orchestrator up` runs them."""

    def __init__(self, env: dict[str, str], app: str, log_dir: Path, web_workers: int, threads: int,
                 concurrency: int) -> None:
        """`concurrency` 0 starts no worker (the baselines need none, and one would take CPU)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.procs: list[subprocess.Popen] = []
        log = open(log_dir / f"web-{self.port}.log", "wb")  # noqa: SIM115
        self.procs.append(subprocess.Popen(
            gunicorn_argv("127.0.0.1", self.port, web_workers, threads, app),
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
        self.worker_log = log_dir / f"worker-{self.port}.log"
        self.worker_log.write_bytes(b"")
        if concurrency:
            wlog = open(self.worker_log, "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                celery_argv("worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "--without-gossip",
                            "--without-mingle", "--hostname", f"bench-{self.port}@%h"),
                env=env, stdout=wlog, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200 and \
                        (not concurrency or b" ready." in self.worker_log.read_bytes()):
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
           "ORCHESTRATOR_DATA_DIR": str(log_dir), "PYTHONPATH": str(ROOT),
           # A few agents stand for many here: counted as usual, but never over their limit.
           "AGENT_RATE_LIMIT": "10000000/minute", **extra}
    # As `orchestrator up` does: every process counts its metrics into one folder (and pays for it).
    return db_url, metrics_env(env, log_dir), log_dir


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
            # wrk sends one fixed Authorization header and cannot compute an HMAC per request: the
            # bench's agents do not sign (`optional`, README: Signed agent requests).
            agent = Agent(id=f"agent_bench_{i}_{secrets.token_hex(2)}", name=f"bench {i}",
                          capabilities=[{"action": "send_email", "params": []}], signing="optional")
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


Scene = list[tuple[str, str, str, str]]
SAMPLE_RATE = 200  # py-spy samples a second


def _json_template(body: dict) -> str:
    """`body` as JSON with each "{n}" left for wrk to fill in per request."""
    return json.dumps(body, separators=(",", ":"))


def single_templates(scene: Scene, prefix: str = "/api") -> list[Template]:
    out = []
    for agent_id, key, ex_id, sub_id in scene:
        for n in (0, 1):  # a heartbeat and a progress report about the held subtask, in turn
            body = {**event_body(agent_id, sub_id, n), "message": "report {n}"}
            out.append(Template("POST", f"{prefix}/executions/{ex_id}/events",
                                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                                _json_template(body)))
    return out


def batch_templates(scene: Scene, batch_size: int) -> list[Template]:
    out = []
    for agent_id, key, ex_id, sub_id in scene:
        events = [{**event_body(agent_id, sub_id, i), "execution_id": ex_id, "message": f"report {{n}}.{i}"}
                  for i in range(batch_size)]
        out.append(Template("POST", "/api/events/batch",
                            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                            _json_template({"events": events})))
    return out


def _wait_applied(db: Database, scene: Scene, before: int, expected: int, t0: float) -> tuple[int, float]:
    """Wait until `expected` more agent events committed and the count stopped moving (or 120 s passed):
    (applied, seconds from t0 to the last one seen).

    Requests wrk gave up on (its timeout) may still have been accepted: their events belong to this
    run, and left to drain later they would be counted as the next run's."""
    ids = [s[2] for s in scene]
    last, last_change = -1, time.perf_counter()
    while True:
        applied = count_events(db, ids) - before
        now = time.perf_counter()
        if applied != last:
            last, last_change = applied, now
        if (applied >= expected and now - last_change >= 0.5) or now - t0 > 120:
            return applied, last_change - t0
        time.sleep(0.02)


def measure(base_url: str, templates: list[Template], db: Database | None, scene: Scene, *, events_per_request: int,
            duration: int, connections: int, pace_ms: int = 0, meter: CpuMeter | None = None) -> dict:
    """One wrk run; with `db`, events/s applied is counted in the database after the run; with
    `meter`, the CPU each part of the stack spent per event (until the last one was applied)."""
    before = count_events(db, [s[2] for s in scene]) if db else 0
    cpu_before = meter.snapshot() if meter else {}
    t0 = time.perf_counter()
    res: WrkResult = run_wrk(base_url, templates, duration_s=duration, connections=connections, pace_ms=pace_ms)
    accepted = res.count(200, 201, 202, 204) * events_per_request
    row = {"requests_per_s": res.per_s, "accepted_per_s": accepted / res.seconds, "p50_ms": res.p50_ms,
           "p99_ms": res.p99_ms, "statuses": res.statuses, "socket_errors": res.socket_errors}
    if db is not None:
        applied, elapsed = _wait_applied(db, scene, before, accepted, t0)
        row.update(applied_per_s=applied / elapsed, lost=max(accepted - applied, 0))
    else:
        applied = accepted
        row.update(applied_per_s=accepted / res.seconds, lost=0)
    if meter:
        row["cpu_ms"] = CpuMeter.per_event_ms(cpu_before, meter.snapshot(), applied)
    return row


def _print_table(results: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    print(f"{'mode':<8}{'requests/s':>12}{'accepted ev/s':>15}{'applied ev/s':>14}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'lost':>6}")
    med: dict[str, dict[str, float]] = {}
    for mode, runs in results.items():
        if not runs:
            continue
        med[mode] = {k: statistics.median(run[k] for run in runs)
                     for k in ("requests_per_s", "accepted_per_s", "applied_per_s", "p50_ms", "p99_ms", "lost")}
        m = med[mode]
        print(f"{mode:<8}{m['requests_per_s']:>12.0f}{m['accepted_per_s']:>15.0f}{m['applied_per_s']:>14.0f}"
              f"{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}{m['lost']:>6.0f}")
    return med


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """CPU seconds spent by each part of the stack (processes and their children), to divide by the
    events of a run: the per-process costs that docs/performance.md plans capacity from."""

    def __init__(self, stack: Stack) -> None:
        self.roots = {"web": stack.procs[0].pid, "worker": stack.procs[1].pid if len(stack.procs) > 1 else None}

    def _groups(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {"web": [], "worker": [], "postgres": [], "redis": []}
        for name, pid in self.roots.items():
            if pid is not None and psutil.pid_exists(pid):
                root = psutil.Process(pid)
                groups[name] = [root, *root.children(recursive=True)]
        for proc in psutil.process_iter(["name"]):
            if proc.info["name"] in ("postgres", "postmaster"):
                groups["postgres"].append(proc)
            elif proc.info["name"] == "redis-server":
                groups["redis"].append(proc)
        return groups

    def snapshot(self) -> dict[str, float]:
        return {name: _cpu_seconds(procs) for name, procs in self._groups().items()}

    @staticmethod
    def per_event_ms(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
        return {name: 1000 * (after[name] - before[name]) / max(events, 1) for name in before}


def warm_up(stack: Stack, db: Database, scene: Scene, connections: int) -> None:
    """A few seconds of load first: token caches, connection pools and lazy imports fill up outside
    what is measured."""
    prefix = "/naive" if "naive" in stack.app else "/api"
    measure(stack.url, single_templates(scene, prefix), db, scene, events_per_request=1, duration=3,
            connections=connections)


MODES = ("noop", "naive", "single", "paced", "batch")


def _print_cpu(results: dict[str, list[dict]]) -> None:
    print(f"\nCPU ms per event applied (request for noop), medians:\n{'mode':<8}"
          + "".join(f"{part:>10}" for part in ("web", "worker", "postgres", "redis", "total")))
    for mode, runs in results.items():
        if not runs or "cpu_ms" not in runs[0]:
            continue
        parts = {part: statistics.median(run["cpu_ms"][part] for run in runs)
                 for part in ("web", "worker", "postgres", "redis")}
        print(f"{mode:<8}" + "".join(f"{v:>10.3f}" for v in parts.values()) + f"{sum(parts.values()):>10.3f}")


def run_rounds(args: argparse.Namespace, stack: Stack, naive: Stack, db: Database, scene: Scene) -> dict:
    results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    c, d = args.connections, args.duration
    warm_up(stack, db, scene, c)
    warm_up(naive, db, scene, c)
    meters = {"stack": CpuMeter(stack), "naive": CpuMeter(naive)}
    for i in range(args.repeat):
        last_single: dict | None = None
        for mode in args.modes:
            if mode == "noop":
                row = measure(naive.url, [Template("POST", "/naive/noop", {}, "{}")], None, scene,
                              events_per_request=1, duration=d, connections=c, meter=meters["naive"])
            elif mode == "naive":
                row = measure(naive.url, single_templates(scene, "/naive"), db, scene, events_per_request=1,
                              duration=d, connections=c, meter=meters["naive"])
            elif mode == "single":
                row = last_single = measure(stack.url, single_templates(scene), db, scene, events_per_request=1,
                                            duration=d, connections=c, meter=meters["stack"])
            elif mode == "paced":  # half the rate single reached in this round
                half = max((last_single or {"applied_per_s": 200})["applied_per_s"] / 2, 1.0)
                row = measure(stack.url, single_templates(scene), db, scene, events_per_request=1, duration=d,
                              connections=c, pace_ms=int(c * 1000 / half), meter=meters["stack"])
            else:
                row = measure(stack.url, batch_templates(scene, args.batch_size), db, scene,
                              events_per_request=args.batch_size, duration=d, connections=c, meter=meters["stack"])
            results[mode].append(row)
        print(f"round {i + 1}/{args.repeat}: " + "  ".join(
            f"{mode} {runs[-1]['applied_per_s']:.0f}/s" for mode, runs in results.items()), flush=True)
    return results


def run_curve(args: argparse.Namespace, env: dict[str, str], log_dir: Path, db: Database, scene: Scene) -> None:
    """Events/s applied in batch mode, for each number of shards × worker batch size."""
    shards_list, sizes = [1, 4, 8, 16], [50, 200, 500, 1000]
    table: dict[tuple[int, int], float] = {}
    for shards in shards_list:
        for size in sizes:
            stack = Stack({**env, "INGEST_SHARDS": str(shards), "INGEST_BATCH_SIZE": str(size)}, "web.wsgi:app",
                          log_dir, 2, 32, 2)
            try:
                runs = [measure(stack.url, batch_templates(scene, args.batch_size), db, scene,
                                events_per_request=args.batch_size, duration=max(5, args.duration // 2),
                                connections=args.connections)["applied_per_s"] for _ in range(args.curve_repeat)]
            finally:
                stack.stop()
            table[(shards, size)] = statistics.median(runs)
            print(f"curve: shards={shards} batch={size}: {table[(shards, size)]:.0f} ev/s", flush=True)
    print("\nbatch mode, events/s applied (median), shards (rows) × INGEST_BATCH_SIZE (columns)")
    print(f"{'shards':<8}" + "".join(f"{size:>10}" for size in sizes))
    for shards in shards_list:
        print(f"{shards:<8}" + "".join(f"{table[(shards, size)]:>10.0f}" for size in sizes))


def profile_single(args: argparse.Namespace, stack: Stack, db: Database, scene: Scene) -> None:
    """Sample the web tier and the worker (each with its children) with py-spy under single-mode load."""
    args.profile.mkdir(parents=True, exist_ok=True)
    warm_up(stack, db, scene, args.connections)
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spies = [subprocess.Popen([spy_bin, "record", "--subprocesses", "--nonblocking", "--gil", "--format", "raw",
                               "--rate", str(SAMPLE_RATE), "--duration", str(args.duration), "--pid", str(proc.pid),
                               "-o", str(args.profile / f"{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, proc in zip(("web", "worker"), stack.procs, strict=True)]
    mode = batch_templates(scene, args.batch_size) if args.profile_mode == "batch" else single_templates(scene)
    row = measure(stack.url, mode, db, scene, events_per_request=args.batch_size if args.profile_mode == "batch"
                  else 1, duration=args.duration, connections=args.connections)
    for spy in spies:
        spy.wait()
    print(f"{args.profile_mode} under py-spy: {row['applied_per_s']:.0f} ev/s applied, p50 {row['p50_ms']:.1f} ms")
    for name in ("web", "worker"):
        print(f"\n== {name}: share of samples (inclusive) by function")
        summarize_profile(args.profile / f"{name}.txt")


def summarize_profile(path: Path, top: int = 25) -> None:
    """From py-spy's collapsed stacks (threads holding the GIL only, so CPU spent in Python and the C
    it calls): the share of samples per function of ours, inclusive of what it calls, and the share
    of every function on its own."""
    ours = ("(orchestrator/", "(web/", "(workers/")
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # a process line that the command line's spaces split
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        for frame in {f.split(" (")[0] for f in frames if any(o in f for o in ours)}:
            inclusive[frame] = inclusive.get(frame, 0) + n
        if frames:
            last = frames[-1].split(" (")[0]
            own[last] = own.get(last, 0) + n
    print(f"{total} samples ({total / SAMPLE_RATE:.1f} s of CPU);  our functions, inclusive    every function, own")
    by_inclusive = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    by_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    for (f1, n1), (f2, n2) in zip(by_inclusive + [("", 0)] * top, by_own, strict=False):
        print(f"{100 * n1 / max(total, 1):5.1f}%  {f1[:42]:<42}  {100 * n2 / max(total, 1):5.1f}%  {f2[:50]}")


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--agents", type=int, default=64)
    ap.add_argument("--duration", type=int, default=15, help="seconds of each wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=100, help="events in each batch request")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", type=lambda v: [m for m in v.split(",") if m], default=list(MODES),
                    help=f"comma-separated, in this order: {','.join(MODES)}")
    ap.add_argument("--curve", action="store_true", help="also batch mode for shards × worker batch size")
    ap.add_argument("--curve-repeat", type=int, default=1)
    ap.add_argument("--profile-mode", choices=("single", "batch"), default="single")
    ap.add_argument("--profile", type=Path, help="py-spy the web tier and the worker during one single-mode "
                    "run and write collapsed stacks (and a summary) to this folder instead of the rounds")
    args = ap.parse_args()

    db_url, env, log_dir = fresh_stack_env(args.pg, args.redis, "orch_bench", LOG_LEVEL="INFO")
    prefix = env["REDIS_KEY_PREFIX"]
    r = redis_lib.Redis.from_url(args.redis)
    try:
        migrations.upgrade(db_url)
        db = Database(Settings.from_env(env))
        scene = setup_scene(db, r, prefix, args.agents)
        stack = Stack(env, "web.wsgi:app", log_dir, 2, 32, 2)
        naive = Stack(env, "bench.naive_app:app", log_dir, 2, 32, 0)
        try:
            if args.profile:
                profile_single(args, stack, db, scene)
                return
            results = run_rounds(args, stack, naive, db, scene)
            sizes = stack.batch_sizes()
        finally:
            stack.stop()
            naive.stop()
        print(f"\nbench/ingest.py  wrk -t2 -c{args.connections} -d{args.duration}s  agents={args.agents}  "
              f"batch-size={args.batch_size}  repeat={args.repeat}  (medians; applied = committed, "
              f"counted in the database)")
        med = _print_table(results)
        _print_cpu(results)
        ratios = [f"{mode} vs naive: applied/s ×{med[mode]['applied_per_s'] / med['naive']['applied_per_s']:.2f}"
                  for mode in ("single", "batch") if mode in med and "naive" in med]
        if "noop" in med and "single" in med:
            noop_ratio = med["noop"]["requests_per_s"] / med["single"]["requests_per_s"]
            ratios.append(f"noop requests/s vs single: ×{noop_ratio:.2f}")
        print("   ".join(ratios))
        if sizes:
            print(f"worker batch sizes: n={len(sizes)} median={statistics.median(sizes):.0f} max={max(sizes)}")
        for mode, runs in results.items():
            print(f"statuses, last {mode} run:", {k: v for k, v in runs[-1]["statuses"].items() if v})
        if args.curve:
            run_curve(args, env, log_dir, db, scene)
    finally:
        clean_up(args.pg, db_url, r, prefix)


if __name__ == "__main__":
    main()
