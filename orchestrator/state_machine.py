"""The execution state machine: the guide's transition table and the pure rules that move along it.

Nothing here touches the database; the worker and the services call these functions and persist
what they return, so the rules can be tested exhaustively (see tests/orchestrator/test_state_machine.py).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.errors import Conflict

log = logging.getLogger(__name__)


class ExecutionStatus(StrEnum):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    BLOCKED = "BLOCKED"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    BLOCKED = "BLOCKED"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


class SubtaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


# Exactly the guide's table (section 5). A state maps to the states it may move to.
VALID_TRANSITIONS: dict[str, list[str]] = {
    "CREATED": ["QUEUED", "CANCELLED"],
    "QUEUED": ["RUNNING", "CANCELLED"],
    "RUNNING": ["BLOCKED", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"],
    "BLOCKED": ["RUNNING", "PAUSED", "CANCELLED"],  # After blocker resolved
    "PAUSED": ["RUNNING", "CANCELLED"],
    "COMPLETED": [],  # Terminal
    "FAILED": ["CANCELLED"],  # Or retry (new execution)
    "CANCELLED": [],  # Terminal
}

TERMINAL_STATES = frozenset(s for s, targets in VALID_TRANSITIONS.items() if not targets)
# States in which nothing more will ever be handed out.
FINISHED_STATES = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


class InvalidStateTransition(Conflict):
    code = "invalid_transition"

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"{current} → {target}", current=current, target=target)
        self.current = current
        self.target = target


def can_transition(current: str, target: str) -> bool:
    return target in VALID_TRANSITIONS.get(current, [])


def transition(current: str, target: str) -> str:
    """Validate `current → target` and return `target`; raise InvalidStateTransition otherwise."""
    if not can_transition(current, target):
        raise InvalidStateTransition(current, target)
    return target


# The one status message of each state an execution can move to, whoever moves it.
STATUS_MESSAGES: dict[str, str] = {
    ExecutionStatus.QUEUED: "Queued: waiting for an agent.",
    ExecutionStatus.RUNNING: "Running.",
    ExecutionStatus.PAUSED: "Paused by an operator.",
    ExecutionStatus.BLOCKED: "Waiting for a person.",
    ExecutionStatus.COMPLETED: "All tasks complete.",
    ExecutionStatus.FAILED: "A subtask failed with no attempts left.",
    ExecutionStatus.CANCELLED: "Cancelled by an operator.",
}
# States whose message names their cause when the mover knows it (the agent's error, the sweeper's finding):
# the owner reads it on the dashboard to decide what to do.
EXPLAINED_STATES = frozenset({ExecutionStatus.BLOCKED, ExecutionStatus.FAILED})


def status_message(target: str, detail: str | None = None) -> str:
    """The status message of an execution that has just moved to `target`."""
    text = STATUS_MESSAGES[target]
    if detail and target in EXPLAINED_STATES:
        return f"{text.removesuffix('.')}: {detail}"
    return text


def log_transition(execution_id: str, current: str, target: str) -> None:
    """The one log line every transition leaves, written once it has committed."""
    log.info("Execution %s transitioned: %s -> %s", execution_id, current, target)


@dataclass(frozen=True)
class EventFacts:
    """What the state machine needs to know about an applied event and its consequences.

    `all_done` is true when, after this event, every task of the execution is complete or skipped;
    `retries_left` whether a failed subtask may be tried again.
    """

    event_type: str
    human_review_required: bool = False
    blocking: bool = False
    all_done: bool = False
    retries_left: bool = False


AGENT_EVENT_TYPES = frozenset(
    {"heartbeat", "task_started", "subtask_complete", "task_complete", "task_error", "task_blocked"}
)


def derive_state(current: str, facts: EventFacts) -> str:
    """The execution state that an agent's event leads to (may equal `current`: no transition).

    The caller validates a change with `transition()`; an event that would lead out of a
    terminal state (a late report on a cancelled execution) derives an invalid pair and is refused.
    """
    kind = facts.event_type
    if kind not in AGENT_EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    if kind == "heartbeat":
        return current
    if kind == "task_started":
        return ExecutionStatus.RUNNING if current == ExecutionStatus.QUEUED else current
    if kind in ("subtask_complete", "task_complete"):
        if current == ExecutionStatus.QUEUED:
            # Work was finished before anything marked the execution running; `settle` goes on
            # from RUNNING to COMPLETED when this was the last of it.
            return ExecutionStatus.RUNNING
        if facts.all_done and current == ExecutionStatus.RUNNING:
            return ExecutionStatus.COMPLETED
        return current
    if kind == "task_blocked" or (kind == "task_error" and (facts.human_review_required or facts.blocking)):
        return ExecutionStatus.BLOCKED if current != ExecutionStatus.BLOCKED else current
    # task_error that needs no person
    if facts.retries_left:
        return current
    return ExecutionStatus.FAILED


def settle(current: str, facts: EventFacts) -> list[str]:
    """Apply `derive_state` until it stops moving; return the states passed through, validated.

    An empty list means the event changes nothing. Raises InvalidStateTransition for the first
    invalid step (nothing is to be applied then).
    """
    path: list[str] = []
    state = current
    for _ in range(len(VALID_TRANSITIONS)):
        target = derive_state(state, facts)
        if target == state:
            return path
        state = transition(state, target)
        path.append(state)
    raise RuntimeError("derive_state did not settle")  # pragma: no cover - a bug in the table


def settle_on_tasks(current: str, task_statuses: Collection[str], all_done: bool) -> list[str]:
    """Where a RUNNING execution goes once its tasks have moved without it (work finished, blocked or
    failed while it was PAUSED or BLOCKED): COMPLETED, else BLOCKED, else FAILED, else nowhere.

    Any other state stays: only a RUNNING execution follows its tasks.
    """
    if current != ExecutionStatus.RUNNING:
        return []
    if all_done:
        target = ExecutionStatus.COMPLETED
    elif TaskStatus.BLOCKED in task_statuses:
        target = ExecutionStatus.BLOCKED
    elif TaskStatus.ERROR in task_statuses:
        target = ExecutionStatus.FAILED
    else:
        return []
    return [transition(current, target)]


def settle_taken_back(current: str, retrying: bool) -> list[str]:
    """Where an execution goes when a subtask is taken back from its agent (timed out, or the agent
    went silent): as after the agent's own error that needs no person, except that a move the table
    forbids is no move. A PAUSED or BLOCKED execution cannot fail; it fails when it runs again and
    `settle_on_tasks` finds the failed task."""
    try:
        return settle(current, EventFacts("task_error", retries_left=retrying))
    except InvalidStateTransition:
        return []
