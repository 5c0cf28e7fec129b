"""The `orchestrator` command: run the stack or one of its processes, manage the database."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

import migrations
from cli.agents import agents
from cli.archive import archive
from cli.demo import demo
from cli.events import events
from cli.keys import keys
from cli.plans import plans
from cli.supervise import Children, StopRequest, say
from cli.users import tokens, users
from orchestrator.bootstrap import admin_can_log_in, ensure_admin
from orchestrator.db import Database
from orchestrator.embedded_redis import ensure_embedded_redis
from orchestrator.encryption_keys import check_keys
from orchestrator.log_masking import install_log_masking
from orchestrator.metrics import metrics_env
from orchestrator.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _prepare_database(settings: Settings) -> bool:
    """Migrate, check the keys, create the admin the environment names; whether an admin can log in."""
    db = Database(settings)
    try:
        migrations.upgrade(settings.database_url, keyring=db.keyring)
        check_keys(db)  # keys that cannot read the stored data stop the stack before it starts
        if settings.admin_token:
            ensure_admin(db, settings.admin_user, settings.admin_token, settings.admin_password)
        return admin_can_log_in(db)
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
    """Run the whole stack: web, worker and scheduler (and Redis, when REDIS_URL is unset).

    \b
    It creates its data folder (ORCHESTRATOR_DATA_DIR), migrates the database,
    and runs its children in one process group of their own:
    - SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closing) stops them
      all, the embedded Redis last, and exits 0 once each stopped cleanly;
      1 if one failed while stopping or had to be killed after 15 s;
    - a child that exits on its own is restarted, up to 5 times within 60 s;
      its 6th exit within 60 s is a crash loop: every other child is
      stopped and `up` exits non-zero (the child's exit code, or 1);
    - should `up` itself be killed, its children get SIGTERM.
    """
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stop = StopRequest()
    children = Children()
    code = 0
    try:
        redis_url = settings.redis_url
        if not redis_url:
            redis_url, _ = ensure_embedded_redis(
                settings.data_dir, start=lambda argv: children.start("redis", argv, dict(os.environ)))
            click.echo(f"embedded Redis at {redis_url}")
        can_log_in = _prepare_database(settings)
        # Every process of the host writes its metrics to one folder; a scrape of the web adds them up.
        env = metrics_env(_child_env(settings, redis_url), settings.data_dir)
        for name, argv in _stack_commands(settings, host, port, web_workers, threads, concurrency).items():
            children.start(name, argv, env)
        _next_steps(settings, f"http://{host}:{port}", can_log_in)
        while not stop and code == 0:
            code = children.check()
            time.sleep(0.2)
        if stop.signum is not None:
            say(f"{signal.Signals(stop.signum).name}: stopping the stack")
    finally:
        clean = children.stop(last="redis")
        if "redis" in children.procs:
            (settings.data_dir / "redis.pid").unlink(missing_ok=True)
    sys.exit(code or (0 if clean else 1))


def _stack_commands(settings: Settings, host: str, port: int, web_workers: int, threads: int,
                    concurrency: int) -> dict[str, list[str]]:
    return {
        "web": gunicorn_argv(host, port, web_workers, threads),
        "worker": celery_argv("worker", "--loglevel", settings.log_level, "--concurrency", str(concurrency)),
        "beat": celery_argv("beat", "--loglevel", settings.log_level),
    }


def _next_steps(settings: Settings, url: str, can_log_in: bool) -> None:
    """Where to go from here: the dashboard, who logs in, the docs."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    click.echo(f"serving on {url}  (data in {settings.data_dir}; Ctrl-C stops)")
    click.echo(f"  dashboard: {url}/")
    if settings.admin_password:
        click.echo(f"  log in as {settings.admin_user} with the password in ORCHESTRATOR_ADMIN_PASSWORD")
    elif can_log_in:
        click.echo("  log in as an admin user (`orchestrator users list` shows them)")
    else:
        click.echo("  no one can log in yet: create an admin, in another terminal with the same environment:\n"
                   "    orchestrator users create admin --admin\n"
                   "  (or start with ORCHESTRATOR_ADMIN_TOKEN and ORCHESTRATOR_ADMIN_PASSWORD set)")
    click.echo(f"  API: {url}/api, with a token from `orchestrator tokens issue USER`; health: {url}/healthz")
    click.echo(f"  docs: {readme if readme.exists() else 'README.md'} and docs/ beside it")


def _exec(argv: list[str], settings: Settings, metrics: bool = False) -> None:
    redis_url = settings.redis_url or ensure_embedded_redis(settings.data_dir)[0]
    env = _child_env(settings, redis_url)
    if metrics:  # the web and workers count; beat counts nothing and needs no writable folder
        env = metrics_env(env, settings.data_dir)
    os.execvpe(argv[0], argv, env)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--threads", default=32, show_default=True, type=int)
def web(host: str, port: int, workers: int, threads: int) -> None:
    """Run the web tier alone (gunicorn). Apply migrations first with `orchestrator db upgrade`."""
    _exec(gunicorn_argv(host, port, workers, threads), _settings(), metrics=True)


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--queues", default="orchestrator", show_default=True)
def worker(concurrency: int, queues: str) -> None:
    """Run a Celery worker that applies events."""
    settings = _settings()
    _exec(celery_argv("worker", "--loglevel", settings.log_level, "--concurrency", str(concurrency),
                       "--queues", queues), settings, metrics=True)


@main.command()
def beat() -> None:
    """Run the Celery beat scheduler (timeouts, silent agents, stale streams). Run exactly one.

    It keeps its schedule in memory, so it needs no writable folder; /readyz's "beat" check says degraded
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
main.add_command(agents)
main.add_command(archive)
main.add_command(demo)


if __name__ == "__main__":  # pragma: no cover
    main()
