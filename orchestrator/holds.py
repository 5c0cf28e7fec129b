"""Which agent holds which subtask, and which agents take part in an execution, mirrored in Redis so
the event front end can check both without the database. The database stays the authority: the
front end falls back to it on a miss, and the worker checks again when it applies."""

from __future__ import annotations

import redis

TTL_SECONDS = 7 * 24 * 3600


def holds_key(prefix: str, execution_id: str) -> str:
    return f"{prefix}holds:{execution_id}"


def members_key(prefix: str, execution_id: str) -> str:
    return f"{prefix}members:{execution_id}"


def queue_hold(pipe: redis.client.Pipeline, prefix: str, execution_id: str, subtask_id: str,
               agent_id: str) -> None:
    """Queue on `pipe`: the poll handed `subtask_id` to `agent_id`, which holds it and from now on takes
    part in the execution."""
    pipe.hset(holds_key(prefix, execution_id), subtask_id, agent_id)
    pipe.expire(holds_key(prefix, execution_id), TTL_SECONDS)
    pipe.sadd(members_key(prefix, execution_id), agent_id)
    pipe.expire(members_key(prefix, execution_id), TTL_SECONDS)


def record_hold(r: redis.Redis, prefix: str, execution_id: str, subtask_id: str, agent_id: str) -> None:
    """`queue_hold` in a round trip of its own."""
    pipe = r.pipeline(transaction=False)
    queue_hold(pipe, prefix, execution_id, subtask_id, agent_id)
    pipe.execute()


def record_members(r: redis.Redis, prefix: str, execution_id: str, agent_ids: list[str]) -> None:
    if agent_ids:
        pipe = r.pipeline(transaction=False)
        pipe.sadd(members_key(prefix, execution_id), *agent_ids)
        pipe.expire(members_key(prefix, execution_id), TTL_SECONDS)
        pipe.execute()


def release_holds(r: redis.Redis | redis.client.Pipeline, prefix: str, execution_id: str,
                  subtask_ids: list[str]) -> None:
    """On a pipeline, queued; on a client, sent at once."""
    if subtask_ids:
        r.hdel(holds_key(prefix, execution_id), *subtask_ids)


def holder(r: redis.Redis, prefix: str, execution_id: str, subtask_id: str) -> str | None:
    raw = r.hget(holds_key(prefix, execution_id), subtask_id)
    return raw.decode() if raw is not None else None
