"""Which agent holds which subtask, mirrored in Redis so the event front end can check it without
the database. The database stays the authority: the worker checks again when it applies."""

from __future__ import annotations

import redis


def _key(prefix: str, execution_id: str) -> str:
    return f"{prefix}holds:{execution_id}"


def record_hold(r: redis.Redis, prefix: str, execution_id: str, subtask_id: str, agent_id: str) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.hset(_key(prefix, execution_id), subtask_id, agent_id)
    pipe.expire(_key(prefix, execution_id), 7 * 24 * 3600)
    pipe.execute()


def release_holds(r: redis.Redis, prefix: str, execution_id: str, subtask_ids: list[str]) -> None:
    if subtask_ids:
        r.hdel(_key(prefix, execution_id), *subtask_ids)


def holder(r: redis.Redis, prefix: str, execution_id: str, subtask_id: str) -> str | None:
    raw = r.hget(_key(prefix, execution_id), subtask_id)
    return raw.decode() if raw is not None else None


def forget_execution(r: redis.Redis, prefix: str, execution_id: str) -> None:
    r.delete(_key(prefix, execution_id))
