"""move_execution, the one writer of a transition: every pair of states, and what each move leaves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from orchestrator.effects import AfterCommit
from orchestrator.models import Execution, ExecutionEvent, utcnow
from orchestrator.state_machine import FINISHED_STATES, VALID_TRANSITIONS, InvalidStateTransition
from orchestrator.transitions import move_execution

PAIRS = [(current, target) for current in VALID_TRANSITIONS for target in VALID_TRANSITIONS]
VALID = [(c, t) for c, t in PAIRS if t in VALID_TRANSITIONS[c]]
INVALID = [(c, t) for c, t in PAIRS if t not in VALID_TRANSITIONS[c]]


class _Session:
    """All the mover asks of a session: somewhere to add the event row."""

    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)


def _execution(status: str) -> Execution:
    return Execution(id="exec_1", plan_id="plan_1", owner_id="user_1", status=status, status_message="before",
                     tasks_total=1, tasks_completed=0, created_at=utcnow() - timedelta(hours=1))


@pytest.mark.parametrize(("current", "target"), VALID)
def test_a_valid_move_writes_the_row_the_event_and_the_after_commit_work(current: str, target: str) -> None:
    session, ex, after, now = _Session(), _execution(current), AfterCommit(), utcnow()
    move_execution(session, ex, target, now, after, reason="operator", source="user")
    assert ex.status == target
    assert ex.started_at == (now if target == "RUNNING" else None)
    assert ex.completed_at == (now if target in FINISHED_STATES else None)
    (ev,) = session.added
    assert isinstance(ev, ExecutionEvent)
    assert (ev.event_type, ev.source, ev.status, ev.timestamp) == ("status_change", "user", target.lower(), now)
    assert ev.output_data == {"from": current, "to": target, "reason": "operator"}
    assert after.transitions == [("exec_1", current, target)]
    assert [(m["type"], m["event_id"], m["owner_id"]) for m in after.messages] == [("event", ev.id, "user_1")]
    assert (after.holds, after.released, after.notifications) == ([], {}, [])


@pytest.mark.parametrize(("current", "target"), INVALID)
def test_an_invalid_move_raises_and_changes_nothing(current: str, target: str) -> None:
    session, ex, after = _Session(), _execution(current), AfterCommit()
    with pytest.raises(InvalidStateTransition) as info:
        move_execution(session, ex, target, utcnow(), after, reason="operator")
    assert (info.value.current, info.value.target) == (current, target)
    assert (ex.status, ex.status_message, ex.started_at, ex.completed_at) == (current, "before", None, None)
    assert session.added == [] and after == AfterCommit()


def test_a_second_run_keeps_the_first_start() -> None:
    ex, started = _execution("PAUSED"), utcnow() - timedelta(minutes=5)
    ex.started_at = started
    move_execution(_Session(), ex, "RUNNING", utcnow(), AfterCommit(), reason="operator")
    assert ex.started_at == started


@pytest.mark.parametrize(
    ("current", "target", "detail", "expected"),
    [
        ("CREATED", "QUEUED", None, "Queued: waiting for an agent."),
        ("QUEUED", "RUNNING", "ignored", "Running."),
        ("RUNNING", "PAUSED", None, "Paused by an operator."),
        ("RUNNING", "BLOCKED", None, "Waiting for a person."),
        ("RUNNING", "BLOCKED", "No answer", "Waiting for a person: No answer"),
        ("RUNNING", "COMPLETED", "done", "All tasks complete."),
        ("RUNNING", "FAILED", None, "A subtask failed with no attempts left."),
        ("RUNNING", "FAILED", "timed out.", "A subtask failed with no attempts left: timed out."),
        ("FAILED", "CANCELLED", None, "Cancelled by an operator."),
    ],
)
def test_the_status_message_of_each_target(current: str, target: str, detail: str | None, expected: str) -> None:
    ex = _execution(current)
    move_execution(_Session(), ex, target, utcnow(), AfterCommit(), reason="r", detail=detail)
    assert ex.status_message == expected


def test_the_event_names_no_reason_when_there_is_none_and_the_system_by_default() -> None:
    session = _Session()
    move_execution(session, _execution("QUEUED"), "RUNNING", utcnow(), AfterCommit(), reason="")
    (ev,) = session.added
    assert ev.source == "system" and ev.output_data == {"from": "QUEUED", "to": "RUNNING"}
    assert ev.message == "Execution exec_1 transitioned: QUEUED -> RUNNING"
