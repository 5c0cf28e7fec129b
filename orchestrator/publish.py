"""Messages for the live stream (guide section 4), published on Redis pub/sub after commit.

All messages go to one channel; each web process subscribes once and fans out to its sockets, so
any web process can serve any socket. `owner_id` travels with each message for that filtering,
`commit_range` with event messages for ordering them (below); `for_client()` strips both.

Event messages carry `seq`, the event's position in commit order (`ExecutionEvent.seq`): sockets
replay and deduplicate by it. The position exists only once the event's transaction has committed,
while messages are built inside it. So the contract is:

- `event_message(row, owner_id)` may be called before the commit: it returns an `EventMessage`,
  a plain dict (equal to one, serialisable as one) that also keeps a reference to `row` (an
  `ExecutionEvent`, or the `EventRow` the event worker inserts: `orchestrator/event_positions.py`);
- `queue_publish()` (or `publish()`), called after the commit, reads the row's `seq` at that moment (`resolved()`),
  and `commit_range`, the first and last position its transaction drew: pub/sub order across
  shards is not commit order, and the web tier's relay puts messages back in position order,
  which it can do only if it knows which positions one commit covered (not every event is
  published). The row reference itself is never serialised;
- a message that lost its row (copied into a new dict) keeps the `seq` it was built with: None
  if built before the commit. Pass the messages to `publish()` as they were returned.

People watch the stream: the agents' text in a message (`message`, `status_message`) is masked
(`orchestrator/masking.py`) where the message is built, once for every socket that gets it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from operator import attrgetter, itemgetter
from typing import Any

import orjson
import redis

from orchestrator.event_positions import EventRow, commit_range, position
from orchestrator.masking import mask_text
from orchestrator.models import Execution, ExecutionEvent

INTERNAL_KEYS = frozenset({"owner_id", "commit_range"})  # routing and ordering; never sent to a client


def channel(prefix: str) -> str:
    return f"{prefix}live"


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts is not None else None


def execution_update(ex: Execution, current_task_title: str | None, now: datetime) -> dict[str, Any]:
    total = ex.tasks_total or 0
    return {
        "type": "execution_update",
        "execution_id": ex.id,
        "status": ex.status,
        "status_message": _masked(ex.status_message),
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


def _masked(text: str | None) -> str | None:
    return mask_text(text) if text else text


class EventMessage(dict[str, Any]):
    """An event message that remembers its row, so that `seq` can be read after the commit."""

    __slots__ = ("row",)

    def __init__(self, row: ExecutionEvent | EventRow, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.row = row


_MESSAGE_COLUMNS = ("id", "seq", "execution_id", "event_type", "task_id", "subtask_id", "status", "message",
                    "timestamp")
_from_row, _from_instance = itemgetter(*_MESSAGE_COLUMNS), attrgetter(*_MESSAGE_COLUMNS)


def event_message(ev: ExecutionEvent | EventRow, owner_id: str) -> dict[str, Any]:
    """The stream message of `ev`; fine to build before the commit (see the module docstring)."""
    eid, seq, execution_id, event_type, task_id, subtask_id, status, message, timestamp = (
        _from_row(ev) if isinstance(ev, EventRow) else _from_instance(ev))
    return EventMessage(ev, {
        "type": "event",
        "event_id": eid,
        "seq": seq,
        "execution_id": execution_id,
        "event_type": event_type,
        "task_id": task_id,
        "subtask_id": subtask_id,
        "status": status,
        "message": _masked(message),  # masked once here, for every socket (people watch the stream)
        "timestamp": iso(timestamp),
        "owner_id": owner_id,
    })


def resolved(msg: dict[str, Any]) -> dict[str, Any]:
    """`msg` as it goes on the wire: an event message with its row's position as it is now."""
    if not isinstance(msg, EventMessage):
        return msg
    # From what this process holds, never a query: after the commit an ORM row is detached.
    out = {**msg, "seq": position(msg.row, msg.get("seq"))}
    span = commit_range(msg.row)
    if span is not None:
        out["commit_range"] = list(span)
    return out


def for_client(msg: dict[str, Any]) -> dict[str, Any]:
    """What a socket sends: the message without the keys that are the web tier's business."""
    return {k: v for k, v in resolved(msg).items() if k not in INTERNAL_KEYS}


def queue_publish(pipe: redis.client.Pipeline, prefix: str, messages: Iterable[dict[str, Any]]) -> None:
    """Queue the messages' publication on `pipe`. Call only after the transaction that made them has
    committed: event messages take their `seq` from their rows here."""
    for msg in messages:
        pipe.publish(channel(prefix), orjson.dumps(resolved(msg)))


def publish(r: redis.Redis, prefix: str, messages: Iterable[dict[str, Any]]) -> None:
    """`queue_publish` in one round trip of its own (none when there is nothing to say)."""
    pipe = r.pipeline(transaction=False)
    queue_publish(pipe, prefix, messages)
    if len(pipe):
        pipe.execute()
