"""Setting the scene for event-path tests: a user, an agent with its key, a queued execution."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
from orchestrator_sdk.client import SignedAuth
from sqlalchemy import text

from orchestrator.credentials import issue_credential
from orchestrator.db import Database, make_engine
from orchestrator.events.protocol import GROUP, shard_of
from orchestrator.execution_graph import load_graphs, start_subtask
from orchestrator.executions import create_execution
from orchestrator.holds import record_hold
from orchestrator.models import utcnow
from orchestrator.settings import Settings
from tests.factories import make_agent, make_plan, make_user


@dataclass
class Scene:
    owner_id: str
    agent_id: str
    agent_key: str
    execution_id: str
    signing_secret: str | None = None  # the agent's, for clients that sign (AgentClient, SignedAuth)

    @property
    def auth(self) -> SignedAuth:
        """`requests`' auth= for the agent: its key, and its signature on every request."""
        return SignedAuth(self.agent_key, self.signing_secret)


def queued_execution(db: Database, *, n_tasks: int = 1, n_subtasks: int = 2, retry_policy: dict | None = None,
                     agent_id: str | None = None, execution_id: str | None = None) -> Scene:
    with db.unit_of_work() as s:
        owner = make_user(s)
        agent = make_agent(s, agent_id, capabilities=[{"action": "send_email", "params": []}])
        _, key = issue_credential(s, agent_id=agent.id)
        plan = make_plan(s, owner, n_tasks=n_tasks, n_subtasks=n_subtasks)
        if retry_policy is not None:
            for task in plan.tasks:
                for sub in task.subtasks:
                    sub.retry_policy = retry_policy
        s.flush()
        ex = create_execution(s, owner.id, plan.id, utcnow(), execution_id=execution_id)
        ex.status = "QUEUED"
        return Scene(owner.id, agent.id, key, ex.id, agent.signing_secret)


def claim(db: Database, r: redis_lib.Redis, settings: Settings, scene: Scene, subtask_id: str, *,
          acknowledged: bool = True) -> None:
    """Hand `subtask_id` to the scene's agent the way the poll does (held in the database and in Redis),
    and, unless told otherwise, as acknowledged: the agent has reported on it since."""
    with db.unit_of_work() as s:
        g = load_graphs(s, [scene.execution_id])[scene.execution_id]
        now = utcnow()
        start_subtask(g, g.subtasks[subtask_id], scene.agent_id, now)
        g.subtasks[subtask_id].acknowledged_at = now if acknowledged else None
        if g.execution.status == "QUEUED":
            g.execution.status = "RUNNING"
    record_hold(r, settings.redis_key_prefix, scene.execution_id, subtask_id, scene.agent_id)


def execution_ids_on_shard(shard: int, shards: int, n: int, stem: str = "exec") -> list[str]:
    """`n` fresh execution ids whose events all go to `shard`."""
    assert 0 <= shard < shards, f"there is no shard {shard} of {shards}"
    found: list[str] = []
    while len(found) < n:
        candidate = f"{stem}_{secrets.token_hex(5)}"
        if shard_of(candidate, shards) == shard:
            found.append(candidate)
    return found


def assert_each_claimed_once(claims: list, errors: list, n: int) -> None:
    """Concurrent claimers raised nothing, and handed out `n` subtasks, each exactly once."""
    assert not errors, errors[:3]
    counts = Counter(claims)
    assert len(counts) == n and set(counts.values()) == {1}


@contextmanager
def own_key_prefix(settings: Settings, stem: str) -> Iterator[tuple[Settings, redis_lib.Redis]]:
    """`settings` with a Redis key prefix (and so a Celery queue) of their own, and a client: the
    session's worker never drains these shards. Every key under the prefix is deleted afterwards."""
    settings = settings.replace(redis_key_prefix=f"{stem}:{secrets.token_hex(3)}:")
    r = redis_lib.Redis.from_url(settings.redis_url or "")
    try:
        yield settings, r
    finally:
        for key in r.scan_iter(f"{settings.redis_key_prefix}*"):
            r.delete(key)
        r.close()


def hold_database_write_lock(settings: Settings, execution_id: str) -> tuple[Any, Any]:
    """Make every writer wait: a row lock on the execution (PostgreSQL) or SQLite's write lock.
    Returns (engine, connection): roll the connection back and dispose of the engine to let go."""
    engine = make_engine(settings.database_url)
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("SELECT 1")  # the engine begins every transaction IMMEDIATE: the write lock
    else:
        conn.execute(text("SELECT id FROM executions WHERE id = :id FOR UPDATE"), {"id": execution_id})
    return engine, conn


def pending_count(r: redis_lib.Redis, stream: str) -> int:
    """Entries read from `stream` but not yet acknowledged."""
    try:
        return r.xpending(stream, GROUP)["pending"]
    except redis_lib.ResponseError:  # no group until a worker first reads
        return 0
