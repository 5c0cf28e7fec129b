"""`orchestrator beat` as production runs it: SECRET_KEY and ENCRYPTION_KEYS given, no data folder, a real Redis.

Beat used to die at start there (its schedule file's folder was never created); it now keeps no file.
"""

from __future__ import annotations

import json
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

import migrations
from orchestrator.liveness import beat_key
from orchestrator.settings import Settings
from tests.conftest import WorkerProcess, settings_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def beat_settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    """Settings of a production-like stack: a data folder that does not exist, a fresh key prefix."""
    settings = Settings.from_env({
        "ORCHESTRATOR_DATA_DIR": str(tmp_path / "no-such-folder"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'beat.db'}",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"orchbeat:{secrets.token_hex(3)}:",
        "SECRET_KEY": "beat-test-secret-key-long-enough-for-hs256",
        "ENCRYPTION_KEYS": "Aek7f1l7u9sV6PZl1x7n2oW7bB4bSmrWm8VqZfU2rQ8=",
        "SWEEP_INTERVAL_SECONDS": "1",
    })
    yield settings
    r = redis_lib.Redis.from_url(redis_url)
    for key in r.scan_iter(f"{settings.redis_key_prefix}*"):
        r.delete(key)
    r.close()


def _start_beat(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "beat"], env=settings_env(settings),
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _queued_task_names(r: redis_lib.Redis, queue_key: str) -> list[str]:
    return [json.loads(raw)["headers"]["task"] for raw in r.lrange(queue_key, 0, -1)]


def test_beat_starts_without_a_data_folder_and_sends_its_sweep(beat_settings: Settings, tmp_path: Path) -> None:
    r = redis_lib.Redis.from_url(beat_settings.redis_url or "")
    queue_key = f"{beat_settings.redis_key_prefix}celery:orchestrator"  # no worker reads it in this test
    log_path = tmp_path / "beat.log"
    proc = _start_beat(beat_settings, log_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and not r.llen(queue_key):
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert "workers.tasks.rescue_stalled_work" in _queued_task_names(r, queue_key), log_path.read_text()[-3000:]
    finally:
        _stop(proc)
        r.close()
    # It wrote nothing locally: no schedule file, not even the folder.
    assert not beat_settings.data_dir.exists()


@pytest.mark.integration
def test_beat_and_a_worker_keep_readyz_beat_ok(beat_settings: Settings, tmp_path: Path) -> None:
    from web.app import create_app

    migrations.upgrade(beat_settings.database_url)
    r = redis_lib.Redis.from_url(beat_settings.redis_url or "")
    worker = WorkerProcess(beat_settings, tmp_path / "worker.log", concurrency=1).start()
    proc = _start_beat(beat_settings, tmp_path / "beat.log")
    app = create_app(beat_settings)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and r.get(beat_key(beat_settings.redis_key_prefix)) is None:
            time.sleep(0.2)
        body = app.test_client().get("/readyz").get_json()
        assert body["checks"]["beat"]["status"] == "ok" and body["checks"]["worker"]["status"] == "ok", (
            body, (tmp_path / "worker.log").read_text()[-3000:])
    finally:
        _stop(proc)
        worker.stop()
        app.extensions["db"].dispose()
        r.close()
