"""Setting the scene for event-path tests: a user, an agent with its key, a queued execution."""

from __future__ import annotations

from dataclasses import dataclass

import redis as redis_lib

from orchestrator.credentials import issue_credential
from orchestrator.db import Database
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
        return Scene(owner.id, agent.id, key, ex.id)


def claim(db: Database, r: redis_lib.Redis, settings: Settings, scene: Scene, subtask_id: str) -> None:
    """Hand `subtask_id` to the scene's agent the way the poll does (held in the database and in Redis)."""
    with db.unit_of_work() as s:
        g = load_graphs(s, [scene.execution_id])[scene.execution_id]
        start_subtask(g, g.subtasks[subtask_id], scene.agent_id, utcnow())
        if g.execution.status == "QUEUED":
            g.execution.status = "RUNNING"
    record_hold(r, settings.redis_key_prefix, scene.execution_id, subtask_id, scene.agent_id)


def execution_ids_on_shard(shard: int, shards: int, n: int, stem: str = "exec") -> list[str]:
    """`n` fresh execution ids whose events all go to `shard`."""
    import secrets

    from orchestrator.events.protocol import shard_of

    found: list[str] = []
    while len(found) < n:
        candidate = f"{stem}_{secrets.token_hex(5)}"
        if shard_of(candidate, shards) == shard:
            found.append(candidate)
    return found


def assert_each_claimed_once(claims: list, errors: list, n: int) -> None:
    """Concurrent claimers raised nothing, and handed out `n` subtasks, each exactly once."""
    from collections import Counter

    assert not errors, errors[:3]
    counts = Counter(claims)
    assert len(counts) == n and set(counts.values()) == {1}
