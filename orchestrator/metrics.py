"""Prometheus metrics: the instruments every process counts with, and how a scrape gathers them.

Counters and histograms are counted where things happen (`instruments()`: accepted events in the
front end, applied ones after their commit in the worker, polls, HTTP requests, open sockets). With
PROMETHEUS_MULTIPROC_DIR set (the `orchestrator` command sets it, `metrics_dir`), each process
writes its values to a file of its own there, and a scrape (`gather`) adds up every process of the
host: gunicorn's workers, Celery's pool and beat. What a query can say at scrape time (shard
backlogs, executions by state, agents online, dead letters, heartbeats) is not pushed at all: the
web process reads it when scraped (`SnapshotCollector`, fed by `orchestrator/ops.py`).

`prometheus_client` picks its value class when first imported, from PROMETHEUS_MULTIPROC_DIR: the
variable must be set before a process imports it, which is why the command sets it for its children.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LIVE_PREFIXES = ("gauge_live",)  # gauges of a process count only while it lives


@dataclass(frozen=True)
class Instruments:
    events_accepted: Counter
    events_duplicate: Counter
    events_rejected: Counter
    events_applied: Counter
    events_dead_lettered: Counter
    apply_batch_size: Histogram
    apply_batch_seconds: Histogram
    polls: Counter
    poll_seconds: Histogram
    claims: Counter
    open_websockets: Gauge
    http_requests: Counter
    http_request_seconds: Histogram


_MAKING = threading.Lock()


def instruments() -> Instruments:
    """The process's instruments, made on first use (never at import: see the module's docstring).
    Under a lock: two threads of a web process that first counted at once both registered them, and
    the second's request died of a DuplicateTimeseries (a 500 on the first requests after a start)."""
    with _MAKING:
        return _instruments()


@cache
def _instruments() -> Instruments:
    return Instruments(
        events_accepted=Counter("orchestrator_events_accepted", "Events queued by the front end (new ones)."),
        events_duplicate=Counter("orchestrator_events_duplicate",
                                 "Events the front end answered from an earlier acceptance (same idempotency key)."),
        events_rejected=Counter("orchestrator_events_rejected",
                                "Events refused: at the edge (stage=accept) or answered not applied by the worker "
                                "(stage=apply).", ["stage", "code"]),
        events_applied=Counter("orchestrator_events_applied", "Events applied and committed by a worker."),
        events_dead_lettered=Counter("orchestrator_events_dead_lettered",
                                     "Stream entries set aside in the dead-letter stream.", ["reason"]),
        apply_batch_size=Histogram("orchestrator_apply_batch_size", "Stream entries per applied batch.",
                                   buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)),
        apply_batch_seconds=Histogram("orchestrator_apply_batch_seconds",
                                      "Time to apply and commit one batch (splits of a failing batch included).",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
        polls=Counter("orchestrator_polls", "Agents' polls by answer: idle (Redis), idle_pool (one query), "
                      "busy (the pool's claim slots all taken), claimed, empty (the database found "
                      "nothing).", ["outcome"]),
        poll_seconds=Histogram("orchestrator_poll_seconds", "Time to answer a poll, by answer.", ["outcome"],
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
        claims=Counter("orchestrator_claims", "Subtasks handed to agents by polls (redelivered: answered again "
                       "until the agent acknowledges).", ["redelivered"]),
        open_websockets=Gauge("orchestrator_open_websockets", "Live-stream WebSockets open now.",
                              multiprocess_mode="livesum"),
        http_requests=Counter("orchestrator_http_requests", "HTTP requests by route (URL rule), method and status.",
                              ["endpoint", "method", "status"]),
        http_request_seconds=Histogram("orchestrator_http_request_seconds", "Time to answer, by route.",
                                       ["endpoint"],
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
    )


# -- where the processes write -----------------------------------------------------------------------


def metrics_dir(data_dir: Path) -> Path:
    """The folder the processes of this host write their values to, under the data folder. Per host,
    since file names are process ids: containers sharing a data volume each get their own."""
    return data_dir / "metrics" / socket.gethostname()


def prepare_metrics_dir(path: Path) -> None:
    """Create `path` and remove the files of processes that no longer run (what a previous run left).

    Counters of a dead process vanish with its file, which a rate() reads as a counter reset; its
    live gauges must go anyway. Files of live processes stay: the web, a worker and beat may be
    started by separate commands that share the folder."""
    path.mkdir(parents=True, exist_ok=True)
    for file in path.glob("*.db"):
        pid = _pid_of(file.name)
        if pid is not None and not _alive(pid):
            file.unlink(missing_ok=True)


def metrics_env(environ: dict[str, str], data_dir: Path) -> dict[str, str]:
    """`environ` with PROMETHEUS_MULTIPROC_DIR set (to `metrics_dir` unless it already is), the folder
    prepared: a restarted container reuses process ids, and a new process must not take over the
    values a dead one left under its id."""
    env = dict(environ)
    path = Path(env.get(MULTIPROC_ENV) or metrics_dir(data_dir))
    try:
        prepare_metrics_dir(path)
    except OSError as exc:  # a read-only data folder: each process then counts alone
        log.warning("metrics folder %s unusable (%s); set PROMETHEUS_MULTIPROC_DIR", path, exc)
        env.pop(MULTIPROC_ENV, None)
        return env
    env[MULTIPROC_ENV] = str(path)
    return env


def _pid_of(name: str) -> int | None:
    stem = name.removesuffix(".db")
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what a scrape reads -----------------------------------------------------------------------------


class _HostFiles(Collector):
    """Every process's values in the multiprocess folder, added up; a dead process's live gauges
    (open sockets) left out, whichever process manager failed to clean them."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        files = []
        for file in glob.glob(os.path.join(self.path, "*.db")):
            name = os.path.basename(file)
            pid = _pid_of(name)
            if name.startswith(_LIVE_PREFIXES) and pid is not None and not _alive(pid):
                continue
            files.append(file)
        yield from MultiProcessCollector.merge(files, accumulate=True)


def host_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry of this host's processes (or this process alone, without a multiprocess folder),
    then the collectors in `extra` (computed as it is read)."""
    path = os.environ.get(MULTIPROC_ENV)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HostFiles(path) if path and os.path.isdir(path) else _Delegate(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


def gather(extra: Iterable[Collector] = ()) -> bytes:
    """The exposition text of `host_registry(extra)`."""
    return generate_latest(host_registry(extra))


def totals(names: Iterable[str]) -> dict[str, float]:
    """Current totals of counters (by name, without `_total`), summed over their labels: what the
    ops view turns into rates."""
    wanted = set(names)
    found = dict.fromkeys(wanted, 0.0)
    path = os.environ.get(MULTIPROC_ENV)
    source: Collector = _HostFiles(path) if path and os.path.isdir(path) else _Delegate(REGISTRY)
    for family in source.collect():
        if family.name in wanted:
            found[family.name] += sum(s.value for s in family.samples if s.name == family.name + "_total")
    return found


class _Delegate(Collector):
    """The default registry's metrics, for a registry of our own (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


# -- gauges computed at scrape time ------------------------------------------------------------------


@dataclass(frozen=True)
class ShardBacklog:
    shard: int
    length: int
    oldest_age_seconds: float  # 0 when empty


@dataclass(frozen=True)
class Snapshot:
    """What the stack looks like now, as the ops view and a scrape read it."""

    shards: list[ShardBacklog]
    dead_letters: int
    executions: dict[str, int]  # state → how many
    agents_online: int
    agents_total: int
    workers_alive: int
    worker_heartbeat_age_seconds: float | None
    beat_age_seconds: float | None


class SnapshotCollector(Collector):
    """Gauges read from the database and Redis at each scrape (`take` builds the snapshot)."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self.take = take

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.take()
        except Exception:
            # The processes' own metrics still go out; this says the stack's state could not be read.
            log.exception("metrics: snapshot failed")
            yield GaugeMetricFamily("orchestrator_snapshot_ok", "Whether the database and Redis could be read.",
                                    value=0)
            return
        yield GaugeMetricFamily("orchestrator_snapshot_ok", "Whether the database and Redis could be read.", value=1)
        backlog = GaugeMetricFamily("orchestrator_shard_backlog",
                                    "Entries in a shard's stream (new or unacknowledged).", labels=["shard"])
        oldest = GaugeMetricFamily("orchestrator_shard_oldest_entry_age_seconds",
                                   "Age of the oldest entry still in a shard's stream (0 when empty).",
                                   labels=["shard"])
        for s in snap.shards:
            backlog.add_metric([str(s.shard)], s.length)
            oldest.add_metric([str(s.shard)], s.oldest_age_seconds)
        yield backlog
        yield oldest
        yield GaugeMetricFamily("orchestrator_dead_letters", "Entries waiting in the dead-letter stream.",
                                value=snap.dead_letters)
        states = GaugeMetricFamily("orchestrator_executions", "Executions by state.", labels=["state"])
        for state, n in sorted(snap.executions.items()):
            states.add_metric([state], n)
        yield states
        yield GaugeMetricFamily("orchestrator_agents_online",
                                "Agents heard from within HEARTBEAT_WINDOW_SECONDS.", value=snap.agents_online)
        yield GaugeMetricFamily("orchestrator_workers_alive", "Celery workers whose heartbeat is recent.",
                                value=snap.workers_alive)
        for name, age in (("orchestrator_worker_heartbeat_age_seconds", snap.worker_heartbeat_age_seconds),
                          ("orchestrator_beat_age_seconds", snap.beat_age_seconds)):
            if age is not None:
                yield GaugeMetricFamily(name, "Seconds since the newest heartbeat.", value=age)
