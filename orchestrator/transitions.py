"""Moving an execution from one state to another: the one place that writes a transition.

The state machine (`state_machine.py`) decides where an execution may and should go and stays pure;
this module applies such a move to the row inside the caller's unit of work, and leaves what is to
be announced after the commit in the caller's `AfterCommit`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from orchestrator.effects import AfterCommit
from orchestrator.event_log import record_transition
from orchestrator.models import Execution
from orchestrator.publish import event_message
from orchestrator.ready_work import moves_work
from orchestrator.state_machine import FINISHED_STATES, ExecutionStatus, status_message, transition


def move_execution(session: Session, ex: Execution, target: str, now: datetime, after: AfterCommit, *,
                   reason: str, source: str = "system", detail: str | None = None) -> None:
    """Move `ex` to `target`: its status, times and status message, a `status_change` event in its
    log, and, for after the commit, that event's stream message and the transition's log line (and,
    when work may follow the move, its owner's ready-work version raised: orchestrator/ready_work.py).

    `detail` is the cause a BLOCKED or FAILED status message names (the agent's error text).
    Raises InvalidStateTransition, having changed nothing, when the table forbids the move.
    """
    old = ex.status
    ex.status = transition(old, target)
    if target == ExecutionStatus.RUNNING and ex.started_at is None:
        ex.started_at = now
    if target in FINISHED_STATES:
        ex.completed_at = now
    ex.status_message = status_message(target, detail)
    ev = record_transition(session, ex.id, old, target, now, source=source, reason=reason)
    after.messages.append(event_message(ev, ex.owner_id))
    after.transitions.append((ex.id, old, target))
    if moves_work(old, target):
        after.work_moved.add(ex.owner_id)
