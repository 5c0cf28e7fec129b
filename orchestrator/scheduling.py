"""Handing out work: the next ready subtask an agent can do, claimed atomically.

Ready means: QUEUED, every prerequisite done (`waiting_on == 0`), past any retry backoff, in an
execution that is QUEUED or RUNNING and not being paused or cancelled, assigned to this agent or to
none, with an action the agent supports. On PostgreSQL the candidate row is taken with
`FOR UPDATE SKIP LOCKED`, so concurrent pollers pass over each other's claims instead of waiting or
colliding; on SQLite the unit of work's BEGIN IMMEDIATE serialises claimers.

A claim is not final until its agent acknowledges it: the worker stamps `acknowledged_at` when it
applies the agent's first event about the subtask. Until then the committed claim may be one whose
answer never arrived (a client timeout while a lock held the commit back, a web process killed
after the commit), so the agent's next poll gets the same subtask and attempt again, marked
`"redelivered": true`, instead of new work or a 204; and the sweeper puts it back in the queue after
CLAIM_ACK_SECONDS without costing an attempt (orchestrator/sweeper.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, or_, select
from sqlalchemy.orm import Session

from orchestrator.agents import capability_actions
from orchestrator.effects import AfterCommit
from orchestrator.errors import Forbidden, NotFound
from orchestrator.execution_graph import DONE_SUBTASK, ExecutionGraph, load_graphs, skip_subtask, start_subtask
from orchestrator.models import Agent, Execution, ExecutionSubtask, Plan, PlanSubtask, PlanTask
from orchestrator.publish import execution_update
from orchestrator.state_machine import ExecutionStatus, SubtaskStatus
from orchestrator.transitions import move_execution

CONTEXT_ITEMS = 5
# Candidates one poll tries when the first turns out unfit once locked (a race with a person).
MAX_CANDIDATES = 5


@dataclass
class ClaimResult:
    payload: dict[str, Any] | None  # the guide's 200 body, or None for 204
    after: AfterCommit = field(default_factory=AfterCommit)


def _candidate(session: Session, agent_id: str, actions: set[str] | None, now: datetime,
               passed: set[str], owner_id: str | None = None) -> ExecutionSubtask | None:
    q = (
        select(ExecutionSubtask)
        .join(Execution, Execution.id == ExecutionSubtask.execution_id)
        .where(
            ExecutionSubtask.status == SubtaskStatus.QUEUED,
            ExecutionSubtask.waiting_on == 0,
            or_(ExecutionSubtask.not_before.is_(None), ExecutionSubtask.not_before <= now),
            Execution.status.in_([ExecutionStatus.QUEUED, ExecutionStatus.RUNNING]),
            Execution.pause_requested.is_(False),
            Execution.cancel_requested.is_(False),
            or_(Execution.agent_id.is_(None), Execution.agent_id == agent_id),
        )
        .order_by(ExecutionSubtask.priority, Execution.created_at, Execution.id, ExecutionSubtask.position)
        .limit(1)
    )
    if owner_id is not None:  # an operator's agent works only on that operator's executions
        q = q.where(Execution.owner_id == owner_id)
    if passed:  # candidates this poll already found unfit once locked
        q = q.where(ExecutionSubtask.id.not_in(sorted(passed)))
    if actions is not None:
        q = q.join(PlanSubtask, and_(PlanSubtask.plan_id == ExecutionSubtask.plan_id,
                                     PlanSubtask.id == ExecutionSubtask.plan_subtask_id)).where(
            PlanSubtask.action.in_(sorted(actions)))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=ExecutionSubtask)
    return session.scalar(q)


def _summary(title: str, result: dict[str, Any] | None) -> str:
    note = (result or {}).get("message") or (result or {}).get("summary")
    return f"{title}: {note}" if note else title


def _payload(session: Session, g: ExecutionGraph, sub: ExecutionSubtask, force: dict[str, Any]) -> dict[str, Any]:
    ex = g.execution
    plan = session.get(Plan, ex.plan_id)
    psubs = {s.id: s for s in session.scalars(select(PlanSubtask).where(PlanSubtask.plan_id == ex.plan_id))}
    ps = psubs[sub.plan_subtask_id]
    done = sorted((s for s in g.subtasks.values() if s.status == SubtaskStatus.COMPLETE),
                  key=lambda s: (s.completed_at or s.started_at or ex.created_at, s.position))
    upcoming = [s for s in g.subtasks.values() if s.status not in DONE_SUBTASK and s is not sub
                and s.status != SubtaskStatus.RUNNING]
    return {
        "work_available": True,
        "execution_id": ex.id,
        "plan_id": ex.plan_id,
        "next_task": {
            "task_id": sub.plan_subtask_id,
            "title": ps.title,
            "action": ps.action,
            "params": {**(ps.params or {}), **(sub.params_override or {})},
            "timeout_hours": ps.timeout_hours,
            "retry_policy": ps.retry_policy or {},
            "attempt": sub.attempt,
            "max_attempts": sub.max_attempts,
            "context": {
                "plan_goal": plan.goal if plan else None,
                "previous_tasks": [_summary(psubs[s.plan_subtask_id].title, s.result_data)
                                   for s in done[-CONTEXT_ITEMS:]],
                "upcoming_tasks": [psubs[s.plan_subtask_id].title for s in upcoming[:CONTEXT_ITEMS]],
            },
        },
        **force,
    }


def _held(session: Session, agent_id: str) -> list[Row[Any]]:
    """What the agent holds (RUNNING subtasks), with their executions' pause and cancel state: the
    holder index's one query, which every poll makes."""
    return list(session.execute(
        select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id, ExecutionSubtask.claimed_at,
               ExecutionSubtask.acknowledged_at, Execution.status, Execution.pause_requested,
               Execution.cancel_requested)
        .join(Execution, Execution.id == ExecutionSubtask.execution_id)
        .where(ExecutionSubtask.agent_id == agent_id, ExecutionSubtask.status == SubtaskStatus.RUNNING)
    ).all())


def _force_flags(session: Session, held: list[Row[Any]], result: ClaimResult, now: datetime) -> dict[str, Any]:
    """force_pause / force_cancel for work the agent holds; cancelled work is released here."""
    paused = [h for h in held if h.status == ExecutionStatus.PAUSED or h.pause_requested]
    cancelled = [h for h in held if h.status == ExecutionStatus.CANCELLED or h.cancel_requested]
    if cancelled:
        graphs = load_graphs(session, {h.execution_id for h in cancelled}, lock=True)
        for h in cancelled:
            g = graphs[h.execution_id]
            sub = g.subtasks[h.plan_subtask_id]
            sub.agent_id = None
            skip_subtask(g, sub, now)
            result.after.release(h.execution_id, h.plan_subtask_id)
    return {
        "force_pause": bool(paused),
        "force_cancel": bool(cancelled),
        "held": [{"execution_id": h.execution_id, "task_id": h.plan_subtask_id,
                  "signal": "cancel" if h in cancelled else "pause"} for h in [*cancelled, *paused]],
    }


def _redeliver(session: Session, agent_id: str, held: list[Row[Any]], actions: set[str] | None,
               result: ClaimResult) -> bool:
    """Answer again with the oldest claim the agent has not acknowledged, if any; say whether it did.

    No event about it has been applied, so the agent may never have received the poll's answer (it
    timed out on its side, or the web process died after the commit): it gets the same subtask and
    attempt again rather than new work beside it. Redelivery leaves `claimed_at` alone, so a claim
    its agent keeps polling past but never acknowledges still expires (orchestrator/sweeper.py).
    """
    for h in sorted((h for h in held if h.acknowledged_at is None and h.claimed_at is not None),
                    key=lambda h: h.claimed_at):
        g = load_graphs(session, [h.execution_id], lock=True)[h.execution_id]
        sub = g.subtasks[h.plan_subtask_id]
        # Checked again on the locked row: the sweeper may have put it back since the query.
        if sub.status != SubtaskStatus.RUNNING or sub.agent_id != agent_id or sub.acknowledged_at is not None:
            continue
        payload = _payload(session, g, sub, {"force_pause": False, "force_cancel": False})
        if actions is not None and payload["next_task"]["action"] not in actions:
            continue  # not what this poll can do: it expires and goes to an agent that can
        result.payload = {**payload, "redelivered": True}
        # The first answer's hold may never have reached Redis (that is one way answers get lost).
        result.after.holds.append((g.execution.id, sub.plan_subtask_id, agent_id))
        return True
    return False


def _still_ready(g: ExecutionGraph, sub: ExecutionSubtask, agent_id: str, now: datetime) -> bool:
    """The candidate test again, on the locked rows: a person may have paused or cancelled the
    execution (or reassigned it) between the candidate query and the execution lock."""
    ex = g.execution
    return (
        sub.status == SubtaskStatus.QUEUED and sub.waiting_on == 0
        and (sub.not_before is None or sub.not_before <= now)
        and ex.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
        and not ex.pause_requested and not ex.cancel_requested
        and ex.agent_id in (None, agent_id)
    )


def claim_work(session: Session, agent_id: str, supported_actions: set[str] | None, now: datetime) -> ClaimResult:
    """Claim the next ready subtask for `agent_id` inside the caller's unit of work. Each poll is a heartbeat.

    `supported_actions` None means the agent's registered capabilities, or any action when it has none.
    While the agent holds work in a paused or cancelled execution it is told so (force_pause /
    force_cancel) and given nothing new; held work of a cancelled execution is released (SKIPPED).
    Otherwise a claim the agent has not acknowledged is answered again before anything new is looked for.
    """
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    if not agent.is_active:
        raise Forbidden(f"Agent {agent_id} is deactivated.", agent_id=agent_id)
    result = ClaimResult(payload=None)
    held = _held(session, agent_id)
    force = _force_flags(session, held, result, now)
    forced = force["force_pause"] or force["force_cancel"]
    actions = supported_actions if supported_actions is not None else (capability_actions(agent) or None)
    if not forced and _redeliver(session, agent_id, held, actions, result):
        agent.last_heartbeat = now
        return result
    claimed: tuple[ExecutionGraph, ExecutionSubtask] | None = None
    passed: set[str] = set()
    for _ in range(0 if forced else MAX_CANDIDATES):
        sub = _candidate(session, agent_id, actions, now, passed, agent.owner_id)
        if sub is None:
            break
        # Lock order: the subtask row (SKIP LOCKED) and then its execution; every other writer locks
        # executions first and never touches a QUEUED, ready row, so the two orders cannot deadlock.
        g = load_graphs(session, [sub.execution_id], lock=True)[sub.execution_id]
        sub = g.subtasks[sub.plan_subtask_id]
        if _still_ready(g, sub, agent_id, now):
            claimed = (g, sub)
            break
        passed.add(sub.id)
    if claimed is not None:
        g, sub = claimed
        ex = g.execution
        before = (ex.status, ex.current_task_id)
        start_subtask(g, sub, agent_id, now)
        if ex.status == ExecutionStatus.QUEUED:
            move_execution(session, ex, ExecutionStatus.RUNNING, now, result.after, reason="first claim")
        result.after.holds.append((ex.id, sub.plan_subtask_id, agent_id))
        result.payload = _payload(session, g, sub, {"force_pause": False, "force_cancel": False})
        if (ex.status, ex.current_task_id) != before:  # the dashboard shows status and current task only
            title = session.scalar(select(PlanTask.title).where(PlanTask.plan_id == ex.plan_id,
                                                                PlanTask.id == ex.current_task_id))
            result.after.messages.append(execution_update(ex, title, now))
    elif forced:
        result.payload = {"work_available": False, "execution_id": None, "plan_id": None, "next_task": None,
                          **force}
    # Last, so the agent row is locked after the execution rows, in the same order as the event
    # worker (executions, then agents' heartbeats): updated first, it deadlocked with the worker.
    agent.last_heartbeat = now
    return result
