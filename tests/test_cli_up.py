"""`orchestrator up`: what the README's first command does on a fresh machine, and in a production-like
environment; how it stops (SIGTERM, SIGHUP), and a crash loop stopping the whole stack."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
import requests

from orchestrator.encryption import new_key
from orchestrator.liveness import last_beat
from tests.processes import free_port, wait_healthy


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group, state) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[2]), fields[0]


def _child(parent: int, word: str) -> int | None:
    """The pid of `parent`'s child one of whose arguments is `word`, or ends with it, if any."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat.parent.name)
        info = _stat(pid)
        try:
            args = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if info and info[0] == parent and info[2] != "Z" and any(a.endswith(word.encode()) for a in args):
            return pid
    return None


def _group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` still running (zombies waiting for a reaper do not count)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        info = _stat(int(stat.parent.name))
        if info and info[1] == pgid and info[2] != "Z":
            members.append(int(stat.parent.name))
    return members


class Up:
    """`orchestrator up` in a child process of its own session, its output in a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "up.log"
        self.env = env
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(self.port),
                                          "--web-workers", "1", "--threads", "4", "--concurrency", "1"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                         start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self) -> None:
        wait_healthy(f"http://127.0.0.1:{self.port}", self.proc, self.text)

    def children_group(self) -> int:
        web = _child(self.proc.pid, "gunicorn")
        assert web is not None, self.text()[-3000:]
        info = _stat(web)
        assert info is not None and info[1] != os.getpgid(self.proc.pid)  # not up's own group
        return info[1]

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("up did not stop:\n" + self.text()[-3000:]) from None

    def kill_everything(self) -> None:
        """The test's own safety net: nothing of this stack outlives the test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _embedded_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                                            "ENCRYPTION_KEYS", "ORCHESTRATOR_ADMIN_TOKEN",
                                                            "ORCHESTRATOR_ADMIN_PASSWORD")}
    env["ORCHESTRATOR_DATA_DIR"] = str(data)  # short: the embedded Redis's unix socket lives there
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(f"/tmp/orch-up-{os.getpid()}-{secrets.token_hex(2)}")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def test_up_serves_healthz_restarts_a_dead_worker_then_stops_cleanly(tmp_path: Path, data_dir: Path) -> None:
    stack = Up(tmp_path, _embedded_env(data_dir) | {"ORCHESTRATOR_ADMIN_TOKEN": "up-test-token"})
    try:
        stack.wait_healthy()
        assert (data_dir / "orchestrator.db").exists()
        out = stack.text()
        assert f"dashboard: http://127.0.0.1:{stack.port}/" in out and "docs: " in out
        # An admin with a token but no password cannot log in to the dashboard: up says how to make one.
        assert "orchestrator users create admin --admin" in out
        assert "up-test-token" not in out
        group = stack.children_group()
        assert _child(stack.proc.pid, "redis.sock") in _group_members(group)  # Redis (its process title) too
        # A worker that dies (as one does when Redis goes away) is restarted, not the end of the stack.
        first = _child(stack.proc.pid, "worker")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _child(stack.proc.pid, "worker") in (None, first):
            time.sleep(0.2)
        assert _child(stack.proc.pid, "worker") not in (None, first), stack.text()[-3000:]
        assert stack.proc.poll() is None and "worker exited with -9; restarting it" in stack.text()
        stack.proc.send_signal(signal.SIGTERM)
        code = stack.wait_exit()
    finally:
        stack.kill_everything()
    assert code == 0, stack.text()[-3000:]
    assert "SIGTERM: stopping the stack" in stack.text()
    assert _group_members(group) == [], stack.text()[-3000:]  # the embedded Redis too
    assert not (data_dir / "redis.pid").exists()


def test_sighup_stops_every_child_including_the_embedded_redis(tmp_path: Path, data_dir: Path) -> None:
    """Closing the terminal used to leave gunicorn and Redis running: /healthz said ok and events were
    accepted that nothing would ever apply."""
    stack = Up(tmp_path, _embedded_env(data_dir))
    try:
        stack.wait_healthy()
        group = stack.children_group()
        assert len(_group_members(group)) >= 5  # redis, gunicorn and its worker, celery worker, beat
        stack.proc.send_signal(signal.SIGHUP)
        code = stack.wait_exit()
    finally:
        stack.kill_everything()
    assert code == 0, stack.text()[-3000:]
    assert _group_members(group) == [], stack.text()[-3000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{stack.port}/healthz", timeout=5)
    with pytest.raises(redis_lib.ConnectionError):
        redis_lib.Redis(unix_socket_path=str(data_dir / "redis.sock"), socket_connect_timeout=2).ping()


def test_a_crash_loop_stops_the_whole_stack_with_an_error(tmp_path: Path, data_dir: Path) -> None:
    stack = Up(tmp_path, _embedded_env(data_dir))
    try:
        stack.wait_healthy()
        group = stack.children_group()
        killed: set[int] = set()
        deadline = time.monotonic() + 50  # the six exits must fall within the 60 s window
        while stack.proc.poll() is None and time.monotonic() < deadline:
            beat = _child(stack.proc.pid, "beat")
            if beat is not None and beat not in killed:
                os.kill(beat, signal.SIGKILL)
                killed.add(beat)
            time.sleep(0.05)
        code = stack.wait_exit()
    finally:
        stack.kill_everything()
    assert len(killed) == 6, stack.text()[-3000:]
    assert code != 0 and "a crash loop; stopping the stack" in stack.text()
    assert stack.text().count("beat exited with -9; restarting it") == 5
    assert _group_members(group) == [], stack.text()[-3000:]


def test_a_production_like_environment_starts_sweeps_and_stops(tmp_path: Path, data_dir: Path, redis_url: str,
                                                               scratch_url: str) -> None:
    """SECRET_KEY, ENCRYPTION_KEYS, DATABASE_URL and REDIS_URL given, and a data folder that does not exist:
    up creates the folder, beat keeps running and its sweeps reach a worker."""
    prefix = f"orchup:{secrets.token_hex(3)}:"
    env = _embedded_env(data_dir / "not" / "yet") | {
        "SECRET_KEY": "up-test-secret-key-long-enough-for-hs256", "ENCRYPTION_KEYS": new_key(),
        "DATABASE_URL": scratch_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix,
        "SWEEP_INTERVAL_SECONDS": "1", "ORCHESTRATOR_ADMIN_TOKEN": "up-prod-token",
        "ORCHESTRATOR_ADMIN_PASSWORD": "a long enough password"}
    r = redis_lib.Redis.from_url(redis_url)
    stack = Up(tmp_path, env)
    try:
        stack.wait_healthy()
        assert (data_dir / "not" / "yet").is_dir()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and last_beat(r, prefix) is None:
            time.sleep(0.3)
        assert last_beat(r, prefix) is not None, stack.text()[-3000:]
        assert "restarting it" not in stack.text() and "embedded Redis" not in stack.text()
        assert "log in as admin with the password in ORCHESTRATOR_ADMIN_PASSWORD" in stack.text()
        group = stack.children_group()
        stack.proc.send_signal(signal.SIGINT)
        code = stack.wait_exit()
    finally:
        stack.kill_everything()
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)
        r.close()
    assert code == 0, stack.text()[-3000:]
    assert "SIGINT: stopping the stack" in stack.text() and _group_members(group) == []
