"""The `orchestrator` command: run the stack or one of its processes, manage the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

import migrations
from cli.events import events
from cli.keys import keys
from cli.plans import plans
from cli.users import tokens, users
from orchestrator.bootstrap import ensure_admin
from orchestrator.db import Database
from orchestrator.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from orchestrator.encryption_keys import check_keys
from orchestrator.log_masking import install_log_masking
from orchestrator.settings import Settings

# A child that exits is restarted, unless it did so this many times within the window: then it is
# not a passing fault (Redis away for a moment) but a broken setup, and the stack stops.
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0


def _settings() -> Settings:
    return Settings.from_env()


def _prepare_database(settings: Settings) -> None:
    db = Database(settings)
    try:
        migrations.upgrade(settings.database_url, keyring=db.keyring)
        check_keys(db)  # keys that cannot read the stored data stop the stack before it starts
        if settings.admin_token:
            ensure_admin(db, settings.admin_user, settings.admin_token, settings.admin_password)
    finally:
        db.dispose()


def _child_env(settings: Settings, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = redis_url
    env["ORCHESTRATOR_DATA_DIR"] = str(settings.data_dir)
    env["DATABASE_URL"] = settings.database_url
    env["SECRET_KEY"] = settings.secret_key
    return env


def gunicorn_argv(host: str, port: int, workers: int, threads: int, app: str = "web.wsgi:app") -> list[str]:
    """How `orchestrator up` and `orchestrator web` run the web tier (the benches run it the same way)."""
    # gthread: each open WebSocket holds one thread, so threads bound the sockets per process.
    return [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"{host}:{port}",
        "--worker-class", "gthread",
        "--workers", str(workers),
        "--threads", str(threads),
        "--timeout", "120",
        "--graceful-timeout", "10",
        "--access-logfile", "-",
        "--logger-class", "web.gunicorn_logging.MaskingLogger",  # no token or email in its log lines
    ]


def celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.main", *args]


@click.group()
def main() -> None:
    """Agent Execution System control plane."""
    # Nothing configures logging for the commands: their warnings go to logging.lastResort, masked too.
    install_log_masking()


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION; also creates the admin named by ORCHESTRATOR_ADMIN_TOKEN."""
    settings = _settings()
    migrations.upgrade(settings.database_url, revision)
    if revision == "head":
        _prepare_database(settings)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True, help="'base' empties the database")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    migrations.downgrade(_settings().database_url, revision)
    click.echo(f"database at {revision}")


@db.command("check")
def db_check() -> None:
    """Fail when the models and the migrations disagree."""
    migrations.check(_settings().database_url)
    click.echo("models and migrations agree")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--web-workers", default=2, show_default=True, type=int)
@click.option("--threads", default=32, show_default=True, type=int)
@click.option("--concurrency", default=2, show_default=True, type=int, help="Celery worker processes")
def up(host: str, port: int, web_workers: int, threads: int, concurrency: int) -> None:
    """Run the whole stack: web, worker and scheduler (and Redis, when REDIS_URL is unset)."""
    settings = _settings()
    started_redis = False
    redis_url = settings.redis_url
    if not redis_url:
        redis_url, started_redis = ensure_embedded_redis(settings.data_dir)
        click.echo(f"embedded Redis at {redis_url}")
    _prepare_database(settings)
    env = _child_env(settings, redis_url)
    commands = {
        "web": gunicorn_argv(host, port, web_workers, threads),
        "worker": celery_argv("worker", "--loglevel", settings.log_level, "--concurrency", str(concurrency)),
        "beat": celery_argv("beat", "--loglevel", settings.log_level),
    }
    children = {name: subprocess.Popen(argv, env=env) for name, argv in commands.items()}
    click.echo(f"serving on http://{host}:{port}  (data in {settings.data_dir}; Ctrl-C stops)")

    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    restarts = _Restarts()
    try:
        while not stopping:
            code = _supervise(children, commands, env, restarts)
            stopping = stopping or code != 0
            time.sleep(0.5)
    finally:
        _terminate(children.values())
        if started_redis:
            stop_embedded_redis(settings.data_dir)
    sys.exit(code)


class _Restarts:
    """Recent restarts per process: a crash is restarted, a crash loop stops the stack."""

    def __init__(self, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW_SECONDS) -> None:
        self.limit, self.window = limit, window
        self._times: dict[str, list[float]] = {}

    def allow(self, name: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._times.get(name, []) if now - t < self.window] + [now]
        self._times[name] = recent
        return len(recent) <= self.limit


def _supervise(children: dict[str, subprocess.Popen], commands: dict[str, list[str]], env: dict[str, str],
               restarts: _Restarts) -> int:
    """Restart any child that exited (a worker dies when Redis goes away, a bug in kombu's reconnection);
    return a non-zero exit code when one keeps crashing, so that the stack stops and says why."""
    for name, proc in children.items():
        if proc.poll() is None:
            continue
        if not restarts.allow(name):
            click.echo(f"{name} exited with {proc.returncode} {restarts.limit} times within "
                       f"{restarts.window:.0f} s; stopping the stack", err=True)
            return proc.returncode or 1
        click.echo(f"{name} exited with {proc.returncode}; restarting it", err=True)
        children[name] = subprocess.Popen(commands[name], env=env)
    return 0


def _terminate(procs: object) -> None:
    procs = list(procs)  # type: ignore[call-overload]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _exec(argv: list[str], settings: Settings) -> None:
    redis_url = settings.redis_url or ensure_embedded_redis(settings.data_dir)[0]
    env = _child_env(settings, redis_url)
    os.execvpe(argv[0], argv, env)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--threads", default=32, show_default=True, type=int)
def web(host: str, port: int, workers: int, threads: int) -> None:
    """Run the web tier alone (gunicorn). Apply migrations first with `orchestrator db upgrade`."""
    _exec(gunicorn_argv(host, port, workers, threads), _settings())


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--queues", default="orchestrator", show_default=True)
def worker(concurrency: int, queues: str) -> None:
    """Run a Celery worker that applies events."""
    settings = _settings()
    _exec(celery_argv("worker", "--loglevel", settings.log_level, "--concurrency", str(concurrency),
                       "--queues", queues), settings)


@main.command()
def beat() -> None:
    """Run the Celery beat scheduler (timeouts, silent agents, stale streams). Run exactly one.

    It keeps its schedule in memory, so it needs no writable folder; /healthz says "beat": "late"
    when its sweeps stop.
    """
    settings = _settings()
    _exec(celery_argv("beat", "--loglevel", settings.log_level), settings)


@main.command()
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower(port: int, address: str) -> None:
    """Run Flower, the Celery monitoring UI, for ops."""
    _exec(celery_argv("flower", f"--port={port}", f"--address={address}"), _settings())


main.add_command(plans)
main.add_command(events)
main.add_command(keys)
main.add_command(users)
main.add_command(tokens)


if __name__ == "__main__":  # pragma: no cover
    main()
