"""Fixtures shared by every test.

The suite runs against whatever DATABASE_URL and REDIS_URL say (PostgreSQL and the machine's Redis
in CI's second run); when they are unset it uses a SQLite file and the embedded Redis, which is
what the README's test command does on a fresh machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, delete, make_url, text
from sqlalchemy.exc import OperationalError

import migrations
from orchestrator.db import Database
from orchestrator.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from orchestrator.models import Base
from orchestrator.settings import Settings

_METRICS_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # Metrics in multiprocess mode, as the `orchestrator` command runs them: this process and the
    # workers it starts (settings_env passes the variable on) write to one folder, which /metrics
    # adds up. It must be set before prometheus_client is first imported.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        config.stash[_METRICS_DIR] = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="orch-metrics-")


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    if _METRICS_DIR in config.stash:
        shutil.rmtree(config.stash[_METRICS_DIR], ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orchestrator")


@pytest.fixture(scope="session")
def redis_url(session_dir: Path) -> Iterator[str]:
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    # A short path: unix socket paths are limited to about 100 characters.
    data = Path(f"/tmp/orch-test-{os.getpid()}")
    url, _ = ensure_embedded_redis(data)
    yield url
    stop_embedded_redis(data)


@pytest.fixture(scope="session")
def base_settings(session_dir: Path, redis_url: str) -> Settings:
    env = {
        "ORCHESTRATOR_DATA_DIR": str(session_dir / "data"),
        "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{session_dir / 'test.db'}",
        "REDIS_URL": redis_url,
        # Every run gets its own key space, so runs and the machine's other users never mix.
        "REDIS_KEY_PREFIX": f"orchtest:{secrets.token_hex(4)}:",
        "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256",
        "INGEST_REPLY_WAIT_MS": os.environ.get("INGEST_REPLY_WAIT_MS", "3000"),
        "INGEST_LEASE_SECONDS": "3",
        "SWEEP_INTERVAL_SECONDS": "2",
        # Tests poll and log in far faster than agents and people do; the limits' own tests set
        # small ones (tests/web/test_rate_limits.py, tests/web/test_login_throttle.py).
        "AGENT_RATE_LIMIT": "10000/minute",
        "LOGIN_RATE_LIMIT_PER_USERNAME": "1000/minute",
        "LOGIN_RATE_LIMIT_PER_ADDRESS": "1000/minute",
        "LOG_LEVEL": "INFO",
    }
    return Settings.from_env(env)


@pytest.fixture
def scratch_url(base_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """An empty database of the same kind as the suite's."""
    url = make_url(base_settings.database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'scratch.db'}"
        return
    name = f"{url.database}_scratch_{secrets.token_hex(3)}"
    admin = create_engine(url.set(drivername="postgresql+psycopg", database="postgres"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def migrated(base_settings: Settings) -> Settings:
    migrations.upgrade(base_settings.database_url)
    return base_settings


@pytest.fixture(scope="session")
def database(migrated: Settings) -> Iterator[Database]:
    db = Database(migrated)
    yield db
    db.dispose()


def _empty_tables(db: Database) -> None:
    # The session's worker may still be applying a test's last events; PostgreSQL then picks one of
    # the two transactions to abort as a deadlock, and the wipe simply goes again.
    for attempt in range(5):
        try:
            with db.unit_of_work() as session:
                for table in reversed(Base.metadata.sorted_tables):
                    session.execute(delete(table))
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2)


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    """The migrated test database, emptied after each test."""
    yield database
    _empty_tables(database)


@pytest.fixture
def redis(base_settings: Settings) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(base_settings.redis_url)
    yield client
    broker_keys = f"{base_settings.redis_key_prefix}celery:".encode()
    for key in client.scan_iter(f"{base_settings.redis_key_prefix}*"):
        if not key.startswith(broker_keys):  # the running worker's queue bindings live there
            client.delete(key)
    client.close()


@pytest.fixture(autouse=True)
def _signing_test_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every app's test client signs agents' requests, as AgentClient does (tests/signing.py)."""
    from flask import Flask

    from tests.signing import SigningClient

    monkeypatch.setattr(Flask, "test_client_class", SigningClient)


@pytest.fixture
def app(request: pytest.FixtureRequest, migrated: Settings, db: Database, redis: redis_lib.Redis):
    """The app on the suite's settings, changed by the test module's `APP_SETTINGS` when it has one."""
    flask_app = make_test_app(migrated.replace(**getattr(request.module, "APP_SETTINGS", {})))
    yield flask_app
    flask_app.extensions["db"].dispose()


def make_test_app(settings: Settings):
    """A Flask app in testing mode: what another web process on the same settings would be."""
    from web.app import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process (worker, server) use `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "INGEST_"))}
    env.update({
        "ORCHESTRATOR_DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "SECRET_KEY": settings.secret_key,
        "INGEST_SHARDS": str(settings.ingest_shards),
        "INGEST_BATCH_SIZE": str(settings.ingest_batch_size),
        "INGEST_LEASE_SECONDS": str(settings.ingest_lease_seconds),
        "SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
        "AGENT_RATE_LIMIT": settings.agent_rate_limit,
        "LOGIN_RATE_LIMIT_PER_USERNAME": settings.login_rate_limit_per_username,
        "LOGIN_RATE_LIMIT_PER_ADDRESS": settings.login_rate_limit_per_address,
        "LOG_LEVEL": "INFO",
        "NOTIFY_WEBHOOK_URL": settings.notify_webhook_url or "",
        "NOTIFY_WEBHOOK_SECRET": settings.notify_webhook_secret,
    })
    env.pop("ENCRYPTION_KEYS", None)
    if settings.encryption_key_file is None:  # keys given in the environment, not kept in the data dir
        env["ENCRYPTION_KEYS"] = ",".join(settings.encryption_keys)
    return env


class WorkerProcess:
    """A real Celery worker in a child process, as `orchestrator worker` runs it."""

    def __init__(self, settings: Settings, log_path: Path, concurrency: int = 2) -> None:
        self.settings = settings
        self.log_path = log_path
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.main", "worker", "--loglevel", "INFO",
             "--concurrency", str(self.concurrency), "--queues", "orchestrator", "--without-gossip",
             "--without-mingle", "--hostname", f"test-{secrets.token_hex(3)}@%h"],
            env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("worker did not start:\n" + self.log_path.read_text()[-3000:])

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool children), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def worker(migrated: Settings, session_dir: Path) -> Iterator[WorkerProcess]:
    """One Celery worker for the integration tests of the session."""
    proc = WorkerProcess(migrated, session_dir / "worker.log").start()
    yield proc
    proc.stop()


class LiveServer:
    def __init__(self, app) -> None:
        from werkzeug.serving import make_server

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="session")
def live_server(migrated: Settings) -> Iterator[LiveServer]:
    """The Flask app served over real HTTP on a free port (werkzeug, threaded)."""
    from web.app import create_app

    server = LiveServer(create_app(migrated))
    yield server
    server.stop()
