"""bench/ingest.py still runs: a second of each mode, with wrk, on PostgreSQL and Redis.

What is checked is that every mode sends requests, that every accepted event is applied, and that
the table and ratios are printed.
"""

from __future__ import annotations

from tests.bench.conftest import first_table


def test_the_ingest_bench_runs_every_mode(needs_stack, run_bench) -> None:
    out = run_bench("ingest.py", "--duration", "1", "--repeat", "1", "--agents", "4", "--connections", "4",
                    "--batch-size", "10")
    table = first_table(out, ("noop", "naive", "single", "paced", "batch"))
    for mode in ("naive", "single", "batch"):
        requests_per_s, lost = float(table[mode][1]), int(table[mode][-1])
        assert requests_per_s > 0 and lost == 0, table[mode]
    assert "single vs naive" in out and "CPU ms per event" in out
