"""Poll benchmark: agents' `GET /api/agents/{id}/work` under `wrk`, against a do-nothing route measured
in the same run on the same processes, with every claim checked afterwards.

    python bench/poll.py                      # PostgreSQL at 127.0.0.1:5432, Redis at 127.0.0.1:6379
    python bench/poll.py --agents 200 --repeat 3 --duration 15

It creates a fresh database, starts the stack as `orchestrator up` does (gunicorn gthread, 2 workers
× 32 threads, and a Celery worker) serving `bench.naive_app:app` (the real app plus `/naive/noop`),
creates --agents agents with their keys, and then, each round, drives with `wrk -t2 -c64`:

  noop      POST /naive/noop, a route that does nothing: the ceiling of HTTP plus Flask here
  poll      the agents poll in turn, as fast as they are answered (a Lua script rotates over them,
            each request with its own agent's key). Before the run, --ready-executions executions
            of --subtasks parallel subtasks are queued (the operator's path: create, PATCH QUEUED),
            so the first polls claim them
  arrivals  the same while new executions are queued at --arrivals a second
  paced     the same as arrivals at an offered --rate polls a second (each of --paced-connections
            connections waits before each request), with --rate × --interval agents of their own,
            so each polls every --interval seconds: the issue's target is 10,000 agents polling
            every 10 s. wrk waits after each answer, so the rate falls short of --rate by the
            answers' latency: the table shows what was served

While polls run, a thread stands in for the worker applying the agents' reports: each claim is
acknowledged (`task_started`) within 0.02 s and completed (`task_complete`, with what the worker's
commit leaves to do after it) --work-seconds later, so agents are free again. Agents keep polling
while they hold work, which real agents (one loop each) do not: a harder load than real.

Each claim answered (execution, subtask, attempt, from the 200 bodies) is then checked against the
database: a claim answered twice is a double claim; claims in the database but never answered are
requests still in flight when wrk stopped. Prints requests/s, p50/p99, claims, double claims, the
database's transactions a second, and the ratio to the do-nothing route; medians over --repeat rounds.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import redis as redis_lib
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text, update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from bench.ingest import SAMPLE_RATE, CpuMeter, Stack, bench_parser, clean_up, fresh_stack_env, summarize_profile  # noqa: E402
from bench.wrk import THREADS_LUA, WrkResult, ensure_wrk  # noqa: E402
from orchestrator.credentials import Principal, issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.effects import AfterCommit, carry_out  # noqa: E402
from orchestrator.execution_graph import complete_subtask, load_graphs  # noqa: E402
from orchestrator.executions import control_execution, create_execution  # noqa: E402
from orchestrator.models import Agent, ExecutionSubtask, Plan, PlanSubtask, PlanTask, User, utcnow  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

ACTION = "send_email"

# Rotates over the agents (thread t starts at a different one), each request with its agent's key;
# counts answers by status and keeps each 200's claim (execution, subtask, attempt, redelivered?).
_LUA = THREADS_LUA + r"""
local agents = %(agents)s
local offset = %(offset)d

function init(args)
  counter = 0
  claims = {}
  n200, n204, nother = 0, 0, 0
end

function request()
  counter = counter + 1
  local a = agents[((counter + offset + tid * 7919) %% #agents) + 1]
  return wrk.format("GET", a[1], {["Authorization"] = a[2]})
end

function response(status, headers, body)
  if status == 200 then
    n200 = n200 + 1
    local ex = string.match(body, '"execution_id":%%s*"([^"]+)"')
    local task = string.match(body, '"task_id":%%s*"([^"]+)"')
    local attempt = string.match(body, '"attempt":%%s*(%%d+)')
    local again = string.find(body, '"redelivered":%%s*true') and "R" or "N"
    if ex and task then table.insert(claims, ex .. "|" .. task .. "|" .. (attempt or "?") .. "|" .. again) end
  elseif status == 204 then
    n204 = n204 + 1
  else
    nother = nother + 1
  end
end

function done(summary, latency, requests)
  local s200, s204, sother = 0, 0, 0
  for _, t in ipairs(threads) do
    s200 = s200 + t:get("n200")
    s204 = s204 + t:get("n204")
    sother = sother + t:get("nother")
    for _, c in ipairs(t:get("claims")) do io.write("POLL_CLAIM " .. c .. "\n") end
  end
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "errors": %%d, "statuses": {"200": %%d, "204": %%d, "other": %%d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    s200, s204, sother))
end
"""

_NOOP_LUA = r"""
function request() return wrk.format("POST", "/naive/noop") end
function done(summary, latency, requests)
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "errors": %d, "statuses": {}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class Load:
    wrk: WrkResult
    claims: list[tuple[str, str, int, bool]] = field(default_factory=list)  # (execution, subtask, attempt, again)
    db_per_s: float = 0.0  # database transactions a second during the run (polls that reached it, and the rest)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per request, by part of the stack
    outcomes: Counter = field(default_factory=Counter)  # polls by answer (the app's own metric)


def poll_outcomes(url: str) -> Counter:
    """The app's count of polls by answer so far (`orchestrator_polls` in /metrics): idle (Redis),
    idle_pool (one query), claimed or empty (a claim transaction); and, under ("s", answer), the
    seconds the app spent answering them (`orchestrator_poll_seconds`), so that time inside the app
    can be told from time queued before it."""
    counts: Counter = Counter()
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if family.name == "orchestrator_polls" and sample.name.endswith("_total"):
                counts[sample.labels["outcome"]] += int(sample.value)
            elif family.name == "orchestrator_poll_seconds" and sample.name.endswith("_sum"):
                counts[("s", sample.labels["outcome"])] += sample.value
    return counts


def run_wrk_script(url: str, script: str, duration_s: float, threads: int, connections: int) -> Load:
    """Run wrk with `script`; its `done()` prints one WRK_RESULT line (and the poll script POLL_CLAIM lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "poll.lua"
        path.write_text(script)
        argv = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout=10s",
                "-s", str(path), url]
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
    lines = out.stdout.splitlines()
    result = next((ln for ln in lines if ln.startswith("WRK_RESULT ")), None)
    if result is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    raw = json.loads(result.removeprefix("WRK_RESULT "))
    wrk = WrkResult(requests=raw["requests"], seconds=raw["duration_us"] / 1e6, p50_ms=raw["p50_us"] / 1000,
                    p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
                    statuses=raw["statuses"], socket_errors=raw["errors"])
    claims = []
    for ln in lines:
        if ln.startswith("POLL_CLAIM "):
            ex, task, attempt, again = ln.removeprefix("POLL_CLAIM ").split("|")
            claims.append((ex, task, int(attempt) if attempt.isdigit() else -1, again == "R"))
    return Load(wrk, claims)


def poll_script(agents: list[tuple[str, str]], pace_ms: int = 0, offset: int | None = None) -> str:
    """The poll load; `pace_ms` makes each connection wait that long before each request (an offered
    rate of about connections × 1000 / pace_ms polls a second). Each wrk thread goes round the agents
    from its own place, moved by `offset` (random by default: a run must not start where the last did)."""
    rows = ",\n".join(f'{{"/api/agents/{a}/work", "Bearer {k}"}}' for a, k in agents)
    return _LUA % {"agents": "{\n" + rows + "\n}", "pace_ms": pace_ms,
                   "offset": secrets.randbelow(len(agents)) if offset is None else offset}


# -- the scene -------------------------------------------------------------------------------------


@dataclass
class Scene:
    owner_id: str
    plan_id: str
    agents: list[tuple[str, str]]  # (agent id, API key)


def setup_agents(db: Database, n_agents: int, subtasks_per_execution: int) -> Scene:
    """An operator, a plan of one task with parallel subtasks, and `n_agents` agents with their keys."""
    tag = secrets.token_hex(3)
    agents = []
    with db.unit_of_work() as s:
        user = User(id=f"user_pollbench_{tag}", username=f"pollbench_{tag}")
        s.add(user)
        s.flush()
        plan = Plan(id=f"plan_pollbench_{tag}", goal="bench", owner_id=user.id)
        task = PlanTask(id="task_1", title="Outreach", description="")
        for j in range(subtasks_per_execution):
            task.subtasks.append(PlanSubtask(plan_id=plan.id, id=f"task_1_{j}", title=f"step {j}", action=ACTION,
                                             params={"to": f"lead{j}@example.com"}, position=j))
        plan.tasks.append(task)
        s.add(plan)
        s.flush()
        for i in range(n_agents):
            # wrk sends one fixed Authorization header and cannot compute an HMAC per request: the
            # bench's agents do not sign (`optional`, README: Signed agent requests).
            agent = Agent(id=f"agent_pollbench_{i}_{tag}", name=f"bench {i}",
                          capabilities=[{"action": ACTION, "params": []}], signing="optional")
            s.add(agent)
            s.flush()
            _, key = issue_credential(s, agent_id=agent.id)
            agents.append((agent.id, key))
    return Scene(user.id, plan.id, agents)


def queue_executions(db: Database, r: redis_lib.Redis, prefix: str, scene: Scene, n: int) -> list[str]:
    """`n` new executions of the scene's plan, queued as an operator's PATCH queues them: their
    subtasks become ready, and whatever the commit leaves to do afterwards is done."""
    owner = Principal("user", scene.owner_id)
    made = []
    for _ in range(n):
        with db.unit_of_work() as s:
            ex = create_execution(s, scene.owner_id, scene.plan_id, utcnow())
            s.flush()
            change = control_execution(s, owner, ex.id, "QUEUED", utcnow())
        carry_out(r, prefix, change.after)
        made.append(ex.id)
    return made


class AgentsAtWork(threading.Thread):
    """Stands in for the worker applying the agents' reports: every claim is acknowledged (its
    `task_started`) within `every` seconds, and completed (`task_complete`: the subtask COMPLETE,
    and whatever the worker's commit leaves to do afterwards) `work_s` seconds later, so that
    agents keep finding work while there is some, and are free again once done."""

    def __init__(self, db: Database, r: redis_lib.Redis, prefix: str, work_s: float, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.db, self.r, self.prefix, self.work_s, self.every = db, r, prefix, work_s, every
        self.stopping = threading.Event()
        self.completed = 0

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            self.step()

    def step(self) -> None:
        now = utcnow()
        after = AfterCommit()
        with self.db.unit_of_work() as s:
            s.execute(update(ExecutionSubtask).where(ExecutionSubtask.status == "RUNNING",
                                                     ExecutionSubtask.acknowledged_at.is_(None))
                      .values(acknowledged_at=now))
            done = s.execute(select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id).where(
                ExecutionSubtask.status == "RUNNING",
                ExecutionSubtask.acknowledged_at <= now - timedelta(seconds=self.work_s))).all()
            graphs = load_graphs(s, {ex for ex, _ in done}, lock=True)
            for ex, sub in done:
                complete_subtask(graphs[ex], graphs[ex].subtasks[sub], {"message": "sent"}, now)
                after.release(ex, sub)
        carry_out(self.r, self.prefix, after)
        self.completed += len(done)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class Arrivals(threading.Thread):
    """Queues `per_second` new executions a second until stopped."""

    def __init__(self, db: Database, r: redis_lib.Redis, prefix: str, scene: Scene, per_second: float) -> None:
        super().__init__(daemon=True)
        self.args = (db, r, prefix, scene)
        self.period = 1 / per_second if per_second > 0 else 0
        self.stopping = threading.Event()
        self.count = 0

    def run(self) -> None:
        next_at = time.monotonic()
        while self.period and not self.stopping.is_set():
            next_at += self.period
            queue_executions(*self.args, 1)
            self.count += 1
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join()


@dataclass
class ClaimCheck:
    answered: int  # distinct claims answered as new work
    double: int  # claims answered as new work more than once
    redelivered: int  # answers marked "redelivered"
    in_database: int  # subtasks of the bench's executions claimed in the database
    unanswered: int  # claimed in the database, never answered (a timed-out request, say)


def check_claims(db: Database, since: datetime, claims: list[tuple[str, str, int, bool]]) -> ClaimCheck:
    """Every claim answered once, and the claims the database made since `since` are the ones answered."""
    fresh = Counter((ex, task, attempt) for ex, task, attempt, again in claims if not again)
    with db.reading() as s:
        rows = {(ex, task, attempt) for ex, task, attempt in s.execute(
            select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id, ExecutionSubtask.attempt)
            .where(ExecutionSubtask.claimed_at >= since))}
    return ClaimCheck(answered=len(fresh), double=sum(1 for n in fresh.values() if n > 1),
                      redelivered=sum(1 for c in claims if c[3]), in_database=len(rows),
                      unanswered=len(rows - set(fresh)))


# -- a round ---------------------------------------------------------------------------------------


def db_transactions(db: Database) -> int:
    """Transactions the bench's database has ended so far (PostgreSQL's statistics; 0 elsewhere)."""
    if db.dialect != "postgresql":
        return 0
    with db.reading() as s:
        return s.execute(text("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                              "WHERE datname = current_database()")).scalar() or 0


def warm_up(stack: Stack, scene: Scene, args: argparse.Namespace, connections: int) -> None:
    """Unmeasured: every agent polls a few times, so that each web process has answered it, as in a
    stack that has been up a while (a process learns an agent's pool from a first answer from the
    database, and caches its principal; orchestrator/ready_work.py). Over as many connections as the
    measured run: wrk keeps a connection on one process, and an agent goes round the connections."""
    sent = 0
    while sent < 8 * len(scene.agents):  # each run goes on round the agents from where the last one stopped
        sent += run_wrk_script(stack.url, poll_script(scene.agents, offset=sent // args.wrk_threads), 2,
                               args.wrk_threads, connections).wrk.requests


def metered(meter: CpuMeter, run: Callable[[], Load]) -> Load:
    before = meter.snapshot()
    load = run()
    load.cpu_ms = CpuMeter.per_event_ms(before, meter.snapshot(), load.wrk.requests)
    return load


def poll_round(stack: Stack, db: Database, r: redis_lib.Redis, prefix: str, scene: Scene, args: argparse.Namespace,
               arrivals: float, pace_ms: int, on_start: Callable[[], None] | None = None) -> tuple[Load, ClaimCheck]:
    """One measured run after an unmeasured warm-up; `on_start` runs as the measured part begins."""
    connections = args.paced_connections if pace_ms else args.connections
    warm_up(stack, scene, args, connections)
    since = utcnow()
    queue_executions(db, r, prefix, scene, args.ready_executions)
    at_work = AgentsAtWork(db, r, prefix, args.work_seconds)
    arriving = Arrivals(db, r, prefix, scene, arrivals)
    xacts = db_transactions(db)
    at_work.start()
    arriving.start()
    if on_start is not None:
        on_start()
    answered = poll_outcomes(stack.url)
    try:
        load = metered(CpuMeter(stack), lambda: run_wrk_script(
            stack.url, poll_script(scene.agents, pace_ms), args.duration, args.wrk_threads, connections))
    finally:
        arriving.stop()
        at_work.stop()
    load.outcomes = poll_outcomes(stack.url) - answered
    time.sleep(1)  # PostgreSQL publishes its counters about once a second
    load.db_per_s = (db_transactions(db) - xacts) / load.wrk.seconds
    return load, check_claims(db, since, load.claims)


def print_table(args: argparse.Namespace, rounds: dict[str, list[tuple[Load, ClaimCheck | None]]]) -> None:
    print(f"\nbench/poll.py  agents={args.agents}  ready/round={args.ready_executions}×{args.subtasks}  "
          f"arrivals={args.arrivals}/s×{args.subtasks}  work={args.work_seconds}s  "
          f"paced: {args.rate:.0f}/s, {round(args.rate * args.interval)} agents  "
          f"wrk -t{args.wrk_threads} -c{args.connections} (paced: -c{args.paced_connections}) -d{args.duration}s  "
          f"web {args.web_workers}×{args.web_threads}  repeat={args.repeat}  (medians; double: max)")
    print(f"{'mode':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'200':>8}{'204':>9}{'other':>7}{'err':>6}"
          f"{'claims':>8}{'double':>8}{'redeliv':>9}{'in db':>7}{'db tx/s':>9}{'×noop':>7}")
    noop = statistics.median(load.wrk.per_s for load, _ in rounds["noop"])
    for mode, runs in rounds.items():
        def med(f, runs=runs):  # noqa: ANN001, ANN202
            return statistics.median(f(load, check) for load, check in runs)
        line = (f"{mode:<10}{med(lambda w, _: w.wrk.per_s):>9.0f}{med(lambda w, _: w.wrk.p50_ms):>9.1f}"
                f"{med(lambda w, _: w.wrk.p99_ms):>9.1f}{med(lambda w, _: w.wrk.count(200)):>8.0f}"
                f"{med(lambda w, _: w.wrk.count(204)):>9.0f}{med(lambda w, _: w.wrk.statuses.get('other', 0)):>7.0f}"
                f"{med(lambda w, _: w.wrk.socket_errors):>6.0f}")
        if runs[0][1] is not None:
            line += (f"{med(lambda _, c: c.answered):>8.0f}{max(c.double for _, c in runs):>8d}"
                     f"{med(lambda _, c: c.redelivered):>9.0f}{med(lambda _, c: c.in_database):>7.0f}"
                     f"{med(lambda w, _: w.db_per_s):>9.0f}")
        else:
            line += " " * 41
        line += f"{med(lambda w, _: w.wrk.per_s) / noop:>7.2f}"
        print(line)
    unanswered = [c.unanswered for runs in rounds.values() for _, c in runs if c is not None]
    print("double claims, all rounds:", sum(c.double for runs in rounds.values() for _, c in runs if c is not None),
          " claims in the database never answered:", sum(unanswered))
    print("\nCPU ms per request, medians (postgres and redis: every such process on the machine)")
    groups = list(next(iter(rounds.values()))[0][0].cpu_ms)
    print(f"{'mode':<10}" + "".join(f"{g:>10}" for g in groups) + f"{'total':>10}")
    for mode, runs in rounds.items():
        cpu = {g: statistics.median(load.cpu_ms[g] for load, _ in runs) for g in groups}
        print(f"{mode:<10}" + "".join(f"{cpu[g]:>10.2f}" for g in groups) + f"{sum(cpu.values()):>10.2f}")
    print("\nPolls by answer, share of the run's polls (median): idle = Redis alone, idle_pool = one query, "
          "busy = the pool's claim slots all taken (Redis alone), claimed and empty = a claim transaction")
    kinds = ("idle", "idle_pool", "busy", "claimed", "empty")
    print(f"{'mode':<10}" + "".join(f"{k:>11}" for k in kinds))
    for mode, runs in rounds.items():
        if runs[0][1] is None:
            continue
        share = {k: statistics.median(100 * load.outcomes[k] / max(1, sum(load.outcomes[j] for j in kinds))
                                      for load, _ in runs) for k in kinds}
        print(f"{mode:<10}" + "".join(f"{share[k]:>10.1f}%" for k in kinds))
    print("\nMean time inside the app per poll, ms (median; the rest of wrk's latency is spent before the app)")
    print(f"{'mode':<10}" + "".join(f"{k:>11}" for k in kinds))
    for mode, runs in rounds.items():
        if runs[0][1] is None:
            continue
        ms = {k: statistics.median(1000 * load.outcomes[("s", k)] / max(1, load.outcomes[k]) for load, _ in runs)
              for k in kinds}
        print(f"{mode:<10}" + "".join(f"{ms[k]:>11.1f}" for k in kinds))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = bench_parser(__doc__)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--ready-executions", type=int, default=40, help="executions queued before each poll run")
    ap.add_argument("--subtasks", type=int, default=5, help="ready subtasks per execution")
    ap.add_argument("--arrivals", type=float, default=2.0,
                    help="executions queued a second in the arrivals and paced modes")
    ap.add_argument("--rate", type=float, default=1000, help="polls a second offered in the paced mode")
    ap.add_argument("--interval", type=float, default=2.0,
                    help="seconds between two polls of one agent in the paced mode (it has rate × interval agents)")
    ap.add_argument("--work-seconds", type=float, default=0.0, help="how long an agent works on a claim")
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--paced-connections", type=int, default=256,
                    help="connections of the paced mode, each waiting connections / rate after each answer: "
                    "enough that the wait, not the answer's latency, sets the rate (at -c64 a 30 ms answer "
                    "cut 1,000/s offered to 680/s)")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--web-workers", type=int, default=2)
    ap.add_argument("--web-threads", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", default="noop,poll,arrivals,paced")
    ap.add_argument("--profile", type=Path, help="instead: py-spy the web processes (GIL samples) under this "
                    "folder during one run of --profile-mode, and print where their CPU goes")
    ap.add_argument("--profile-mode", default="poll", choices=("poll", "arrivals", "paced"))
    return ap.parse_args(argv)


def paced_ms(args: argparse.Namespace) -> int:
    """How long each paced connection waits after an answer, for --rate polls a second in all."""
    return round(args.paced_connections * 1000 / args.rate)


def profile(args: argparse.Namespace, stack: Stack, db: Database, r: redis_lib.Redis, prefix: str,
            scenes: dict[str, Scene]) -> None:
    """Sample the web processes with py-spy (threads holding the GIL: CPU) during one poll run."""
    args.profile.mkdir(parents=True, exist_ok=True)
    mode = args.profile_mode
    scene = scenes[mode]
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.profile / f"web-{mode}.txt"
    spies: list[subprocess.Popen] = []

    def start_spy() -> None:  # after the warm-up: its first polls (cold caches) are not what is measured
        spies.append(subprocess.Popen([
            spy_bin, "record", "--subprocesses", "--nonblocking", "--gil", "--format", "raw", "--rate",
            str(SAMPLE_RATE), "--duration", str(args.duration), "--pid", str(stack.procs[0].pid), "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    load, _ = poll_round(stack, db, r, prefix, scene, args, args.arrivals if mode != "poll" else 0,
                         paced_ms(args) if mode == "paced" else 0, start_spy)
    spies[0].wait()
    print(f"{mode} under py-spy: {load.wrk.per_s:.0f} polls/s, p50 {load.wrk.p50_ms:.1f} ms, "
          f"CPU ms per poll {({k: round(v, 2) for k, v in load.cpu_ms.items()})}, by answer {dict(load.outcomes)}")
    summarize_profile(out)


def main(argv: list[str] | None = None) -> dict[str, list[tuple[Load, ClaimCheck | None]]]:
    args = parse_args(argv)
    ensure_wrk()
    db_url, env, log_dir = fresh_stack_env(args.pg, args.redis, "orch_pollbench", LOG_LEVEL="WARNING")
    prefix = env["REDIS_KEY_PREFIX"]
    settings = Settings.from_env(env)
    r = redis_lib.Redis.from_url(args.redis)
    modes = [m for m in args.modes.split(",") if m]
    rounds: dict[str, list[tuple[Load, ClaimCheck | None]]] = {m: [] for m in modes}
    try:
        migrations.upgrade(db_url)
        db = Database(settings)
        scene = setup_agents(db, args.agents, args.subtasks)
        paced_scene = setup_agents(db, round(args.rate * args.interval), args.subtasks) if "paced" in modes else None
        stack = Stack(env, "bench.naive_app:app", log_dir, args.web_workers, args.web_threads, args.concurrency)
        scenes = {"poll": scene, "arrivals": scene, "paced": paced_scene or scene}
        try:
            if args.profile:
                profile(args, stack, db, r, prefix, scenes)
                return rounds
            for i in range(args.repeat):
                for mode in modes:
                    if mode == "noop":
                        rounds[mode].append((metered(CpuMeter(stack), lambda: run_wrk_script(
                            stack.url, _NOOP_LUA, args.duration, args.wrk_threads, args.connections)), None))
                    else:
                        arrivals = args.arrivals if mode in ("arrivals", "paced") else 0
                        pace_ms = paced_ms(args) if mode == "paced" else 0
                        rounds[mode].append(poll_round(stack, db, r, prefix, scenes[mode], args, arrivals, pace_ms))
                print(f"round {i + 1}/{args.repeat} done", flush=True)
        finally:
            stack.stop()
            db.dispose()
        print_table(args, rounds)
    finally:
        clean_up(args.pg, db_url, r, prefix)
    return rounds


if __name__ == "__main__":
    main()
