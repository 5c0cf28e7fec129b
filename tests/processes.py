"""Child processes of tests: a free port for them, and waiting on a stack one started (`orchestrator up`)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, proc: subprocess.Popen, log_text: Callable[[], str], timeout: float = 90) -> None:
    """Return once `base_url/healthz` answers 200; fail with the end of the stack's log if `proc` exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{base_url}/healthz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not serving yet, or a worker still starting on a busy machine: ask again
        time.sleep(0.3)
    raise AssertionError(log_text()[-3000:])
