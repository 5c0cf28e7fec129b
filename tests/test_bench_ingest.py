"""bench/ingest.py still runs: a few seconds of each mode, with wrk, on PostgreSQL and Redis.

The figures mean nothing here (no timed assertions); what is checked is that every mode sends
requests, that every accepted event is applied, and that the table and ratios are printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"


def _services_up() -> bool:
    try:
        with create_engine(PG.replace("postgresql://", "postgresql+psycopg://")).connect() as c:
            c.execute(text("SELECT 1"))
        redis_lib.Redis.from_url(REDIS, socket_connect_timeout=1).ping()
    except (OperationalError, redis_lib.RedisError):
        return False
    return True


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_ingest_bench_runs_every_mode(tmp_path) -> None:
    if not _services_up():
        pytest.skip("the bench needs PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379")
    out = subprocess.run(
        [sys.executable, "bench/ingest.py", "--pg", PG, "--redis", REDIS, "--duration", "1", "--repeat", "1",
         "--agents", "4", "--connections", "4", "--batch-size", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={"BENCH_LOG_DIR": str(tmp_path),
                                                                     "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():  # the first table: the CPU table's rows come after
        if line.split() and line.split()[0] in ("noop", "naive", "single", "paced", "batch"):
            table.setdefault(line.split()[0], line.split())
    assert set(table) >= {"noop", "naive", "single", "paced", "batch"}, out.stdout
    for mode in ("naive", "single", "batch"):
        requests_per_s, lost = float(table[mode][1]), int(table[mode][-1])
        assert requests_per_s > 0 and lost == 0, table[mode]
    assert "single vs naive" in out.stdout and "CPU ms per event" in out.stdout
