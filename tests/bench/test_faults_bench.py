"""bench/faults.py still runs: one small round per fault, on PostgreSQL and a Redis it starts and kills.

What is checked is the table: every fault has its row, and none of them lost, doubled or stranded
anything (the fault tests in tests/workers prove each recovery; this keeps the harness working).
"""

from __future__ import annotations

import re


def test_the_faults_bench_prints_a_clean_row_per_fault(needs_postgres, run_bench) -> None:
    out = run_bench("faults.py", "--executions", "2", "--subtasks", "6", "--agents", "2", "--work-ms", "20",
                    "--redis-down", "2", "--stall", "20", "--deadline", "60", "--shards", "2", services=False)
    out = out[out.index("bench/faults.py "):]  # the table, after the rounds' progress lines
    rows = {m[0]: m[1:] for m in re.findall(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/(\d+)\s+([\d.]+|never)",
                                            out, re.MULTILINE)}
    assert set(rows) == {"worker", "web", "redis", "postgres"}, out
    for fault, (accepted, lost, twice, stranded_sub, stranded_ex, recovery) in rows.items():
        assert int(accepted) > 0 and (lost, twice, stranded_sub, stranded_ex) == ("0", "0", "0", "0"), (fault, out)
        assert recovery != "never", (fault, out)
