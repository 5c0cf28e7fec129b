"""The state machine: the guide's table, and properties that must hold for every pair and event."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.state_machine import (
    AGENT_EVENT_TYPES,
    STATUS_MESSAGES,
    TERMINAL_STATES,
    VALID_TRANSITIONS,
    EventFacts,
    ExecutionStatus,
    InvalidStateTransition,
    can_transition,
    derive_state,
    settle,
    settle_on_tasks,
    settle_taken_back,
    status_message,
    transition,
)

STATES = list(VALID_TRANSITIONS)
states = st.sampled_from(STATES)
facts = st.builds(
    EventFacts,
    event_type=st.sampled_from(sorted(AGENT_EVENT_TYPES)),
    human_review_required=st.booleans(),
    blocking=st.booleans(),
    all_done=st.booleans(),
    retries_left=st.booleans(),
)


def test_table_is_the_guides() -> None:
    assert VALID_TRANSITIONS == {
        "CREATED": ["QUEUED", "CANCELLED"],
        "QUEUED": ["RUNNING", "CANCELLED"],
        "RUNNING": ["BLOCKED", "PAUSED", "COMPLETED", "FAILED", "CANCELLED"],
        "BLOCKED": ["RUNNING", "PAUSED", "CANCELLED"],
        "PAUSED": ["RUNNING", "CANCELLED"],
        "COMPLETED": [],
        "FAILED": ["CANCELLED"],
        "CANCELLED": [],
    }
    assert set(STATES) == {s.value for s in ExecutionStatus}
    assert {"COMPLETED", "CANCELLED"} == TERMINAL_STATES


@given(states)
def test_nothing_leaves_completed_or_cancelled(target: str) -> None:
    for terminal in ("COMPLETED", "CANCELLED"):
        with pytest.raises(InvalidStateTransition):
            transition(terminal, target)


def test_every_state_is_reachable_from_created() -> None:
    seen, frontier = {"CREATED"}, deque(["CREATED"])
    while frontier:
        for nxt in VALID_TRANSITIONS[frontier.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(STATES)


@given(states, states)
def test_every_invalid_pair_raises_and_every_valid_pair_passes(current: str, target: str) -> None:
    if target in VALID_TRANSITIONS[current]:
        assert transition(current, target) == target
        assert can_transition(current, target)
    else:
        with pytest.raises(InvalidStateTransition) as info:
            transition(current, target)
        assert info.value.current == current and info.value.target == target
        assert f"{current} → {target}" in str(info.value)


@given(states, facts)
def test_settle_only_takes_valid_steps(current: str, event: EventFacts) -> None:
    try:
        path = settle(current, event)
    except InvalidStateTransition as exc:
        # Refusals happen only where the table forbids the derived step.
        assert not can_transition(exc.current, exc.target)
        return
    prev = current
    for state in path:
        assert can_transition(prev, state)
        prev = state
    assert derive_state(prev, event) == prev  # settled


@given(states)
def test_heartbeat_never_changes_state(current: str) -> None:
    assert settle(current, EventFacts("heartbeat")) == []


@given(st.sampled_from(["QUEUED", "RUNNING"]), st.booleans())
def test_last_completion_completes_the_execution(current: str, via_subtask: bool) -> None:
    kind = "subtask_complete" if via_subtask else "task_complete"
    assert settle(current, EventFacts(kind, all_done=True))[-1] == "COMPLETED"
    assert "COMPLETED" not in settle(current, EventFacts(kind, all_done=False))


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (EventFacts("task_error", human_review_required=True), ["BLOCKED"]),
        (EventFacts("task_error", blocking=True, retries_left=True), ["BLOCKED"]),
        (EventFacts("task_blocked"), ["BLOCKED"]),
        (EventFacts("task_error", retries_left=True), []),
        (EventFacts("task_error", retries_left=False), ["FAILED"]),
        (EventFacts("task_started"), []),
    ],
)
def test_running_execution_reacts_to_agent_events(facts: EventFacts, expected: list[str]) -> None:
    assert settle("RUNNING", facts) == expected


def test_queued_execution_starts_on_first_report() -> None:
    assert settle("QUEUED", EventFacts("task_started")) == ["RUNNING"]


def test_late_error_on_cancelled_execution_is_refused() -> None:
    with pytest.raises(InvalidStateTransition):
        settle("CANCELLED", EventFacts("task_error"))


def test_unknown_event_type_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        derive_state("RUNNING", EventFacts("reboot"))


def test_every_state_one_can_move_to_has_one_status_message() -> None:
    targets = {t for ts in VALID_TRANSITIONS.values() for t in ts}
    assert set(STATUS_MESSAGES) == targets
    for target in targets:
        assert status_message(target) == STATUS_MESSAGES[target]
        explained = status_message(target, "why")
        assert explained == (STATUS_MESSAGES[target][:-1] + ": why" if target in ("BLOCKED", "FAILED")
                             else STATUS_MESSAGES[target])


@pytest.mark.parametrize(
    ("tasks", "all_done", "expected"),
    [
        ({"COMPLETE", "SKIPPED"}, True, ["COMPLETED"]),
        ({"BLOCKED", "ERROR", "QUEUED"}, False, ["BLOCKED"]),
        ({"ERROR", "QUEUED"}, False, ["FAILED"]),
        ({"RUNNING", "QUEUED"}, False, []),
    ],
)
def test_a_running_execution_follows_its_tasks(tasks: set[str], all_done: bool, expected: list[str]) -> None:
    assert settle_on_tasks("RUNNING", tasks, all_done) == expected


@given(states.filter(lambda s: s != "RUNNING"), st.sets(st.sampled_from(["BLOCKED", "ERROR", "COMPLETE"])),
       st.booleans())
def test_only_a_running_execution_follows_its_tasks(current: str, tasks: set[str], all_done: bool) -> None:
    assert settle_on_tasks(current, tasks, all_done) == []


@given(states, st.booleans())
def test_work_taken_back_fails_only_a_running_execution_without_a_retry(current: str, retrying: bool) -> None:
    expected = ["FAILED"] if current == "RUNNING" and not retrying else []
    assert settle_taken_back(current, retrying) == expected
