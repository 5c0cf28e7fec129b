"""bench/poll.py still runs: a second of each mode, with wrk, on PostgreSQL and Redis.

The figures mean nothing here (no timed assertions); what is checked is that every mode sends
requests, that polls claimed the work queued for them and no claim was answered twice, and that the
tables are printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.test_bench_ingest import PG, REDIS, ROOT, _services_up


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_poll_bench_runs_every_mode(tmp_path) -> None:
    if not _services_up():
        pytest.skip("the bench needs PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379")
    out = subprocess.run(
        [sys.executable, "bench/poll.py", "--pg", PG, "--redis", REDIS, "--duration", "1", "--repeat", "1",
         "--agents", "6", "--ready-executions", "1", "--subtasks", "2", "--arrivals", "1", "--rate", "40",
         "--interval", "0.5", "--connections", "4", "--web-threads", "4", "--concurrency", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"BENCH_LOG_DIR": str(tmp_path),
                                                                     "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():  # the first table: the CPU table's rows come after
        if line.split() and line.split()[0] in ("noop", "poll", "arrivals", "paced"):
            table.setdefault(line.split()[0], line.split())
    assert set(table) == {"noop", "poll", "arrivals", "paced"}, out.stdout
    assert all(float(row[1]) > 0 for row in table.values()), table
    for mode in ("poll", "arrivals", "paced"):
        claims, double = int(table[mode][8]), int(table[mode][9])
        assert claims >= 2 and double == 0, table[mode]  # the subtasks queued before the run, at least
    assert "double claims, all rounds: 0" in out.stdout and "CPU ms per request" in out.stdout
