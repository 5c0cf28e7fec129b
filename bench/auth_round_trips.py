"""Redis round trips per request, by kind of request, with a warm token cache, and how many of them
read the access epoch and nothing else: the round trips that checking revocations added.

    python bench/auth_round_trips.py            # SQLite + embedded Redis in a temporary folder
    DATABASE_URL=... REDIS_URL=... python bench/auth_round_trips.py

Checking revocations on every request must not cost the agents' event path a round trip: this
counts them. Each `send_packed_command` on a connection of the app's Redis client is one round trip
(a pipeline is one). The drain trigger (Celery's broker) is replaced by a no-op and the reply wait
is 0, so only the handler's own Redis traffic is counted; the cache is warmed by a first request.
Prints the median over --repeat requests of each kind, and the figure of the run's baseline when
one is given (--baseline FILE, a JSON written by an earlier run with --save FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis as redis_lib  # noqa: E402

import migrations  # noqa: E402
from orchestrator.credentials import issue_credential  # noqa: E402
from orchestrator.embedded_redis import resolved_redis_url  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402

_COMMAND = re.compile(rb"(?:^|\r\n)\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")


class RoundTrips:
    """Counts requests sent on Redis connections (every connection class of redis-py), and those that
    carried nothing but a GET of `alone_key` (the access epoch)."""

    def __init__(self, alone_key: bytes = b"auth:epoch") -> None:
        self.count = 0
        self.epoch_alone = 0
        self.alone_key = alone_key
        self._originals: list[tuple[type, Any]] = []

    def _note(self, command: Any) -> None:
        self.count += 1
        packet = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        if self.alone_key in packet and [c.upper() for c in _COMMAND.findall(packet)] == [b"GET"]:
            self.epoch_alone += 1

    def __enter__(self) -> RoundTrips:
        for cls in {redis_lib.connection.Connection, redis_lib.connection.UnixDomainSocketConnection}:
            original = cls.send_packed_command
            self._originals.append((cls, original))

            def counted(conn: Any, command: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
                self._note(command)
                return _original(conn, command, *args, **kw)

            cls.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in self._originals:
            cls.send_packed_command = original  # type: ignore[method-assign]


def _settings(tmp: Path) -> Settings:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{tmp / 'bench.db'}")
    env.update({"ORCHESTRATOR_DATA_DIR": str(tmp / "data"), "INGEST_REPLY_WAIT_MS": "0",
                "REDIS_KEY_PREFIX": f"benchauth:{secrets.token_hex(3)}:", "LOG_LEVEL": "WARNING",
                "SECRET_KEY": "bench-secret-key-that-is-long-enough-for-hs256"})
    settings = Settings.from_env(env)
    return settings.replace(redis_url=resolved_redis_url(settings.redis_url, settings.data_dir))


def _requests(client: Any, scene: Any, user_token: str) -> dict[str, Callable[[int], Any]]:
    agent = {"Authorization": f"Bearer {scene.agent_key}"}
    user = {"Authorization": f"Bearer {user_token}"}

    def event(n: int) -> Any:
        return client.post(f"/api/executions/{scene.execution_id}/events", headers=agent, json={
            "agent_id": scene.agent_id, "event_type": "heartbeat", "task_id": "task_0_a", "message": f"m{n}"})

    def batch(n: int) -> Any:
        return client.post("/api/events/batch", headers=agent, json={"events": [
            {"agent_id": scene.agent_id, "execution_id": scene.execution_id, "event_type": "heartbeat",
             "task_id": "task_0_a", "message": f"b{n}.{i}"} for i in range(10)]})

    return {
        "POST event": event,
        "POST batch of 10": batch,
        "POST heartbeat": lambda n: client.post(f"/api/agents/{scene.agent_id}/heartbeat", headers=agent, json={}),
        "GET work (poll)": lambda n: client.get(f"/api/agents/{scene.agent_id}/work", headers=agent),
        "GET execution (operator)": lambda n: client.get(f"/api/executions/{scene.execution_id}", headers=user),
    }


def measure(repeat: int) -> dict[str, tuple[float, float]]:
    from tests.signing import SigningClient
    from tests.workers.helpers import claim, queued_execution
    from web.app import create_app

    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp_name:
        settings = _settings(Path(tmp_name))
        migrations.upgrade(settings.database_url)
        app = create_app(settings)
        app.extensions["ingestor"].trigger = lambda shard: None  # Celery's broker is not the app's Redis
        db, r = app.extensions["db"], app.extensions["redis"]
        try:
            scene = queued_execution(db, n_subtasks=2)
            claim(db, r, settings, scene, "task_0_a")
            with db.unit_of_work() as s:
                _, user_token = issue_credential(s, user_id=scene.owner_id)
            app.test_client_class = SigningClient  # agents sign: their requests carry the nonce's round trip
            client = app.test_client()
            figures: dict[str, tuple[float, float]] = {}
            for name, call in _requests(client, scene, user_token).items():
                first = call(0)  # warms the token cache
                assert first.status_code < 300, (name, first.get_data(as_text=True))
                counts, alone = [], []
                for n in range(1, repeat + 1):
                    with RoundTrips() as rt:
                        resp = call(n)
                    assert resp.status_code < 300, (name, resp.status_code, resp.get_data(as_text=True))
                    counts.append(rt.count)
                    alone.append(rt.epoch_alone)
                figures[name] = (statistics.median(counts), statistics.median(alone))
            return figures
        finally:
            for key in r.scan_iter(f"{settings.redis_key_prefix}*"):
                r.delete(key)
            db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--save", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--baseline", type=Path, help="a JSON written by --save, printed beside")
    args = parser.parse_args()
    figures = measure(args.repeat)
    baseline = json.loads(args.baseline.read_text()) if args.baseline else {}
    print(f"{'request (warm cache)':28} {'round trips':>12} {'epoch alone':>12} {'baseline':>9}")
    for name, (value, alone) in figures.items():
        base = baseline.get(name)
        base = base[0] if isinstance(base, list) else base
        print(f"{name:28} {value:12g} {alone:12g} {'' if base is None else f'{base:9g}'}")
    if args.save:
        args.save.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
