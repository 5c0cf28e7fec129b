"""Metrics: the scrape-time collector, the snapshot it reads, and how the processes' files add up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.events.protocol import Keys
from orchestrator.liveness import record_beat, record_worker
from orchestrator.metrics import (
    MULTIPROC_ENV,
    ShardBacklog,
    Snapshot,
    SnapshotCollector,
    gather,
    instruments,
    metrics_env,
    prepare_metrics_dir,
    totals,
)
from orchestrator.models import utcnow
from orchestrator.ops import summary, take_snapshot
from tests.factories import make_agent
from tests.workers.helpers import own_key_prefix, queued_execution


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → {(sample name, sorted labels): value}."""
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


SNAP = Snapshot(shards=[ShardBacklog(0, 0, 0.0), ShardBacklog(1, 7, 42.5)], dead_letters=2,
                executions={"RUNNING": 3, "COMPLETED": 5}, agents_online=4, agents_total=6, workers_alive=2,
                worker_heartbeat_age_seconds=1.5, beat_age_seconds=None)


def test_the_collector_turns_a_snapshot_into_gauges() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: SNAP))
    got = samples(generate_latest(registry))
    assert got[("orchestrator_shard_backlog", (("shard", "1"),))] == 7
    assert got[("orchestrator_shard_oldest_entry_age_seconds", (("shard", "1"),))] == 42.5
    assert got[("orchestrator_shard_backlog", (("shard", "0"),))] == 0
    assert got[("orchestrator_dead_letters", ())] == 2
    assert got[("orchestrator_executions", (("state", "COMPLETED"),))] == 5
    assert got[("orchestrator_executions", (("state", "RUNNING"),))] == 3
    assert got[("orchestrator_agents_online", ())] == 4
    assert got[("orchestrator_workers_alive", ())] == 2
    assert got[("orchestrator_worker_heartbeat_age_seconds", ())] == 1.5
    assert got[("orchestrator_snapshot_ok", ())] == 1
    assert not any(name == "orchestrator_beat_age_seconds" for name, _ in got)  # never beat: no sample


def test_a_failed_snapshot_leaves_the_rest_of_the_scrape() -> None:
    def broken() -> Snapshot:
        raise ConnectionError("database away")

    instruments()  # this process counts too
    got = samples(gather([SnapshotCollector(broken)]))
    assert got[("orchestrator_snapshot_ok", ())] == 0
    assert not any(name == "orchestrator_shard_backlog" for name, _ in got)
    assert any(name == "orchestrator_events_accepted_total" for name, _ in got)  # the processes' own metrics


def _write(path: Path, kind: str, pid: int, metric: str, value: float, labels: dict[str, str] | None = None) -> None:
    d = MmapedDict(str(path / f"{kind}_{pid}.db"))
    labels = labels or {}
    d.write_value(mmap_key(metric, metric + ("_total" if kind == "counter" else ""), list(labels),
                           list(labels.values()), "help"), value, 0.0)
    d.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_scrape_adds_up_the_processes_and_drops_dead_ones_live_gauges(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dead = _dead_pid()
    _write(tmp_path, "counter", os.getpid(), "orchestrator_events_applied", 5)
    _write(tmp_path, "counter", dead, "orchestrator_events_applied", 3)  # a worker child that exited
    _write(tmp_path, "gauge_livesum", os.getpid(), "orchestrator_open_websockets", 2)
    _write(tmp_path, "gauge_livesum", dead, "orchestrator_open_websockets", 9)  # its sockets are gone
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    got = samples(gather())
    assert got[("orchestrator_events_applied_total", ())] == 8
    assert got[("orchestrator_open_websockets", ())] == 2
    assert totals(["orchestrator_events_applied", "orchestrator_events_accepted"]) == {
        "orchestrator_events_applied": 8, "orchestrator_events_accepted": 0}


def test_preparing_the_folder_removes_only_what_dead_processes_left(tmp_path: Path) -> None:
    dead = _dead_pid()
    folder = tmp_path / "metrics"
    folder.mkdir()
    _write(folder, "counter", dead, "orchestrator_events_applied", 3)
    _write(folder, "counter", os.getpid(), "orchestrator_events_applied", 1)
    prepare_metrics_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == [f"counter_{os.getpid()}.db"]


def test_the_command_sets_a_folder_per_host_unless_one_is_given_and_prepares_it(tmp_path: Path) -> None:
    env = metrics_env({"PATH": "/bin"}, tmp_path)
    path = Path(env[MULTIPROC_ENV])
    assert path.is_dir() and path.parent == tmp_path / "metrics"
    given = tmp_path / "given"
    assert metrics_env({MULTIPROC_ENV: str(given)}, tmp_path)[MULTIPROC_ENV] == str(given) and given.is_dir()
    # A data folder where no folder can be made: each process counts alone, and nothing fails.
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert MULTIPROC_ENV not in metrics_env({}, not_a_folder)


def test_the_snapshot_reads_redis_and_the_database(migrated, db) -> None:
    with own_key_prefix(migrated, "snap") as (settings, r):
        keys = Keys(settings.redis_key_prefix)
        now = time.time()
        r.xadd(keys.stream(1), {"e": b"x"}, id=f"{int((now - 30) * 1000)}-0")
        r.xadd(keys.stream(1), {"e": b"y"})
        r.xadd(keys.dead_letters(), {"e": b"z"})
        record_worker(r, settings.redis_key_prefix, "w1", now - 1)
        record_worker(r, settings.redis_key_prefix, "w2", now - 10 * settings.sweep_interval_seconds)  # gone
        record_beat(r, settings.redis_key_prefix, now - 5)
        scene = queued_execution(db)
        queued_execution(db)
        with db.unit_of_work() as s:
            make_agent(s, last_heartbeat=utcnow() - timedelta(seconds=settings.heartbeat_window_seconds + 60))
            make_agent(s, last_heartbeat=utcnow())
        snap = take_snapshot(db, r, settings, now)
        assert snap.shards[1].length == 2 and 29 <= snap.shards[1].oldest_age_seconds <= 31
        assert all(s.length == 0 and s.oldest_age_seconds == 0 for i, s in enumerate(snap.shards) if i != 1)
        assert snap.dead_letters == 1
        assert snap.executions == {"QUEUED": 2}
        # The scenes' two agents never beat, one beat long ago, one just now.
        assert (snap.agents_online, snap.agents_total) == (1, 4)
        assert snap.workers_alive == 1 and snap.worker_heartbeat_age_seconds == pytest.approx(1, abs=0.01)
        assert snap.beat_age_seconds == pytest.approx(5, abs=0.01)
        body = summary(snap, now)
        assert body["shards"][1] == {"shard": 1, "backlog": 2, "oldest_age_seconds": pytest.approx(30, abs=1)}
        assert body["agents"] == {"online": 1, "total": 4} and set(body["totals"]) == {
            "accepted", "applied", "dead_lettered"}
        assert scene.execution_id


def test_the_grafana_dashboard_and_scrape_config_name_metrics_that_exist() -> None:
    import json
    import re

    import yaml

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    import dataclasses

    counted = instruments()
    families = {f.name for field in dataclasses.fields(counted) for f in getattr(counted, field.name).describe()}
    snap = dataclasses.replace(SNAP, beat_age_seconds=3.0)
    families |= {f.name for f in text_string_to_metric_families(gather([SnapshotCollector(lambda: snap)]).decode())}
    known = {f + suffix for f in families for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads((deploy / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"orchestrator_[a-z_]+", target["expr"])}
    assert used and used <= known, used - known
    jobs = {job["job_name"] for job in yaml.safe_load((deploy / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs == {"orchestrator-web", "orchestrator-worker"}


def test_threads_that_count_first_at_once_share_one_set_of_instruments() -> None:
    """A web process's first requests run in parallel threads: each must get the same instruments
    (once, a second registration raised DuplicateTimeseries and the request answered 500)."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from orchestrator.metrics import instruments\n"
        "start, got, errors = threading.Barrier(32), [], []\n"
        "def first():\n"
        "    start.wait()\n"
        "    try:\n"
        "        got.append(instruments())\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=first) for _ in range(32)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert not errors, errors\n"
        "assert len({id(i) for i in got}) == 1 and len(got) == 32\n"
    )
    for _ in range(5):  # a fresh process each time: the instruments are made once per process
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
