"""bench/poll.py still runs: a second of each mode, with wrk, on PostgreSQL and Redis.

What is checked is that every mode sends requests, that polls claimed work queued for them and no
claim was answered twice, and that the tables are printed.
"""

from __future__ import annotations

from tests.bench.conftest import first_table


def test_the_poll_bench_runs_every_mode(needs_stack, run_bench) -> None:
    out = run_bench("poll.py", "--duration", "1", "--repeat", "1", "--agents", "6", "--ready-executions", "1",
                    "--subtasks", "2", "--arrivals", "1", "--rate", "40", "--interval", "0.5", "--connections", "4",
                    "--paced-connections", "4", "--web-threads", "4", "--concurrency", "1")
    table = first_table(out, ("noop", "poll", "arrivals", "paced"))
    assert all(float(row[1]) > 0 for row in table.values()), table
    for mode in ("poll", "arrivals", "paced"):
        claims, double = int(table[mode][8]), int(table[mode][9])
        # Work was handed out, once each. Not necessarily both subtasks: claims of one execution take turns
        # (its lock), and a second of a loaded machine (the suite's other processes) may fit only one.
        assert claims >= 1 and double == 0, table[mode]
    assert "double claims, all rounds: 0" in out and "CPU ms per request" in out
