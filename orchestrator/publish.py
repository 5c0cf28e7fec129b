"""Messages for the live stream (guide section 4), published on Redis pub/sub after commit.

All messages go to one channel; each web process subscribes once and fans out to its sockets, so
any web process can serve any socket. `owner_id` travels with each message for that filtering and
is stripped before a message reaches a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
import redis

from orchestrator.models import Execution, ExecutionEvent


def channel(prefix: str) -> str:
    return f"{prefix}stream"


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else None


def execution_update(ex: Execution, current_task_title: str | None, now: datetime) -> dict[str, Any]:
    total = ex.tasks_total or 0
    return {
        "type": "execution_update",
        "execution_id": ex.id,
        "status": ex.status,
        "status_message": ex.status_message,
        "progress": {
            "tasks_completed": ex.tasks_completed,
            "tasks_total": total,
            "percent": round(100 * ex.tasks_completed / total) if total else 0,
            "current_task_id": ex.current_task_id,
            "current_task_title": current_task_title,
        },
        "timestamp": iso(now),
        "owner_id": ex.owner_id,
    }


def event_message(ev: ExecutionEvent, owner_id: str) -> dict[str, Any]:
    return {
        "type": "event",
        "event_id": ev.id,
        "execution_id": ev.execution_id,
        "event_type": ev.event_type,
        "task_id": ev.task_id,
        "subtask_id": ev.subtask_id,
        "status": ev.status,
        "message": ev.message,
        "timestamp": iso(ev.timestamp),
        "owner_id": owner_id,
    }


def publish(r: redis.Redis, prefix: str, messages: Iterable[dict[str, Any]]) -> None:
    """Publish in one round trip. Call only after the transaction that made them has committed."""
    pipe = r.pipeline(transaction=False)
    n = 0
    for msg in messages:
        pipe.publish(channel(prefix), orjson.dumps(msg))
        n += 1
    if n:
        pipe.execute()
