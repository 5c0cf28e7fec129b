"""The sweeper: subtasks held too long go back to the queue, or fail when no attempts are left.

Two reasons to take a subtask away from its agent: it has been running longer than its plan's
`timeout_hours` ("subtask_timeout"), or its agent has gone quiet for longer than the heartbeat
window ("agent_silent"). Both go through the same graph moves as an agent's own `task_error`
(orchestrator.execution_graph), so a retry after a timeout looks exactly like a retry after an error.

A third is no failure: a claim its agent has not acknowledged (no event about it applied) within
CLAIM_ACK_SECONDS ("claim_expired"). The poll's answer may never have reached the agent (a timeout
on its side, a crashed web process), and its polls keep its heartbeat fresh, so the silence rule
would never fire; the subtask goes back to the queue as it was, same attempt, no error. That rule
is checked first, so a claim nobody started never costs an attempt. It leaves executions that have
finished to the other two rules: nothing would claim the subtask there again.
Beat runs `release_overdue_work` every SWEEP_INTERVAL_SECONDS (workers.tasks.release_overdue_work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import redis
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from orchestrator import event_log, execution_graph, state_machine
from orchestrator.db import Database
from orchestrator.effects import AfterCommit, carry_out
from orchestrator.models import Agent, Execution, ExecutionSubtask, PlanSubtask, PlanTask
from orchestrator.publish import event_message, execution_update, iso
from orchestrator.retry import RetryPolicy
from orchestrator.settings import Settings
from orchestrator.state_machine import SubtaskStatus
from orchestrator.transitions import move_execution

log = logging.getLogger(__name__)

TIMEOUT = event_log.SUBTASK_TIMEOUT
SILENT = event_log.AGENT_SILENT
EXPIRED = event_log.CLAIM_EXPIRED


@dataclass
class TakenBack:
    """How many subtasks were taken back and why, and what that left for after the commit."""

    after: AfterCommit = field(default_factory=AfterCommit)
    timed_out: int = 0
    silent: int = 0
    expired: int = 0  # unacknowledged claims put back, attempt unchanged


class Windows(NamedTuple):
    """How long an agent may stay quiet, and how long a claim may stay unacknowledged."""

    heartbeat: timedelta
    ack: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Windows:
        return cls(timedelta(seconds=settings.heartbeat_window_seconds), timedelta(seconds=settings.claim_ack_seconds))


class _Held(NamedTuple):
    """What deciding about one RUNNING subtask needs (column names of `_candidates`' query)."""

    claimed_at: datetime | None
    acknowledged_at: datetime | None
    timeout_hours: int | None
    agent_id: str | None
    last_heartbeat: datetime | None
    finished: bool  # its execution has finished


@dataclass
class _Due:
    """A RUNNING subtask that may be due, with what deciding needs, loaded with its execution locked."""

    g: execution_graph.ExecutionGraph
    sub: ExecutionSubtask
    plan_sub: PlanSubtask
    last_seen: datetime | None

    def held(self) -> _Held:
        return _Held(self.sub.claimed_at, self.sub.acknowledged_at, self.plan_sub.timeout_hours, self.sub.agent_id,
                     self.last_seen, self.g.execution.status in state_machine.FINISHED_STATES)


def _reason(h: _Held, now: datetime, windows: Windows) -> str | None:
    """Why a RUNNING subtask should be taken back, or None to leave it with its agent."""
    if h.claimed_at is not None and h.acknowledged_at is None and not h.finished \
            and h.claimed_at < now - windows.ack:
        return EXPIRED
    if h.claimed_at is not None and h.timeout_hours is not None \
            and h.claimed_at + timedelta(hours=h.timeout_hours) < now:
        return TIMEOUT
    # The claim itself counts as a sign of life: an agent that has never sent a heartbeat (poll
    # updates it, but an agent created directly may not have) keeps a fresh claim for one window.
    seen = [t for t in (h.last_heartbeat, h.claimed_at) if t is not None]
    if h.agent_id is None or not seen or max(seen) < now - windows.heartbeat:
        return SILENT
    return None


def _message(kind: str, sub: ExecutionSubtask, timeout_hours: int, last_seen: datetime | None) -> str:
    if kind == TIMEOUT:
        return (f"Subtask {sub.plan_subtask_id} ran past its {timeout_hours}h timeout "
                f"(claimed by {sub.agent_id} at {iso(sub.claimed_at)}).")
    return f"Agent {sub.agent_id} went silent holding subtask {sub.plan_subtask_id} (last seen {iso(last_seen)})."


def _candidates(session: Session, now: datetime, windows: Windows, limit: int) -> list[str]:
    """Ids of RUNNING subtasks to take back, oldest claims first.

    The timeout is per row (the plan subtask's hours), and date arithmetic differs between SQLite and
    PostgreSQL, so the test runs here on a narrow column query; RUNNING rows number at most the
    agents at work, so this stays small.
    """
    rows = session.execute(
        select(ExecutionSubtask.id, ExecutionSubtask.claimed_at, ExecutionSubtask.acknowledged_at,
               PlanSubtask.timeout_hours, ExecutionSubtask.agent_id, Agent.last_heartbeat,
               Execution.status.in_(sorted(state_machine.FINISHED_STATES)).label("finished"))
        .join(PlanSubtask, (PlanSubtask.plan_id == ExecutionSubtask.plan_id)
              & (PlanSubtask.id == ExecutionSubtask.plan_subtask_id))
        .join(Execution, Execution.id == ExecutionSubtask.execution_id)
        .outerjoin(Agent, Agent.id == ExecutionSubtask.agent_id)
        .where(ExecutionSubtask.status == SubtaskStatus.RUNNING)
    ).all()
    due = [r for r in rows if _reason(_Held(*r[1:]), now, windows)]
    due.sort(key=lambda r: (r.claimed_at is not None, r.claimed_at or now))
    return [r.id for r in due[:limit]]


def _lock_due(session: Session, ids: list[str]) -> list[_Due]:
    """The candidates `ids` on their locked executions, with their plan subtasks and holders' heartbeats."""
    execution_ids = session.scalars(
        select(ExecutionSubtask.execution_id).where(ExecutionSubtask.id.in_(ids)).distinct()
    ).all()
    graphs = execution_graph.load_graphs(session, execution_ids, lock=True)
    wanted = set(ids)
    subs = [(g, s) for g in graphs.values() for s in g.subtasks.values() if s.id in wanted]
    if not subs:
        return []
    plan_subs = {
        (p.plan_id, p.id): p for p in session.scalars(select(PlanSubtask).where(
            tuple_(PlanSubtask.plan_id, PlanSubtask.id).in_({(s.plan_id, s.plan_subtask_id) for _, s in subs})))
    }
    holders = {s.agent_id for _, s in subs if s.agent_id}
    heartbeats = dict(session.execute(
        select(Agent.id, Agent.last_heartbeat).where(Agent.id.in_(holders))
    ).all()) if holders else {}
    return [_Due(g, s, plan_subs[(s.plan_id, s.plan_subtask_id)], heartbeats.get(s.agent_id) if s.agent_id else None)
            for g, s in subs]


def _take_back(session: Session, due: _Due, kind: str, now: datetime, result: TakenBack) -> None:
    """Give `due`'s subtask another attempt, or fail it (and a RUNNING execution with it)."""
    g, sub, plan_sub = due.g, due.sub, due.plan_sub
    ex = g.execution
    message = _message(kind, sub, plan_sub.timeout_hours, due.last_seen)
    holder = sub.agent_id
    details: dict[str, Any] = {"reason": kind, "attempt": sub.attempt, "max_attempts": sub.max_attempts}
    # A finished execution never hands work out again, so retrying there would only leave a
    # QUEUED row behind; the subtask just fails.
    retrying = execution_graph.retries_left(sub) and ex.status not in state_machine.FINISHED_STATES
    if retrying:
        retry_at = execution_graph.retry_subtask(sub, RetryPolicy.from_json(plan_sub.retry_policy), message, now, g=g)
        details.update(retry_scheduled=True, next_attempt=sub.attempt, not_before=iso(retry_at))
    else:
        execution_graph.fail_subtask(g, sub, message, now)
        details.update(retry_scheduled=False, attempts_exhausted=True)
    ev = event_log.record_event(
        session, ex.id, kind, now, source="system", subtask_id=sub.plan_subtask_id,
        task_id=g.task_of(sub).plan_task_id, status="error", message=message, output_data=details,
        agent_id=holder,
    )
    result.after.messages.append(event_message(ev, ex.owner_id))
    for target in state_machine.settle_taken_back(ex.status, retrying):
        move_execution(session, ex, target, now, result.after, reason=kind, detail=message)
    result.after.release(ex.id, sub.plan_subtask_id)


def _announce(session: Session, graphs: list[execution_graph.ExecutionGraph], now: datetime, result: TakenBack) -> None:
    """The state of each execution touched, for the dashboard."""
    current = {(g.execution.plan_id, g.execution.current_task_id) for g in graphs if g.execution.current_task_id}
    titles = {
        (plan_id, task_id): title for plan_id, task_id, title in session.execute(
            select(PlanTask.plan_id, PlanTask.id, PlanTask.title)
            .where(tuple_(PlanTask.plan_id, PlanTask.id).in_(current)))
    } if current else {}
    for g in graphs:
        ex = g.execution
        result.after.messages.append(execution_update(ex, titles.get((ex.plan_id, ex.current_task_id)), now))


def _expire(session: Session, due: _Due, now: datetime, result: TakenBack) -> None:
    """Put an unacknowledged claim back in the queue as though it had never been made: the agent
    may never have heard of it, so it costs no attempt and leaves no error; the execution stays put."""
    g, sub = due.g, due.sub
    ex = g.execution
    holder, claimed_at = sub.agent_id, sub.claimed_at
    execution_graph.unclaim_subtask(g, sub)
    message = (f"Agent {holder} never reported on subtask {sub.plan_subtask_id} (claimed at {iso(claimed_at)}); "
               "it is back in the queue.")
    ev = event_log.record_event(
        session, ex.id, EXPIRED, now, source="system", subtask_id=sub.plan_subtask_id,
        task_id=g.task_of(sub).plan_task_id, status="queued", message=message, agent_id=holder,
        output_data={"reason": EXPIRED, "attempt": sub.attempt, "claimed_at": iso(claimed_at)},
    )
    result.after.messages.append(event_message(ev, ex.owner_id))
    result.after.release(ex.id, sub.plan_subtask_id)
    result.expired += 1


def take_back_overdue(session: Session, now: datetime, windows: Windows, limit: int = 500) -> TakenBack:
    """Take back what is due, inside the caller's unit of work; the caller carries out `after` once
    it has committed."""
    result = TakenBack()
    ids = _candidates(session, now, windows, limit)
    if not ids:
        return result
    touched: dict[str, execution_graph.ExecutionGraph] = {}
    # Decided again on the locked rows: an agent's event or a person may have moved a subtask
    # between the candidate query and the lock.
    for due in _lock_due(session, ids):
        if due.sub.status != SubtaskStatus.RUNNING:
            continue
        kind = _reason(due.held(), now, windows)
        if kind is None:
            continue
        if kind == EXPIRED:  # neither status nor current task moves: nothing new for the dashboard
            _expire(session, due, now, result)
        else:
            _take_back(session, due, kind, now, result)
            touched[due.g.execution.id] = due.g
            if kind == TIMEOUT:
                result.timed_out += 1
            else:
                result.silent += 1
        if due.g.readied:
            result.after.work_moved.add(due.g.execution.owner_id)
    if touched:
        _announce(session, list(touched.values()), now, result)
    session.flush()
    return result


def release_overdue_work(db: Database, r: redis.Redis, settings: Settings, now: datetime) -> TakenBack:
    """Take back what is due in one transaction; release holds, publish and log only once it has committed."""
    with db.unit_of_work() as session:
        result = take_back_overdue(session, now, Windows.of(settings))
    carry_out(r, settings.redis_key_prefix, result.after)
    if result.timed_out or result.silent or result.expired:
        log.info("overdue work: %d timed out, %d held by silent agents, %d claims never acknowledged",
                 result.timed_out, result.silent, result.expired)
    return result
