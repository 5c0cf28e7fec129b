"""Fault harness: kill parts of a running stack under agent load and count what it cost.

    python bench/faults.py                          # all four faults, PostgreSQL at 127.0.0.1:5432
    python bench/faults.py --faults worker,redis --executions 8 --subtasks 20 --agents 8

It creates a fresh PostgreSQL database, starts a Redis of its own (redis-server on a free port,
append-only file with fsync every second, in a temporary folder), gunicorn (2 workers), a Celery
worker (2 processes) and beat (`SWEEP_INTERVAL_SECONDS`, 2 by default). Each round gets its own
owner, agents and executions (--executions × --subtasks independent subtasks, --agents agents
running `AgentClient.run`: poll, started, complete). Once --fault-at of the round's subtasks are
done, it injects one fault:
  worker    SIGKILL the Celery worker's whole process group, start a new one at once
  web       SIGKILL one gunicorn worker process (the master starts another)
  redis     SIGKILL Redis, start it again from its append-only file after --redis-down seconds
  postgres  pg_terminate_backend every connection to the bench database (that database only)
Meanwhile a stack process that exits is started again, as a supervisor would (noted in the
table; --no-supervise leaves it down until the round ends). The round ends when its executions are
all COMPLETED, or nothing completed for --stall seconds, or --deadline seconds after the fault; the
agents stop, the event streams are left to drain, and it counts, for the round:
  accepted   event POSTs answered 2xx (distinct event ids)
  lost       accepted event ids neither in the database nor still queued in Redis at the end
  twice      subtasks with more than one applied task_complete, plus task counters above the
             subtasks actually COMPLETE (an effect applied twice)
  stranded   subtasks still RUNNING once every agent has stopped ("claim lost": the poll's answer never
             reached the agent; "given up": the agent's reports failed), and executions not finished
  recovery   seconds from the fault until the round's completed-subtask count rises again
One table at the end, with the parameters. Everything it started (processes, database, Redis and
its folder) is removed on exit, Ctrl-C included; the processes' logs are kept (the path is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib
import requests
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator_sdk.client import AgentClient, Work  # noqa: E402

import migrations  # noqa: E402
from bench.ingest import bench_parser, free_port, fresh_stack_env  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.encryption import use_keyring  # noqa: E402
from orchestrator.events.dead_letters import DeadLetters  # noqa: E402
from orchestrator.events.protocol import GROUP, Envelope, Keys, MalformedEntry  # noqa: E402
from orchestrator.executions import create_execution  # noqa: E402
from orchestrator.models import Agent, Plan, PlanSubtask, PlanTask, User, utcnow  # noqa: E402
from orchestrator.models.events import ExecutionEvent  # noqa: E402
from orchestrator.models.executions import Execution, ExecutionSubtask, ExecutionTask  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from orchestrator.signing import new_signing_secret  # noqa: E402

FAULTS = ("worker", "web", "redis", "postgres")


from bench.fault_stack import FaultStack, Processes, children  # noqa: E402


@dataclass
class Scene:
    owner_id: str
    agents: list[tuple[str, str, str]]  # (agent id, API key, signing secret)
    execution_ids: list[str]
    subtasks: int


def make_scene(db: Database, round_no: int, n_agents: int, n_executions: int, n_subtasks: int) -> Scene:
    """Agents owned by the round's user work only on that user's executions: rounds never mix."""
    tag = f"r{round_no}_{secrets.token_hex(2)}"
    now = utcnow()
    with db.unit_of_work() as s:
        user = User(id=f"user_faults_{tag}", username=f"faults_{tag}")
        s.add(user)
        s.flush()
        agents = []
        for i in range(n_agents):
            agent = Agent(id=f"agent_faults_{tag}_{i}", name=f"faults {i}", owner_id=user.id,
                          capabilities=[{"action": "send_email", "params": []}], signing_secret=new_signing_secret())
            s.add(agent)
            s.flush()
            _, key = issue_credential(s, agent_id=agent.id)
            agents.append((agent.id, key, agent.signing_secret))
        execution_ids = []
        for e in range(n_executions):
            plan = Plan(id=f"plan_faults_{tag}_{e}", goal="fault harness", owner_id=user.id)
            task = PlanTask(id="task_1", title="Outreach", description="")
            for j in range(n_subtasks):
                task.subtasks.append(PlanSubtask(plan_id=plan.id, id=f"task_1_{j}", title=f"step {j}",
                                                 action="send_email", position=j,
                                                 retry_policy={"max_attempts": 3}))
            plan.tasks.append(task)
            s.add(plan)
            s.flush()
            ex = create_execution(s, user.id, plan.id, now)
            ex.status = "QUEUED"
            execution_ids.append(ex.id)
    return Scene(user.id, agents, execution_ids, n_executions * n_subtasks)


# -- agents -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the agents saw: 2xx event ids, answers by status, subtasks handed to them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: set[str] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    handed_out: set[tuple[str, str]] = field(default_factory=set)
    crashes: int = 0


class RecordingSession(requests.Session):
    """A requests session that notes every event POST's answer and every subtask a poll hands out."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        is_event = method == "POST" and url.endswith("/events")
        is_poll = method == "GET" and url.endswith("/work")
        try:
            resp = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            if is_event or is_poll:
                with self.tally.lock:
                    self.tally.statuses[f"{'event' if is_event else 'poll'} {type(exc).__name__}"] += 1
            raise
        if is_event:
            self._event(resp)
        elif is_poll and resp.status_code == 200:
            body = resp.json()
            if body.get("execution_id") and body.get("next_task"):
                with self.tally.lock:
                    self.tally.handed_out.add((body["execution_id"], body["next_task"]["task_id"]))
        elif is_poll and resp.status_code >= 500:
            with self.tally.lock:
                self.tally.statuses[f"poll {resp.status_code}"] += 1
        return resp

    def _event(self, resp: requests.Response) -> None:
        event_id = None
        if 200 <= resp.status_code < 300:
            with contextlib.suppress(ValueError):
                event_id = resp.json().get("event_id")
        with self.tally.lock:
            self.tally.statuses[f"event {resp.status_code}"] += 1
            if event_id:
                self.tally.accepted.add(event_id)


def run_agents(url: str, scene: Scene, tally: Tally, stop: threading.Event, work_ms: int) -> list[threading.Thread]:
    def handler(work: Work) -> dict[str, Any]:
        time.sleep(work_ms / 1000)
        return {"done": work.task_id}

    def loop(agent_id: str, key: str, secret: str) -> None:
        client = AgentClient(url, agent_id, key, signing_secret=secret, session=RecordingSession(tally), timeout=10)
        while not stop.is_set():
            try:
                client.run(handler, stop=stop, idle_sleep=0.2)
            except Exception:  # noqa: BLE001 - an agent that crashes is counted and started again
                with tally.lock:
                    tally.crashes += 1
                stop.wait(0.5)

    threads = [threading.Thread(target=loop, args=agent, daemon=True, name=f"agent-{agent[0]}")
               for agent in scene.agents]
    for t in threads:
        t.start()
    return threads


# -- measuring ------------------------------------------------------------------------------------


class Progress:
    """Samples the round's completed-subtask count; survives the database dropping its connection."""

    def __init__(self, engine: Engine, execution_ids: list[str]) -> None:
        self.engine = engine
        self.execution_ids = execution_ids
        self.samples: list[tuple[float, int]] = []
        self.finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        with self.engine.connect() as c:
            done = c.scalar(select(func.count()).select_from(ExecutionSubtask).where(
                ExecutionSubtask.execution_id.in_(self.execution_ids), ExecutionSubtask.status == "COMPLETE"))
            finished = c.scalar(select(func.count()).select_from(Execution).where(
                Execution.id.in_(self.execution_ids), Execution.status == "COMPLETED"))
        return done or 0, finished or 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                done, self.finished = self._sample()
                self.samples.append((time.monotonic(), done))
            except Exception:  # noqa: BLE001, S110 - the postgres round cuts this connection too
                pass
            self._stop.wait(0.2)

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def last_change(self) -> float:
        """When the count last rose (or the first sample)."""
        t_last, n_last = self.samples[0] if self.samples else (time.monotonic(), 0)
        for t, n in self.samples:
            if n > n_last:
                t_last, n_last = t, n
        return t_last

    def recovery(self, t_fault: float, t_restored: float, baseline: int) -> float | None:
        """Seconds from the fault to the first rise of the count above `baseline` (taken once the
        fault's own restart, if any, was done), or None if it never rose."""
        for t, n in self.samples:
            if t > t_restored and n > baseline:
                return t - t_fault
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_drained(r: redis_lib.Redis, prefix: str, shards: int, timeout: float) -> bool:
    """Every shard's stream empty and nothing read-but-unacknowledged: all accepted events applied."""
    keys = Keys(prefix)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            left = 0
            for shard in range(shards):
                stream = keys.stream(shard)
                left += r.xlen(stream)
                with contextlib.suppress(redis_lib.ResponseError):
                    left += r.xpending(stream, GROUP)["pending"]
            if left == 0:
                return True
        except redis_lib.RedisError:
            pass
        time.sleep(0.5)
    return False


def queued_event_ids(r: redis_lib.Redis, prefix: str, shards: int) -> set[str]:
    """Ids of the events still waiting in the shards' streams: accepted, not applied, not lost."""
    keys = Keys(prefix)
    found = set()
    for shard in range(shards):
        for _, fields in r.xrange(keys.stream(shard)):
            with contextlib.suppress(MalformedEntry):
                found.add(Envelope.decode(fields).id)
    return found


@dataclass
class RoundResult:
    fault: str
    recovery: float | None = None  # seconds from the fault until every execution finished
    notes: list[str] = field(default_factory=list)
    accepted: int = 0
    lost: int = 0
    twice: int = 0
    stranded_subtasks: int = 0
    stranded_executions: int = 0


def count_damage(engine: Engine, r: redis_lib.Redis, prefix: str, shards: int, scene: Scene, tally: Tally,
                 result: RoundResult) -> None:
    ids = scene.execution_ids
    with engine.connect() as c:
        stored = set(c.scalars(select(ExecutionEvent.id).where(ExecutionEvent.execution_id.in_(ids))))
        completes = c.execute(select(ExecutionEvent.execution_id, ExecutionEvent.task_id, ExecutionEvent.outcome)
                              .where(ExecutionEvent.execution_id.in_(ids),
                                     ExecutionEvent.event_type == "task_complete")).all()
        running = c.execute(select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id)
                            .where(ExecutionSubtask.execution_id.in_(ids),
                                   ExecutionSubtask.status == "RUNNING")).all()
        unfinished = c.scalar(select(func.count()).select_from(Execution).where(
            Execution.id.in_(ids), Execution.status != "COMPLETED")) or 0
        complete_rows = dict(c.execute(
            select(ExecutionSubtask.execution_task_id, func.count()).where(
                ExecutionSubtask.execution_id.in_(ids), ExecutionSubtask.status == "COMPLETE")
            .group_by(ExecutionSubtask.execution_task_id)).all())
        counters = c.execute(select(ExecutionTask.id, ExecutionTask.subtasks_completed)
                             .where(ExecutionTask.execution_id.in_(ids))).all()
    applied = Counter((ex, task) for ex, task, outcome in completes if (outcome or {}).get("applied", True))
    drift = sum(max(0, n - complete_rows.get(task_id, 0)) for task_id, n in counters)
    missing = tally.accepted - stored
    queued = missing & queued_event_ids(r, prefix, shards) if missing else set()
    result.accepted = len(tally.accepted)
    result.lost = len(missing - queued)
    if queued:
        result.notes.append(f"{len(queued)} accepted still queued in Redis")
    if dead_letters := DeadLetters(r, prefix).count():
        result.notes.append(f"dead letters {dead_letters}")
    result.twice = sum(1 for n in applied.values() if n > 1) + drift
    result.stranded_subtasks = len(running)
    result.stranded_executions = unfinished
    if running:
        lost_claims = sum(1 for row in running if (row[0], row[1]) not in tally.handed_out)
        result.notes.append(f"RUNNING: {lost_claims} claim lost, {len(running) - lost_claims} given up")
    if drift:
        result.notes.append(f"task counters {drift} above COMPLETE rows")


# -- faults ---------------------------------------------------------------------------------------


def supervise(stack: FaultStack, result: RoundResult, t_fault: float) -> None:
    """Start again what exited, as a process supervisor (systemd, a restart policy) would."""
    for name in stack.dead():
        result.notes.append(f"{name} exited, restarted at +{time.monotonic() - t_fault:.0f}s")
        getattr(stack, f"start_{name}")()


def inject(fault: str, stack: FaultStack, pg_admin: Engine, dbname: str, redis_down: float) -> str:
    """Do the damage; return what was done. Restarts that belong to the fault happen here too."""
    if fault == "worker":
        assert stack.worker is not None
        Processes.kill(stack.worker)
        stack.start_worker()
        return "worker group SIGKILLed, new worker started"
    if fault == "web":
        assert stack.web is not None
        victim = children(stack.web.pid)[0]
        os.kill(victim, signal.SIGKILL)
        return f"gunicorn worker {victim} SIGKILLed"
    if fault == "redis":
        assert stack.redis is not None
        Processes.kill(stack.redis)
        time.sleep(redis_down)
        stack.start_redis()
        return f"redis SIGKILLed, restarted from AOF after {redis_down:.0f}s"
    if fault == "postgres":
        with pg_admin.connect() as c:
            n = len(c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                   "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": dbname}).all())
        return f"{n} backends of {dbname} terminated"
    raise ValueError(fault)


def run_round(round_no: int, fault: str, args: argparse.Namespace, stack: FaultStack, db: Database,
              engine: Engine, pg_admin: Engine, dbname: str, prefix: str) -> RoundResult:
    result = RoundResult(fault)
    scene = make_scene(db, round_no, args.agents, args.executions, args.subtasks)
    tally = Tally()
    stop = threading.Event()
    progress = Progress(engine, scene.execution_ids)
    threads = run_agents(stack.url, scene, tally, stop, args.work_ms)
    try:
        target = int(scene.subtasks * args.fault_at)
        deadline = time.monotonic() + 120
        while progress.done < target and time.monotonic() < deadline:
            time.sleep(0.1)
        t_fault = time.monotonic()
        at_fault = progress.done
        did = inject(fault, stack, pg_admin, dbname, args.redis_down)
        # Taken after the restart: a batch already inside its transaction may still commit during an outage.
        t_restored, baseline = time.monotonic(), progress.done
        print(f"round {round_no} ({fault}): at {at_fault}/{scene.subtasks} done, {did}", flush=True)
        end = t_fault + args.deadline
        while time.monotonic() < end and progress.finished < len(scene.execution_ids):
            if args.supervise:
                supervise(stack, result, t_fault)
            if time.monotonic() - max(progress.last_change(), t_restored) > args.stall:
                break
            time.sleep(0.2)
        result.recovery = progress.recovery(t_fault, t_restored, baseline)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        progress.stop()
    r = redis_lib.Redis.from_url(stack.redis_url)
    if not wait_drained(r, prefix, args.shards, 30):
        result.notes.append("streams not drained after 30s")
    time.sleep(args.sweep * 2)  # one more sweep: what beat would still rescue counts as rescued
    count_damage(engine, r, prefix, args.shards, scene, tally, result)
    if dead := stack.dead():
        result.notes.append(f"down at the end: {','.join(dead)} (restarted for the next round)")
        stack.restart_dead()
    try:
        ready = requests.get(stack.url + "/readyz", timeout=5).json()
        result.notes.append(f"readyz {ready.get('status')}/beat {ready['checks'].get('beat', {}).get('status')}")
    except (requests.RequestException, KeyError) as exc:
        result.notes.append(f"readyz: {type(exc).__name__}")
    failures = {k: v for k, v in tally.statuses.items() if not k.startswith("event 2")}
    if failures:
        result.notes.append("answers: " + ", ".join(f"{k}×{v}" for k, v in sorted(failures.items())))
    if tally.crashes:
        result.notes.append(f"agent loop crashes {tally.crashes}")
    r.close()
    return result


# -- main -----------------------------------------------------------------------------------------


def table_row(res: RoundResult) -> str:
    rec = f"{res.recovery:.1f}" if res.recovery is not None else "never"
    stranded = f"{res.stranded_subtasks}/{res.stranded_executions}"
    return (f"{res.fault:<10}{res.accepted:>9}{res.lost:>6}{res.twice:>7}{stranded:>17}{rec:>12}  "
            f"{'; '.join(res.notes)}")


def print_table(args: argparse.Namespace, results: list[RoundResult]) -> None:
    print(f"\nbench/faults.py  executions={args.executions} subtasks={args.subtasks} agents={args.agents} "
          f"work-ms={args.work_ms} fault-at={args.fault_at} sweep={args.sweep}s redis-down={args.redis_down:.0f}s "
          f"stall={args.stall:.0f}s deadline={args.deadline:.0f}s shards={args.shards} "
          f"supervise={'yes' if args.supervise else 'no'}  (one run per fault)")
    head = f"{'fault':<10}{'accepted':>9}{'lost':>6}{'twice':>7}{'stranded sub/ex':>17}{'recovery s':>12}  notes"
    print(head)
    print("-" * len(head))
    for res in results:
        print(table_row(res))


def parse_args() -> argparse.Namespace:
    ap = bench_parser(__doc__, redis=False)  # it starts and kills its own Redis
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order, from {FAULTS}")
    ap.add_argument("--executions", type=int, default=16)
    ap.add_argument("--subtasks", type=int, default=40, help="per execution, independent of each other")
    ap.add_argument("--agents", type=int, default=16)
    ap.add_argument("--work-ms", type=int, default=100, help="how long an agent works on one subtask")
    ap.add_argument("--fault-at", type=float, default=0.3, help="fraction of the round's subtasks done first")
    ap.add_argument("--sweep", type=int, default=2, help="SWEEP_INTERVAL_SECONDS")
    ap.add_argument("--redis-down", type=float, default=10.0)
    ap.add_argument("--stall", type=float, default=20.0, help="end a round after this long without progress")
    ap.add_argument("--deadline", type=float, default=120.0, help="end a round this long after its fault")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--no-supervise", dest="supervise", action="store_false",
                    help="leave a process that exits during a round down until the round ends")
    args = ap.parse_args()
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}")
    return args


def _raise_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)  # the agents' retry warnings are counted, not printed
    # Clean up on `kill` as on Ctrl-C, and on Ctrl-C even where a shell started us with SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    redis_dir = Path(tempfile.mkdtemp(prefix="orch-faults-redis-"))
    redis_port = free_port()
    db_url, env, log_dir = fresh_stack_env(
        args.pg, f"redis://127.0.0.1:{redis_port}/0", "orch_faults", SWEEP_INTERVAL_SECONDS=str(args.sweep),
        INGEST_SHARDS=str(args.shards), LOG_LEVEL="INFO")
    dbname = db_url.rsplit("/", 1)[1]
    pg_admin = create_engine(args.pg.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    procs = Processes(env, log_dir)
    stack = FaultStack(procs, redis_dir, redis_port, web_workers=2, threads=16, concurrency=2)
    db: Database | None = None
    engine: Engine | None = None
    results: list[RoundResult] = []
    try:
        migrations.upgrade(db_url)
        settings = Settings.from_env(env)
        db = Database(settings)
        # Its own engine (pre-ping: the postgres fault kills every connection), reading the encrypted
        # columns with the stack's keys.
        engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"), pool_pre_ping=True)
        use_keyring(engine, db.keyring)
        stack.start()
        print(f"stack up: web {stack.url}, redis {stack.redis_url}, database {dbname}; logs in {log_dir}",
              flush=True)
        for n, fault in enumerate(args.faults.split(","), start=1):
            results.append(run_round(n, fault, args, stack, db, engine, pg_admin, dbname, env["REDIS_KEY_PREFIX"]))
            print(f"round {n} done: {table_row(results[-1])}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        procs.stop_all()
        for eng in (engine, db):
            if eng is not None:
                eng.dispose()
        with pg_admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        pg_admin.dispose()
        shutil.rmtree(redis_dir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if results:
        print_table(args, results)


if __name__ == "__main__":
    main()
