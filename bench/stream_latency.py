"""Live-stream latency: from an event's POST to its message on every open WebSocket, with no load and
under a background load of events, on the whole stack (gunicorn, Celery, PostgreSQL, Redis).

    python bench/stream_latency.py                 # 100 sockets, 1,000 events/s of load, 3 runs
    python bench/stream_latency.py --sockets 50 --load 500 --probes 100 --repeat 1

The sockets watch one execution; a probe agent posts a trickle of events to it (one every --gap
seconds), and each probe's arrival on each socket is timed against its POST. Under load, `wrk`
(with a Lua script that paces batches of --batch events) posts --load events/s to the other
executions at the same time, so the relay, the workers and the database are busy while the probes'
messages go through. The sockets, and a Redis subscription of our own that times each hop, are read
in one separate process (bench/ws_listen.py) so that the client's GIL is not what is measured.

Before measuring, one event times a cold start (the first event after the stack started) and a
warm-up (probes, then a burst of load) reaches every web and worker process once. Hops:
  POST -> accepted      the handler stamped the event (its `timestamp`)
  accepted -> published the worker's commit was published (our subscriber received it)
  published -> socket   the relay put it on each socket, in commit order
Prints p50/p95/p99/max (medians of --repeat runs), the load achieved and the CPU each part of the
stack used under load.

    python bench/stream_latency.py --baseline /tmp/base   # /tmp/base: another checkout of the project

With --baseline, the web tier of that other checkout runs beside ours on the same database, Redis
and channel, with as many sockets of its own, and takes every other probe and half of the load (so
that request threads compete with each relay alike): both relays get the same messages at the same
moment, and their hops to the sockets are printed side by side, with the ratio (the machine's noise
hits both alike).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis as redis_lib
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import migrations  # noqa: E402
from bench.ingest import Stack, bench_parser, clean_up, event_body, free_port, fresh_stack_env, pct, setup_scene  # noqa: E402
from bench.wrk import ensure_wrk  # noqa: E402
from bench.ws_listen import accepted_at  # noqa: E402
from cli.main import gunicorn_argv  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.db import Database  # noqa: E402
from orchestrator.events.protocol import Keys  # noqa: E402
from orchestrator.models import Execution  # noqa: E402
from orchestrator.publish import channel  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from web.relay import Sequencer  # noqa: E402

# One pre-built request per load agent, sent in turn; delay() paces them on the monotonic clock
# (LuaJIT's ffi: wrk's Lua has no clock finer than a second), catching up at most a second behind.
LOAD_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local agents = {%(agents)s}
local prepared, n, next_at = {}, 0, nil
local interval = %(interval_ms).3f

function init(args)
  for i, a in ipairs(agents) do
    prepared[i] = wrk.format("POST", "/api/events/batch",
      {["Authorization"] = "Bearer " .. a[1], ["Content-Type"] = "application/json"}, a[2])
  end
end

function delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 1000 then next_at = now end
  next_at = next_at + interval
  if next_at <= now then return 0 end
  return next_at - now
end

function request()
  n = n + 1
  return prepared[n %% #prepared + 1]
end
"""

HOPS = ("POST -> socket", "POST -> accepted", "accepted -> published", "published -> socket",
        "  of which commit-order hold")


@dataclass
class Load:
    offered: int
    achieved: float = 0.0
    errors: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # part of the stack -> cores used


@dataclass
class Phase:
    name: str
    sent: dict[str, float]  # probe event id -> when its POST left (wall clock)
    start: float
    end: float
    load: Load | None = None


def write_lua(path: Path, scene, batch: int, rate: float) -> None:
    agents = []
    for n, (agent_id, key, ex_id, sub_id) in enumerate(scene):
        body = {"events": [{**event_body(agent_id, sub_id, n * batch + i), "execution_id": ex_id}
                           for i in range(batch)]}
        agents.append(f'{{"{key}", [==[{orjson.dumps(body).decode()}]==]}}')
    path.write_text(LOAD_LUA % {"agents": ", ".join(agents), "interval_ms": 1000 * batch / rate})


@contextmanager
def wrk_load(url: str, lua: Path, connections: int, load: Load, batch: int) -> Iterator[subprocess.Popen[str]]:
    """wrk posting the load for as long as the block runs; its figures go into `load`."""
    wrk = ensure_wrk()
    proc = subprocess.Popen([wrk, "-t1", f"-c{connections}", "-d600s", "--timeout", "30s", "-s", str(lua), url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    read_wrk(out, load, batch)


def read_wrk(out: str, load: Load, batch: int) -> None:
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if done is None:
        raise RuntimeError(f"wrk said:\n{out}")
    load.seconds = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    load.achieved = int(done.group(1)) * batch / load.seconds
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    load.errors = (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors
                                                             else 0)


def cpu_seconds(groups: dict[str, set[int]], database: str) -> dict[int, tuple[str, float]]:
    """CPU seconds each process of the stack has used so far, by pid: (part, seconds). Our processes
    by process group; PostgreSQL's backends by the database named in their title; Redis by name (it
    may serve others too)."""
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
            title = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        pgrp, seconds = int(fields[2]), (int(fields[11]) + int(fields[12])) / tick
        part = next((p for p, pgids in groups.items() if pgrp in pgids), None)
        if part is None and name.startswith("redis-server"):
            part = "redis"
        elif part is None and name.startswith("postgres") and f" {database} ".encode() in title:
            part = "postgres"
        if part is not None:
            used[int(stat.parent.name)] = (part, seconds)
    return used


def cores_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
               seconds: float) -> dict[str, float]:
    """Cores each part used between two `cpu_seconds` readings (processes present in both)."""
    out: dict[str, float] = {}
    for pid, (part, t) in after.items():
        if pid in before:
            out[part] = out.get(part, 0.0) + (t - before[pid][1]) / seconds
    return out


def post_probes(urls: list[str], probe, count: int, gap: float) -> dict[str, float]:
    """`count` probe events, one every `gap` seconds, to each web tier in turn: {event id: POST time}."""
    agent_id, key, ex_id, _ = probe
    sess = requests.Session()
    sess.headers["Authorization"] = f"Bearer {key}"
    sent: dict[str, float] = {}
    for i in range(count):
        t0 = time.time()
        resp = sess.post(f"{urls[i % len(urls)]}/api/executions/{ex_id}/events", timeout=30, json={
            "agent_id": agent_id, "event_type": "heartbeat", "message": f"probe {i} {secrets.token_hex(3)}"})
        resp.raise_for_status()
        sent[resp.json()["event_id"]] = t0
        time.sleep(gap)
    return sent


def settle(r: redis_lib.Redis, keys: Keys, shards: int, timeout: float = 120) -> None:
    """Wait until every shard's stream is empty, then a moment for the last messages to go out."""
    deadline = time.monotonic() + timeout
    while any(r.xlen(keys.stream(s)) for s in range(shards)):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not catch up")
        time.sleep(0.1)
    time.sleep(0.5)


def relay_holds(events: dict[str, list]) -> dict[str, float]:
    """Seconds each event message waited in the relay for an earlier commit's messages: the relay's
    Sequencer run again on what our subscriber heard, at the times it heard it."""
    heard = sorted((e[1], eid, {"type": "event", "event_id": eid, "seq": e[3], "commit_range": e[4]})
                   for eid, e in events.items() if e[1] is not None and e[3] is not None)
    sequencer, held, now = Sequencer(), {}, 0.0

    def release(at: float) -> None:
        for msg in sequencer.release(at):
            held[msg["event_id"]] = at - arrived[msg["event_id"]]

    arrived = {eid: t for t, eid, _ in heard}
    for t, _, msg in heard:
        while (due := now + sequencer.wait(now, idle=math.inf)) <= t:
            release(due)
            now = due
        sequencer.add(msg, t)
        release(t)
        now = t
    while (wait := sequencer.wait(now, idle=math.inf)) < math.inf:
        now += wait
        release(now)
    return held


def hop_values(phase: Phase, events: dict[str, list], holds: dict[str, float]) -> dict[str, list[float]]:
    """Seconds per hop: per (probe, socket) arrival for the hops that end on a socket, else per probe."""
    out: dict[str, list[float]] = {h: [] for h in HOPS}
    for eid, t0 in phase.sent.items():
        stamp, published, arrivals, _, _ = events.get(eid, (None, None, [], None, None))
        out["POST -> socket"] += [a - t0 for a in arrivals]
        if stamp is not None:
            out["POST -> accepted"].append(accepted_at(stamp) - t0)
            if published is not None:
                out["accepted -> published"].append(published - accepted_at(stamp))
        if published is not None:
            out["published -> socket"] += [a - published for a in arrivals]
        if eid in holds:
            out["  of which commit-order hold"].append(holds[eid])
    return out


def load_published(phase: Phase, events: dict[str, list]) -> list[float]:
    """accepted -> published for the load's own events accepted during the phase."""
    out = []
    for eid, (stamp, published, *_) in events.items():
        if stamp is None or published is None or eid in phase.sent:
            continue
        accepted = accepted_at(stamp)
        if phase.start <= accepted <= phase.end:
            out.append(published - accepted)
    return out


def stats(values: list[float]) -> tuple[float, float, float, float]:
    if not values:
        return (math.nan,) * 4
    return pct(values, 50) * 1e3, pct(values, 95) * 1e3, pct(values, 99) * 1e3, max(values) * 1e3


def median_stats(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(col) for col in zip(*runs, strict=True))


@dataclass
class Tier:
    """A web tier whose sockets are timed: this tree's, or the baseline's (--baseline)."""

    name: str
    url: str
    pgid: int
    listener: subprocess.Popen[bytes] | None = None
    events: dict[str, list] = field(default_factory=dict)
    frames: int = 0
    closed: int = 0

    def listen(self, path: str, sockets: int, redis_url: str, channel_name: str) -> None:
        """Open the tier's sockets (and a subscription of our own) in a listener process."""
        parts = urlsplit(redis_url)
        self.listener = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "ws_listen.py"), self.url.replace("http://", "ws://") + path,
             str(sockets), f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}", channel_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.listener.stdout.readline().strip() != b"ready":  # type: ignore[union-attr]
            raise RuntimeError(f"the listener did not open its sockets to {self.name}")

    def collect(self) -> None:
        got = json.loads(self.listener.communicate(b"", timeout=60)[0])  # type: ignore[union-attr]
        self.events, self.frames, self.closed = got["events"], got["frames"], got["closed"]

    def stop_listening(self) -> None:
        if self.listener is not None and self.listener.poll() is None:
            self.listener.kill()


def start_baseline_web(tree: Path, env: dict[str, str], log_dir: Path, workers: int,
                       threads: int) -> tuple[str, subprocess.Popen[bytes]]:
    """The web tier of another checkout (--baseline) on the same database, Redis and channel: its relay
    hears the same messages at the same moment as ours, so the two are compared under the same load."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(gunicorn_argv("127.0.0.1", port, workers, threads), cwd=tree,
                            env={**env, "PYTHONPATH": str(tree)}, stdout=open(log_dir / "baseline-web.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return url, proc
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"the baseline web tier did not start; see {log_dir}")


def row(label: str, values: tuple[float, ...] | list[float], width: int = 40, digits: int = 1) -> str:
    return f"{label:<{width}}" + "".join(f"{v:>8.{digits}f}" for v in values)


def report(args, cold: Phase, phases: list[Phase], tiers: list[Tier]) -> None:
    ours = tiers[0]
    events = ours.events
    print(f"\nbench/stream_latency.py --sockets {args.sockets} --load {args.load} --batch {args.batch} "
          f"--probes {args.probes} --gap {args.gap} --repeat {args.repeat}"
          + (f" --baseline {args.baseline}" if args.baseline else ""))
    holds = relay_holds(events)
    cold_hops = hop_values(cold, events, holds)
    to_published = [a + b for a, b in zip(cold_hops["POST -> accepted"], cold_hops["accepted -> published"],
                                          strict=False)]
    print(f"cold start (the first event after the stack started): POST -> published {stats(to_published)[3]:.0f} ms, "
          f"POST -> last socket {stats(cold_hops['POST -> socket'])[3]:.0f} ms")
    print(f"\n{'ms, median of ' + str(args.repeat) + ' runs':<40}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
    expected = args.probes * args.sockets
    for name in ("no load", "under load"):
        runs = [p for p in phases if p.name == name]
        hops = [hop_values(p, events, holds) for p in runs]
        for i, hop in enumerate(HOPS):
            print(row(f"{name if i == 0 else '':<12}{hop}", median_stats([stats(h[hop]) for h in hops])))
        if name == "under load":
            print(row(f"{'':<12}load: accepted -> published",
                      median_stats([stats(load_published(p, events)) for p in runs])))
            print(row(f"{'':<12}all: commit-order hold", median_stats(
                [stats([holds[e] for e in holds if p.start <= events[e][1] <= p.end + 1]) for p in runs])))
        print(f"{'':<12}delivered {', '.join(f'{len(h[HOPS[0]])}/{expected}' for h in hops)}")
    if len(tiers) > 1:
        compare(args, phases, tiers)
    loads = [p.load for p in phases if p.load is not None]
    print(f"\nload: offered {args.load}/s, achieved {statistics.median(ld.achieved for ld in loads):.0f}/s "
          f"(runs: {', '.join(f'{ld.achieved:.0f}' for ld in loads)}), wrk errors {sum(ld.errors for ld in loads)}")
    cpu = {part: statistics.median(ld.cpu.get(part, 0.0) for ld in loads) for part in loads[0].cpu}
    print("CPU under load (cores; redis counts all of its users): "
          + ", ".join(f"{part} {v:.2f}" for part, v in cpu.items())
          + f", total {sum(cpu.values()):.2f} of {os.cpu_count()}")
    for tier in tiers:
        print(f"{tier.name}: frames received {tier.frames}, sockets closed by the server {tier.closed}")


def compare(args, phases: list[Phase], tiers: list[Tier]) -> None:
    """The relay hop of both tiers, for the same probes at the same moment, and their ratio."""
    title = f"side by side, ms, median of {args.repeat} runs"
    print(f"\n{title:<50}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
    ours, base = tiers[0].name, tiers[1].name
    for name in ("no load", "under load"):
        runs = [p for p in phases if p.name == name]
        for hop in ("POST -> socket", "published -> socket"):
            got = {t.name: median_stats([stats(hop_values(p, t.events, {})[hop]) for p in runs]) for t in tiers}
            for tier in tiers:
                print(row(f"{name:<12}{tier.name}: {hop}", got[tier.name], 50))
            ratio = [b / o if o else math.nan for b, o in zip(got[base], got[ours], strict=True)]
            print(row(f"{'':<12}ratio {base} / {ours}", ratio, 50, 2))


@contextmanager
def loaded(tiers: list[Tier], luas: list[Path], args, load: Load) -> Iterator[list[int]]:
    """The load for as long as the block runs, shared out evenly between the web tiers (each tier's
    requests, and their GIL, stay with its own processes): yields wrk's pids."""
    shares = [Load(args.load) for _ in tiers]
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(wrk_load(t.url, lua, args.connections, share, args.batch))
                 for t, lua, share in zip(tiers, luas, shares, strict=True)]
        yield [p.pid for p in procs]
    load.achieved = sum(share.achieved for share in shares)
    load.errors = sum(share.errors for share in shares)


def measure_load(tiers: list[Tier], r, keys: Keys, shards: int, args, luas: list[Path], probe, groups,
                 database: str) -> Phase:
    load = Load(args.load)
    with loaded(tiers, luas, args, load) as pids:
        time.sleep(1)  # let the load reach its pace first
        groups = {**groups, "bench": groups["bench"] | set(pids)}
        before, t_before = cpu_seconds(groups, database), time.monotonic()
        start = time.time()
        sent = post_probes([t.url for t in tiers], probe, args.probes, args.gap)
        end = time.time()
        load.cpu = cores_used(before, cpu_seconds(groups, database), time.monotonic() - t_before)
    settle(r, keys, shards)
    return Phase("under load", sent, start, end, load)


def run(args, stack: Stack, env: dict[str, str], scene, tiers: list[Tier],
        r: redis_lib.Redis) -> tuple[Phase, list[Phase]]:
    settings = Settings.from_env(env)
    keys, shards = Keys(settings.redis_key_prefix), settings.ingest_shards
    probe, load_scene = scene[0], scene[1:]
    groups = {"web": {tiers[0].pgid}, "worker": {stack.procs[1].pid}, "bench": {os.getpgrp()}}
    groups.update({f"{t.name} web": {t.pgid} for t in tiers[1:]})
    luas = [Path(env["ORCHESTRATOR_DATA_DIR"]) / f"load-{i}.lua" for i in range(len(tiers))]
    for i, lua in enumerate(luas):  # each tier's share of the load, from its own agents
        write_lua(lua, load_scene[i::len(luas)], args.batch, args.load / len(luas))
    urls = [t.url for t in tiers]
    start = time.time()
    cold = Phase("cold", post_probes(urls[:1], probe, 1, 0), start, time.time())
    settle(r, keys, shards)
    post_probes(urls, probe, args.warmup, args.gap)  # warm-up: every web worker, both halves of the path
    with loaded(tiers, luas, args, Load(args.load)):
        time.sleep(2)
    settle(r, keys, shards)
    phases = []
    for _ in range(args.repeat):
        start = time.time()
        phases.append(Phase("no load", post_probes(urls, probe, args.probes, args.gap), start, time.time()))
        settle(r, keys, shards)
        phases.append(measure_load(tiers, r, keys, shards, args, luas, probe, groups,
                                   settings.database_url.rsplit("/", 1)[1]))
    return cold, phases


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--sockets", type=int, default=100)
    ap.add_argument("--load", type=int, default=1000, help="background events per second")
    ap.add_argument("--batch", type=int, default=100, help="events per load request")
    ap.add_argument("--connections", type=int, default=8, help="wrk connections for the load")
    ap.add_argument("--probes", type=int, default=60, help="probe events per phase")
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between probes")
    ap.add_argument("--warmup", type=int, default=20, help="probes sent before measuring")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--web-workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    ap.add_argument("--baseline", type=Path, help="another checkout whose web tier runs beside ours, for comparison")
    args = ap.parse_args()
    ensure_wrk()

    db_url, env, log_dir = fresh_stack_env(args.pg, args.redis, "orch_stream", INGEST_REPLY_WAIT_MS="0",
                                           LOG_LEVEL="WARNING")
    prefix = env["REDIS_KEY_PREFIX"]
    r = redis_lib.Redis.from_url(args.redis)
    try:
        migrations.upgrade(db_url)
        db = Database(Settings.from_env(env))
        scene = setup_scene(db, r, prefix, 9)
        with db.unit_of_work() as s:
            owner = s.get(Execution, scene[0][2]).owner_id
            _, user_token = issue_credential(s, user_id=owner)
        db.dispose()
        # Each socket holds a gunicorn thread: leave room for the load's and the probes' requests.
        threads = max(32, math.ceil(args.sockets / args.web_workers) + 16)
        stack = Stack(env, "web.wsgi:app", log_dir, args.web_workers, threads, args.concurrency)
        tiers = [Tier("ours", stack.url, stack.procs[0].pid)]
        baseline = None
        try:
            if args.baseline:
                url, baseline = start_baseline_web(args.baseline.resolve(), env, log_dir, args.web_workers, threads)
                tiers.append(Tier("baseline", url, baseline.pid))
            token = requests.post(stack.url + "/api/tokens/stream", timeout=10,
                                  headers={"Authorization": f"Bearer {user_token}"}).json()["token"]
            for tier in tiers:
                tier.listen(f"/api/executions/{scene[0][2]}/stream?token={token}", args.sockets, args.redis,
                            channel(prefix))
            cold, phases = run(args, stack, env, scene, tiers, r)
            for tier in tiers:
                tier.collect()
        finally:
            for tier in tiers:
                tier.stop_listening()
            if baseline is not None and baseline.poll() is None:
                os.killpg(baseline.pid, signal.SIGTERM)
            stack.stop()
        report(args, cold, phases, tiers)
    finally:
        clean_up(args.pg, db_url, r, prefix)


if __name__ == "__main__":
    main()
