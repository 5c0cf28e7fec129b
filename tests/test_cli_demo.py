"""`orchestrator demo prospecting`: the stack on embedded defaults, an SMTP sink and two Larry processes
run the example prospects to the end, and everything stops behind them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import free_port

pytestmark = pytest.mark.integration


def test_demo_prospecting_runs_the_example_to_the_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "SMTP_", "ORCHESTRATOR_"))}
    env["ORCHESTRATOR_DATA_DIR"] = str(tmp_path / "var")
    done = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "demo", "prospecting",
                           "--no-keep", "--port", str(free_port())], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "summary: 3 completed, 0 failed, 0 cancelled of 3" in out
    sink = [line for line in out.splitlines() if "[smtp sink]" in line]
    assert len(sink) == 9 and sum("invite.ics" in line for line in sink) == 3
    assert "c***@bittersweet-farm.test" in out and "carol@bittersweet-farm.test" not in out  # the sink masks
    (copy,) = (tmp_path / "var" / "demo").glob("*/prospects.csv")
    with open(copy, newline="") as f:
        assert {row["status"] for row in csv.DictReader(f)} == {"followed_up"}
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == []  # the stack, its Redis and the Larry processes are gone
