"""The benches under bench/ run end to end here, with tiny numbers, against PostgreSQL and Redis over TCP.

Figures mean nothing in the suite (no timed assertions); the tests check that each bench measures
what it says. Without `wrk`, PostgreSQL or Redis (BENCH_PG, BENCH_REDIS) they are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def needs_redis() -> None:
    if not _redis_reachable():
        pytest.skip("needs Redis over TCP (BENCH_REDIS)")


@pytest.fixture
def needs_postgres() -> None:
    if not _postgres_reachable():
        pytest.skip("needs PostgreSQL over TCP (BENCH_PG)")


@pytest.fixture
def needs_stack(needs_redis: None, needs_postgres: None) -> None:
    """wrk, PostgreSQL and Redis: what a bench that drives the whole stack with wrk needs."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")


@pytest.fixture
def run_bench(tmp_path: Path) -> Callable[..., str]:
    """Run `python bench/<script> --pg .. --redis .. args...` and return what it printed; fail on a non-zero exit."""

    def run(script: str, *args: str, services: bool = True) -> str:
        where = ("--pg", PG, "--redis", REDIS) if services else ()
        out = subprocess.run([sys.executable, f"bench/{script}", *where, *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=300,
                             # Nothing of the suite's environment (DATABASE_URL, key prefixes) reaches the bench.
                             env={"PATH": "/usr/bin:/bin", "BENCH_PG": PG, "BENCH_REDIS": REDIS,
                                  "BENCH_LOG_DIR": str(tmp_path)})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout

    return run


def first_table(out: str, modes: tuple[str, ...]) -> dict[str, list[str]]:
    """The first row printed for each mode, split into cells (later tables repeat the mode names)."""
    table: dict[str, list[str]] = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in modes:
            table.setdefault(cells[0], cells)
    assert set(table) == set(modes), out
    return table
