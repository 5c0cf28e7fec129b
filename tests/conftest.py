"""Fixtures shared by every test.

The suite runs against whatever DATABASE_URL and REDIS_URL say (PostgreSQL and the machine's Redis
in CI's second run); when they are unset it uses a SQLite file and the embedded Redis, which is
what the README's test command does on a fresh machine.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import delete

import migrations
from orchestrator.db import Database
from orchestrator.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from orchestrator.models import Base
from orchestrator.settings import Settings


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
        "LOG_LEVEL": "INFO",
    }
    return Settings.from_env(env)


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
    with db.unit_of_work() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))


@pytest.fixture
def db(database: Database) -> Iterator[Database]:
    """The migrated test database, emptied after each test."""
    yield database
    _empty_tables(database)


@pytest.fixture
def redis(base_settings: Settings) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(base_settings.redis_url)
    yield client
    for key in client.scan_iter(f"{base_settings.redis_key_prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def app(migrated: Settings, db: Database, redis: redis_lib.Redis):
    from web.app import create_app

    flask_app = create_app(migrated)
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()
