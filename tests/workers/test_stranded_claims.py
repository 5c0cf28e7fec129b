"""A lost poll answer never strands work, end to end: agents (`AgentClient.run`) work through
executions on gunicorn with the real worker while the faults seen under load strike, and every
execution still finishes, no attempt spent and no subtask run twice.

The web tier reaches Redis through a proxy the test can take down (connections closed and
refused) or freeze (bytes held: a web process stuck in its after-commit write); the worker and the
test's sweeper ("beat", with a 3 s CLAIM_ACK_SECONDS) use Redis directly.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis as redis_lib
import requests
from orchestrator_sdk.client import AgentClient, SignedAuth, Work
from sqlalchemy import func, select, text

from orchestrator.credentials import issue_credential
from orchestrator.db import Database, make_engine
from orchestrator.events.drain import ShardDrainer, backlog_shards
from orchestrator.executions import create_execution
from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask, utcnow
from orchestrator.settings import Settings
from orchestrator.sweeper import release_overdue_work
from tests.conftest import settings_env
from tests.factories import make_agent, make_plan, make_user
from tests.workers.helpers import hold_database_write_lock

pytestmark = pytest.mark.integration

FAULT_SECONDS = 10
CLAIM_ACK_SECONDS = 3
FINISH_WITHIN = 90


class RedisProxy:
    """TCP in front of Redis: `up`, `down` (every connection closed, new ones closed at once),
    `frozen` (connections stay open, nothing passes) or `frozen-writes` (the same, for what carries a
    write of the after-commit step, HSET: reads before it, the token's epoch and the poll's own, pass)."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.unix = parts.scheme == "unix"
        self.target: str | tuple[str, int] = parts.path if self.unix else (parts.hostname or "", parts.port or 6379)
        self.db = parse_qs(parts.query).get("db", ["0"])[0] if self.unix else (parts.path.strip("/") or "0")
        self.mode = "up"
        self.open: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.listener.getsockname()[1]}/{self.db}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "down":
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX if self.unix else socket.AF_INET)
            upstream.connect(self.target)
            self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.mode == "frozen" or (self.mode == "frozen-writes" and b"HSET" in data):
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            for s in self.open:
                s.close()
            self.open.clear()

    def close(self) -> None:
        self.set("down")
        self.listener.close()


class Gunicorn:
    """`orchestrator web` as production runs it (gthread), one worker, in a child process."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "web.wsgi:app", "--bind", f"127.0.0.1:{port}",
                 "--worker-class", "gthread", "--workers", "1", "--threads", "32", "--timeout", "120"],
                env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_up()

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/healthz", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("gunicorn did not come up")

    def kill_worker(self) -> None:
        """SIGKILL the worker process (not the arbiter, which starts a new one), as the OOM killer would."""
        (child,) = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        os.kill(int(child), signal.SIGKILL)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(migrated: Settings, session_dir: Path, worker) -> Iterator[tuple[Gunicorn, RedisProxy]]:
    proxy = RedisProxy(migrated.redis_url or "")
    server = Gunicorn(migrated.replace(redis_url=proxy.url), session_dir / "gunicorn.log")
    yield server, proxy
    server.stop()
    proxy.close()


@pytest.fixture(autouse=True)
def proxy_up(stack) -> Iterator[None]:
    yield
    stack[1].set("up")


def scene(db: Database, n_executions: int, n_subtasks: int, n_agents: int) -> tuple[list[str], dict[str, SignedAuth]]:
    """Queued executions of chains of subtasks, and agents with their keys and signing secrets."""
    stem = secrets.token_hex(3)
    with db.unit_of_work() as s:
        owner = make_user(s)
        keys = {}
        for i in range(n_agents):
            agent = make_agent(s, f"agent_{stem}_{i}", capabilities=[{"action": "send_email", "params": []}])
            keys[agent.id] = SignedAuth(issue_credential(s, agent_id=agent.id)[1], agent.signing_secret)
        ids = []
        for _ in range(n_executions):
            plan = make_plan(s, owner, n_subtasks=n_subtasks)
            ids.append(create_execution(s, owner.id, plan.id, utcnow()).id)
            s.get(Execution, ids[-1]).status = "QUEUED"
    return ids, keys


class Crew:
    """Agents running `AgentClient.run`, recording each subtask attempt their handlers ran."""

    def __init__(self, base_url: str, keys: dict[str, SignedAuth], timeout: float) -> None:
        self.ran: list[tuple] = []
        self.redelivered = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(AgentClient(
            base_url, a, k.api_key, signing_secret=k.signing_secret, timeout=timeout),))
                        for a, k in keys.items()]

    def _run(self, agent: AgentClient) -> None:
        def handler(work: Work) -> dict[str, str]:
            self.ran.append(work.key)
            self.redelivered += work.redelivered
            return {"by": agent.agent_id}

        agent.run(handler, stop=self.stop, idle_sleep=0.05)

    def __enter__(self) -> Crew:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@contextmanager
def beat(db: Database, r: redis_lib.Redis, settings: Settings) -> Iterator[None]:
    """Celery beat's safety net (`rescue_stalled_work`), every half second, with a short acknowledgement
    window: shards a lost trigger left with a backlog are drained, overdue work is released."""
    stop = threading.Event()
    settings = settings.replace(claim_ack_seconds=CLAIM_ACK_SECONDS)
    drainer = ShardDrainer(db, r, settings.redis_key_prefix, batch_size=settings.ingest_batch_size, lease_seconds=5)

    def sweep() -> None:
        while not stop.wait(0.5):
            try:
                for shard in backlog_shards(r, settings.redis_key_prefix, settings.ingest_shards):
                    drainer.drain(shard)
                release_overdue_work(db, r, settings, utcnow())
            except Exception as exc:  # noqa: BLE001 - a sweep blocked by the test's own lock tries again
                print(f"sweep failed: {exc!r}")

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def progress(db: Database, ids: list[str]) -> tuple[int, list[tuple]]:
    """Completed subtasks, and the RUNNING ones (holder, acknowledged?)."""
    with db.reading() as s:
        subs = s.scalars(select(ExecutionSubtask).where(ExecutionSubtask.execution_id.in_(ids))).all()
    return (sum(1 for x in subs if x.status == "COMPLETE"),
            [(x.id, x.agent_id, x.acknowledged_at is not None) for x in subs if x.status == "RUNNING"])


def wait_until(db: Database, ids: list[str], done: int, timeout: float = FINISH_WITHIN) -> float:
    """Wait for `done` completed subtasks; the time they were reached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        completed, running = progress(db, ids)
        if completed >= done:
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"{completed}/{done} subtasks complete; still RUNNING: {running}")


def assert_clean_finish(db: Database, crew: Crew, ids: list[str], n: int) -> None:
    """Every execution COMPLETED, every subtask run once, at its first attempt."""
    with db.reading() as s:
        assert set(s.scalars(select(Execution.status).where(Execution.id.in_(ids)))) == {"COMPLETED"}
        attempts = s.scalars(select(ExecutionSubtask.attempt).where(ExecutionSubtask.execution_id.in_(ids)))
        assert set(attempts) == {1}
    runs = Counter((ex, task) for ex, task, _ in crew.ran)
    assert len(runs) == n and set(runs.values()) == {1}, runs.most_common(3)


def report(capsys, db: Database, crew: Crew, ids: list[str], fault: str, seconds: float) -> None:
    """Print the recovery time, with how many claims were answered again and how many expired."""
    with db.reading() as s:
        expired = len(s.scalars(select(ExecutionEvent.id).where(ExecutionEvent.execution_id.in_(ids),
                                                                ExecutionEvent.event_type == "claim_expired")).all())
    with capsys.disabled():
        print(f"\n[recovery] {fault}: every execution finished {seconds:.1f} s after the fault ended "
              f"({crew.redelivered} subtasks run from a redelivered answer, {expired} claims expired; "
              f"CLAIM_ACK_SECONDS {CLAIM_ACK_SECONDS})")


def test_redis_down_for_ten_seconds(db, redis, migrated, stack, capsys) -> None:
    server, proxy = stack
    ids, keys = scene(db, n_executions=4, n_subtasks=8, n_agents=4)
    with beat(db, redis, migrated), Crew(server.url, keys, timeout=5) as crew:
        wait_until(db, ids, 4)
        proxy.set("down")
        time.sleep(FAULT_SECONDS)
        proxy.set("up")
        ended = time.monotonic()
        finished = wait_until(db, ids, 32)
    assert_clean_finish(db, crew, ids, 32)
    report(capsys, db, crew, ids, f"Redis down {FAULT_SECONDS} s", finished - ended)


def lock_agents_table(settings: Settings, execution_id: str) -> tuple[Any, Any]:
    """Make every poll wait after it has claimed: it ends by writing the agent's heartbeat. On
    PostgreSQL a table lock on `agents` (plain reads still pass); SQLite has only its write lock,
    which a poll waits for before it claims. Roll the connection back to let go."""
    if settings.is_sqlite:
        return hold_database_write_lock(settings, execution_id)
    engine = make_engine(settings.database_url)
    conn = engine.connect()
    conn.execute(text("LOCK TABLE agents IN EXCLUSIVE MODE"))
    return engine, conn


def test_table_lock_for_ten_seconds_while_polls_time_out(db, redis, migrated, stack, capsys) -> None:
    """The agents start polling while the lock is held: every poll times out on the client (2 s) and
    is sent again, and the claims commit once the lock goes (on PostgreSQL one per poll, since each
    skips the rows the others have locked)."""
    server, _ = stack
    ids, keys = scene(db, n_executions=4, n_subtasks=8, n_agents=4)
    engine, conn = lock_agents_table(migrated, ids[0])
    with beat(db, redis, migrated), Crew(server.url, keys, timeout=2) as crew:
        time.sleep(FAULT_SECONDS)
        conn.rollback()
        conn.close()
        engine.dispose()
        ended = time.monotonic()
        finished = wait_until(db, ids, 32)
    assert_clean_finish(db, crew, ids, 32)
    report(capsys, db, crew, ids, f"lock held {FAULT_SECONDS} s, client timeout 2 s", finished - ended)


def test_web_worker_killed_after_claims_committed(db, redis, migrated, stack, capsys) -> None:
    """Two polls commit their claims and hang in the after-commit Redis write; the gunicorn worker is
    SIGKILLed. One agent comes back (its claim is answered again), the other never does (its claim
    expires and another agent takes it, still at attempt 1)."""
    server, proxy = stack
    ids, keys = scene(db, n_executions=2, n_subtasks=4, n_agents=3)
    returning, gone, helper = keys
    proxy.set("frozen-writes")
    lost = [threading.Thread(target=_poll_once, args=(server.url, agent, keys[agent])) for agent in (returning, gone)]
    for t in lost:
        t.start()
    _wait_for_claims(db, ids, 2)
    server.kill_worker()
    ended = time.monotonic()
    proxy.set("up")
    for t in lost:
        t.join(30)
    with Crew(server.url, {a: keys[a] for a in (returning, helper)}, timeout=5) as crew:
        # The sweeper starts once the returning agent has its claim back: on a busy machine its first
        # poll may come later than CLAIM_ACK_SECONDS, and the claim would expire first.
        _wait_for_acknowledged(db, ids, returning)
        with beat(db, redis, migrated):
            finished = wait_until(db, ids, 8)
    assert_clean_finish(db, crew, ids, 8)
    with db.reading() as s:
        expired = s.scalars(select(ExecutionEvent.agent_id).where(ExecutionEvent.execution_id.in_(ids),
                                                                   ExecutionEvent.event_type == "claim_expired"))
        assert list(expired) == [gone]
    report(capsys, db, crew, ids, "gunicorn worker SIGKILLed after 2 claims committed", finished - ended)


def _poll_once(base_url: str, agent_id: str, auth: SignedAuth) -> None:
    with suppress(requests.RequestException):  # the answer is lost with the process: that is the point
        requests.get(f"{base_url}/api/agents/{agent_id}/work", auth=auth, timeout=30)


def _wait_for_acknowledged(db: Database, ids: list[str], agent_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with db.reading() as s:
            if s.scalar(select(func.count()).select_from(ExecutionSubtask).where(
                    ExecutionSubtask.execution_id.in_(ids), ExecutionSubtask.agent_id == agent_id,
                    ExecutionSubtask.acknowledged_at.is_not(None))):
                return
        assert time.monotonic() < deadline, f"{agent_id} did not report on its claim"
        time.sleep(0.05)


def _wait_for_claims(db: Database, ids: list[str], n: int) -> None:
    deadline = time.monotonic() + 20
    while len(progress(db, ids)[1]) < n:
        assert time.monotonic() < deadline, "the polls did not claim"
        time.sleep(0.05)
