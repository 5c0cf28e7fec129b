"""The live-stream benches still run end to end: a few seconds each, with tiny numbers.

What is checked is that each bench measures what it says: every probe reaches every socket, every
row of the table is printed.
"""

from __future__ import annotations

import re


def test_stream_latency_bench_times_every_probe_on_every_socket(needs_stack, run_bench) -> None:
    out = run_bench("stream_latency.py", "--sockets", "3", "--load", "100", "--batch", "10", "--probes", "5",
                    "--warmup", "2", "--repeat", "1", "--gap", "0.02", "--connections", "2")
    assert re.findall(r"delivered (\d+)/(\d+)", out) == [("15", "15"), ("15", "15")]
    for hop in ("POST -> socket", "POST -> accepted", "accepted -> published", "published -> socket",
                "of which commit-order hold", "load: accepted -> published"):
        assert re.search(rf"{hop}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), (hop, out)
    achieved = re.search(r"achieved (\d+)/s", out)
    assert achieved is not None and int(achieved.group(1)) > 0, out
    assert "sockets closed by the server 0" in out


def test_relay_fanout_bench_pushes_every_message_to_every_socket(needs_redis, run_bench) -> None:
    out = run_bench("relay_fanout.py", "--sockets", "3", "--messages", "40", "--burst", "1", "--burst", "10",
                    "--rounds", "20", services=False)
    rows = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+$", out, re.MULTILINE)
    assert rows == ["1", "10"], out
