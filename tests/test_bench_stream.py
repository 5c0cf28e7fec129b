"""The live-stream benches still run end to end: a few seconds each, with tiny numbers.

Performance stays out of the suite: nothing here asserts a timing, only that each bench measures
what it says (every probe reaches every socket, every row of the table is printed). They need
PostgreSQL and Redis over TCP (BENCH_PG, BENCH_REDIS) and `wrk`; without them they are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")


def _redis_reachable() -> bool:
    try:
        return bool(redis_lib.Redis.from_url(REDIS, socket_connect_timeout=2).ping())
    except redis_lib.RedisError:
        return False


def _postgres_reachable() -> bool:
    engine = create_engine(PG.replace("postgresql://", "postgresql+psycopg://"), connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False
    finally:
        engine.dispose()


def run_bench(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "BENCH_PG": PG, "BENCH_REDIS": REDIS})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_stream_latency_bench_times_every_probe_on_every_socket() -> None:
    if not (_redis_reachable() and _postgres_reachable()):
        pytest.skip("needs PostgreSQL and Redis over TCP (BENCH_PG, BENCH_REDIS)")
    out = run_bench("bench/stream_latency.py", "--sockets", "3", "--load", "100", "--batch", "10", "--probes", "5",
                    "--warmup", "2", "--repeat", "1", "--gap", "0.02", "--connections", "2")
    assert re.findall(r"delivered (\d+)/(\d+)", out) == [("15", "15"), ("15", "15")]
    for hop in ("POST -> socket", "POST -> accepted", "accepted -> published", "published -> socket",
                "of which commit-order hold", "load: accepted -> published"):
        assert re.search(rf"{hop}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), (hop, out)
    achieved = re.search(r"achieved (\d+)/s", out)
    assert achieved is not None and int(achieved.group(1)) > 0, out
    assert "sockets closed by the server 0" in out


def test_relay_fanout_bench_pushes_every_message_to_every_socket() -> None:
    if not _redis_reachable():
        pytest.skip("needs Redis over TCP (BENCH_REDIS)")
    out = run_bench("bench/relay_fanout.py", "--sockets", "3", "--messages", "40", "--burst", "1", "--burst", "10",
                    "--rounds", "20")
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+$", out, re.MULTILINE)
    assert rows == ["1", "10"], out
