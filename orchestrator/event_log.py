"""Events that the system or a person writes into an execution's log (agents' come through ingest)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.ids import event_id
from orchestrator.models import ExecutionEvent

# The event types the orchestrator writes itself (agents' own are `state_machine.AGENT_EVENT_TYPES`).
EXECUTION_CREATED = "execution_created"
STATUS_CHANGE = "status_change"
TASK_RESOLVED = "task_resolved"
SUBTASK_TIMEOUT = "subtask_timeout"  # the sweeper took a subtask back: past its timeout_hours
AGENT_SILENT = "agent_silent"  # the sweeper took a subtask back: its agent went quiet
CLAIM_EXPIRED = "claim_expired"  # the sweeper put back a claim its agent never reported on (no attempt spent)
SYSTEM_EVENT_TYPES = frozenset({EXECUTION_CREATED, STATUS_CHANGE, TASK_RESOLVED, SUBTASK_TIMEOUT, AGENT_SILENT,
                                CLAIM_EXPIRED})


def record_event(
    session: Session,
    execution_id: str,
    event_type: str,
    now: datetime,
    *,
    source: str = "system",
    message: str | None = None,
    status: str | None = None,
    task_id: str | None = None,
    subtask_id: str | None = None,
    output_data: dict[str, Any] | None = None,
    agent_id: str | None = None,
) -> ExecutionEvent:
    ev = ExecutionEvent(
        id=event_id(), execution_id=execution_id, agent_id=agent_id, source=source, event_type=event_type,
        task_id=task_id, subtask_id=subtask_id, status=status, message=message, output_data=output_data,
        timestamp=now,
    )
    session.add(ev)
    return ev


def record_transition(session: Session, execution_id: str, old: str, new: str, now: datetime, *,
                      source: str = "system", reason: str | None = None) -> ExecutionEvent:
    """The event every state change leaves in the log ("status_change", old and new state in output_data)."""
    return record_event(
        session, execution_id, STATUS_CHANGE, now, source=source, status=new.lower(),
        message=f"Execution {execution_id} transitioned: {old} -> {new}" + (f" ({reason})" if reason else ""),
        output_data={"from": old, "to": new, **({"reason": reason} if reason else {})},
    )
