"""`orchestrator up` on embedded defaults: what the README's first command does on a fresh machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_serves_healthz_then_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env["ORCHESTRATOR_DATA_DIR"] = str(Path(f"/tmp/orch-up-{os.getpid()}"))
    env["ORCHESTRATOR_ADMIN_TOKEN"] = "up-test-token"
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - the child writes to it until the end
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                resp = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                status = resp.status_code
                if status == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not serving yet, or a worker still starting on a busy machine: ask again
            time.sleep(0.3)
        assert status == 200, (tmp_path / "up.log").read_text()[-3000:]
        # Beat's first sweep comes one interval after start: "unknown" until then, which is not degraded.
        assert resp.json() == {"status": "ok", "database": "ok", "redis": "ok", "dead_letters": 0,
                               "beat": "unknown"}
        assert (Path(env["ORCHESTRATOR_DATA_DIR"]) / "orchestrator.db").exists()
        # A worker that dies (as one does when Redis goes away) is restarted, not the end of the stack.
        first = _child(proc.pid, "worker")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _child(proc.pid, "worker") in (None, first):
            time.sleep(0.2)
        assert _child(proc.pid, "worker") not in (None, first), (tmp_path / "up.log").read_text()[-3000:]
        assert proc.poll() is None and "worker exited with -9; restarting it" in (tmp_path / "up.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    # The embedded Redis it started is stopped with it.
    assert not (Path(env["ORCHESTRATOR_DATA_DIR"]) / "redis.pid").exists()


def _child(parent: int, word: str) -> int | None:
    """The pid of `parent`'s child whose command line holds `word`, if any."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and word.encode() in cmdline:
            return int(stat.parent.name)
    return None
