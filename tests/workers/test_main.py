"""workers.main, the worker's entry point: importing it builds nothing; Celery's `-A workers.main` finds the app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: the test process has imported celery apps of its own.
PROBE = """
import os, sys
import workers.main as entry
data = os.environ["ORCHESTRATOR_DATA_DIR"]
assert not os.path.exists(data), "importing workers.main read the settings"
from celery.app.utils import find_app
app = find_app("workers.main")
assert app is entry.app is entry.celery
assert app.orchestrator_settings.redis_url == os.environ["REDIS_URL"]
assert os.path.exists(data)  # the settings were read on that first access: the secret key is kept there
"""


def test_import_builds_nothing_and_celery_finds_the_app(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DATABASE_URL")}
    # A Redis URL given means no embedded Redis is started; nothing connects to it here.
    env.update(ORCHESTRATOR_DATA_DIR=str(tmp_path / "data"), REDIS_URL="redis://127.0.0.1:9/0")
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_pool_process_connects_before_its_first_task(migrated, caplog) -> None:
    from celery import Celery

    from workers.runtime import runtime_for, warm_up

    app = Celery("warm", set_as_current=False)
    app.orchestrator_settings = migrated
    warm_up(app)
    rt = runtime_for(app)
    assert rt.db.engine.pool.checkedin() >= 1  # a database connection is open and waiting
    assert rt.redis.connection_pool._created_connections >= 1  # and one to Redis
    rt.db.dispose()

    down = Celery("down", set_as_current=False)
    down.orchestrator_settings = migrated.replace(redis_url="redis://127.0.0.1:1/0")
    warm_up(down)  # a service that is down is left to the first task, with a warning
    assert "worker warm-up: ConnectionError unavailable" in caplog.text
    runtime_for(down).db.dispose()
