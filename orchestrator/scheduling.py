"""Handing out work: the next ready subtask an agent can do, claimed atomically.

Ready means: QUEUED, every prerequisite done (`waiting_on == 0`), past any retry backoff, in an
execution that is QUEUED or RUNNING and not being paused or cancelled, assigned to this agent or to
none, with an action the agent supports. A claim locks the candidate's execution first, as every
writer of an execution's rows does, and reads the subtask again under that lock, so two claims of
one subtask cannot both see it ready. On PostgreSQL the lock is taken with `FOR UPDATE SKIP LOCKED`:
concurrent pollers pass over executions other transactions hold instead of queueing behind them;
on SQLite the unit of work's BEGIN IMMEDIATE serialises claimers.

A claim is not final until its agent acknowledges it: the worker stamps `acknowledged_at` when it
applies the agent's first event about the subtask. Until then the committed claim may be one whose
answer never arrived (a client timeout while a lock held the commit back, a web process killed
after the commit), so the agent's next poll gets the same subtask and attempt again, marked
`"redelivered": true`, instead of new work or a 204; and the sweeper puts it back in the queue after
CLAIM_ACK_SECONDS without costing an attempt (orchestrator/sweeper.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, String, and_, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from orchestrator.agents import capability_actions
from orchestrator.effects import AfterCommit
from orchestrator.errors import Forbidden, NotFound
from orchestrator.execution_graph import DONE_SUBTASK, ExecutionGraph, load_graphs, skip_subtask, start_subtask
from orchestrator.models import Agent, Execution, ExecutionSubtask, PlanSubtask
from orchestrator.plan_catalog import PlanCatalog
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.publish import execution_update
from orchestrator.ready_work import Pool
from orchestrator.state_machine import FINISHED_STATES, ExecutionStatus, SubtaskStatus
from orchestrator.transitions import move_execution

CONTEXT_ITEMS = 5
# Ready subtasks a claim reads at once (in the order they are handed out), and how many of their
# executions, at most, it may lock one of.
CANDIDATES = 100
MAX_EXECUTIONS = 20
# How long a poll that saw ready work only in executions other transactions held (and the polls of
# its pool) is answered 204 without looking again: what it would have been answered meanwhile but
# for a lock let go in that time, without the database's work.
BUSY_RECHECK = timedelta(milliseconds=50)


@dataclass
class ClaimResult:
    payload: dict[str, Any] | None  # the guide's 200 body, or None for 204
    after: AfterCommit = field(default_factory=AfterCommit)
    # With a 204 (orchestrator/ready_work.py): when a subtask this agent could do becomes ready
    # without a commit to announce it (the end of a retry backoff; `now` when this poll is unsure);
    # None when there is none. And the agent's pool when it is free: it holds nothing and has no
    # unfinished execution assigned, so it can only be offered its pool's unassigned work.
    next_ready_at: datetime | None = None
    free_in: Pool | None = None


def _waiting_for(q: Select[Any], with_agent: bool, with_owner: bool, with_actions: bool) -> Select[Any]:
    """`q` (on ExecutionSubtask) narrowed to QUEUED subtasks with no prerequisite left that agent
    `:agent_id` may do: in an execution that runs and is not being paused or cancelled, assigned to
    it or to none (without `with_agent`: to none), of its owner `:owner_id`, with one of `:actions`
    (without `with_actions`: any action but MANUAL_ACTION).
    Their retry backoff is left to the caller. Built once per shape, with bound parameters, so that
    a poll neither builds nor compiles SQL (`_params` fills them in)."""
    q = q.join(Execution, Execution.id == ExecutionSubtask.execution_id).where(
        ExecutionSubtask.status == SubtaskStatus.QUEUED,
        ExecutionSubtask.waiting_on == 0,
        Execution.status.in_([ExecutionStatus.QUEUED, ExecutionStatus.RUNNING]),
        Execution.pause_requested.is_(False),
        Execution.cancel_requested.is_(False),
        or_(Execution.agent_id.is_(None), Execution.agent_id == bindparam("agent_id")) if with_agent
        else Execution.agent_id.is_(None),
    )
    if with_owner:  # an operator's agent works only on that operator's executions
        q = q.where(Execution.owner_id == bindparam("owner_id"))
    q = q.join(PlanSubtask, and_(PlanSubtask.plan_id == ExecutionSubtask.plan_id,
                                 PlanSubtask.id == ExecutionSubtask.plan_subtask_id))
    action = func.coalesce(ExecutionSubtask.action_override, PlanSubtask.action)  # a person's switch first
    if with_actions:
        return q.where(action.in_(bindparam("actions", expanding=True)))
    # An agent that declares no actions may do any, but not a placeholder for human work: only an agent
    # that declares MANUAL_ACTION (among its actions, above) claims that.
    return q.where(or_(action.is_(None), action != MANUAL_ACTION))


def _params(agent_id: str | None, owner_id: str | None, actions: set[str] | None, now: datetime) -> dict[str, Any]:
    params: dict[str, Any] = {"now": now}
    if agent_id is not None:
        params["agent_id"] = agent_id
    if owner_id is not None:
        params["owner_id"] = owner_id
    if actions is not None:
        params["actions"] = sorted(actions)
    return params


@functools.cache
def _readiness_query(with_agent: bool, with_owner: bool, with_actions: bool) -> Select[Any]:
    """Whether a subtask the agent could do is ready at `:now` (1) or not (0, NULL when none waits),
    and when the first one held back by a retry backoff becomes ready (NULL when none is)."""
    now = bindparam("now", type_=ExecutionSubtask.not_before.type)
    not_before = ExecutionSubtask.not_before
    ready = func.max(case((or_(not_before.is_(None), not_before <= now), 1), else_=0))
    return _waiting_for(select(ready, func.min(case((not_before > now, not_before)))),
                        with_agent, with_owner, with_actions)


def _readiness(session: Session, params: dict[str, Any]) -> tuple[bool, datetime | None]:
    q = _readiness_query("agent_id" in params, "owner_id" in params, "actions" in params)
    ready, backoff_ends = session.execute(q, params).one()
    return bool(ready), backoff_ends


def pool_readiness(session: Session, pool: Pool, now: datetime) -> tuple[bool, datetime | None]:
    """Whether unassigned work that `pool`'s agents could do is ready at `now`, and when the first
    retry backoff among it ends: one unlocked query (orchestrator/ready_work.py)."""
    return _readiness(session, _params(None, pool.owner_id, pool.actions, now))


@functools.cache
def _candidates_query(with_owner: bool, with_actions: bool) -> Select[Any]:
    # Ids only: the rows are read again once their execution is locked, and an object loaded now
    # would stay in the session as it was, however much it had changed by then.
    return _waiting_for(select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id),
                        True, with_owner, with_actions).where(
        or_(ExecutionSubtask.not_before.is_(None), ExecutionSubtask.not_before <= bindparam("now")),
    ).order_by(ExecutionSubtask.priority, Execution.created_at, Execution.id,
               ExecutionSubtask.position).limit(CANDIDATES)


def _candidates(session: Session, params: dict[str, Any]) -> dict[str, list[str]]:
    """The first ready subtasks, in the order they are handed out, by execution: a plain read, which
    locks nothing."""
    found: dict[str, list[str]] = {}
    for execution_id, subtask_id in session.execute(
            _candidates_query("owner_id" in params, "actions" in params), params):
        found.setdefault(execution_id, []).append(subtask_id)
    return found


@functools.cache
def _lock_first_free_query() -> Select[Any]:
    ids = bindparam("ids", type_=postgresql.ARRAY(String))
    return (select(Execution.id).where(Execution.id == func.any(ids)).order_by(func.array_position(ids, Execution.id))
            .limit(1).with_for_update(skip_locked=True))


def _lock_first_free(session: Session, execution_ids: list[str]) -> str | None:
    """Lock the first of `execution_ids` that no other transaction holds; None when all are held.
    SQLite's write lock is held already: the first is free."""
    if session.get_bind().dialect.name != "postgresql":
        return execution_ids[0]
    return session.scalar(_lock_first_free_query(), {"ids": execution_ids})


@functools.cache
def _agent_query() -> Select[Any]:
    """The agent, and whether an execution that has not finished is assigned to it."""
    assigned = select(Execution.id).where(
        Execution.agent_id == Agent.id, Execution.status.not_in(sorted(FINISHED_STATES))).exists()
    return select(Agent, assigned).where(Agent.id == bindparam("agent_id"))


def _summary(title: str, result: dict[str, Any] | None) -> str:
    note = (result or {}).get("message") or (result or {}).get("summary")
    return f"{title}: {note}" if note else title


def _payload(session: Session, g: ExecutionGraph, sub: ExecutionSubtask, force: dict[str, Any],
             plans: PlanCatalog) -> dict[str, Any]:
    ex = g.execution
    plans.load(session, [(ex.plan_id, g.subtasks.keys(), [ex.current_task_id] if ex.current_task_id else [])])
    ps = plans.step(ex.plan_id, sub.plan_subtask_id)
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
            "action": sub.action_override or ps.action,
            "params": {**(ps.params or {}), **(sub.params_override or {})},
            "timeout_hours": ps.timeout_hours,
            "retry_policy": ps.retry_policy or {},
            "attempt": sub.attempt,
            "max_attempts": sub.max_attempts,
            "context": {
                "plan_goal": plans.goal(ex.plan_id),
                "previous_tasks": [_summary(plans.subtask_title(ex.plan_id, s.plan_subtask_id), s.result_data)
                                   for s in done[-CONTEXT_ITEMS:]],
                "upcoming_tasks": [plans.subtask_title(ex.plan_id, s.plan_subtask_id)
                                   for s in upcoming[:CONTEXT_ITEMS]],
            },
        },
        **force,
    }


@functools.cache
def _held_query() -> Select[Any]:
    return (
        select(ExecutionSubtask.execution_id, ExecutionSubtask.plan_subtask_id, ExecutionSubtask.claimed_at,
               ExecutionSubtask.acknowledged_at, Execution.status, Execution.pause_requested,
               Execution.cancel_requested)
        .join(Execution, Execution.id == ExecutionSubtask.execution_id)
        .where(ExecutionSubtask.agent_id == bindparam("agent_id"), ExecutionSubtask.status == SubtaskStatus.RUNNING)
    )


def _held(session: Session, agent_id: str) -> list[Row[Any]]:
    """What the agent holds (RUNNING subtasks), with their executions' pause and cancel state: the
    holder index's one query, which every poll makes."""
    return list(session.execute(_held_query(), {"agent_id": agent_id}).all())


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
               result: ClaimResult, plans: PlanCatalog) -> bool:
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
        payload = _payload(session, g, sub, {"force_pause": False, "force_cancel": False}, plans)
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


def claim_work(session: Session, agent_id: str, supported_actions: set[str] | None, now: datetime,
               heartbeat_every: timedelta = timedelta(0), plans: PlanCatalog | None = None) -> ClaimResult:
    """Claim the next ready subtask for `agent_id` inside the caller's unit of work. Each poll is a
    heartbeat, written when the last one is `heartbeat_every` old (the poll of an idle agent then
    writes nothing, and its transaction commits without a write).

    `supported_actions` None means the agent's registered capabilities, or any action when it has none.
    While the agent holds work in a paused or cancelled execution it is told so (force_pause /
    force_cancel) and given nothing new; held work of a cancelled execution is released (SKIPPED).
    Otherwise a claim the agent has not acknowledged is answered again before anything new is looked for.
    `plans`: the process's plan catalog (a fresh one, read from the database, when None).
    """
    plans = plans if plans is not None else PlanCatalog()
    row = session.execute(_agent_query(), {"agent_id": agent_id}).first()
    if row is None:
        raise NotFound(f"Agent {agent_id} not found.", agent_id=agent_id)
    agent, assigned = row
    if not agent.is_active:
        raise Forbidden(f"Agent {agent_id} is deactivated.", agent_id=agent_id)
    result = ClaimResult(payload=None)
    held = _held(session, agent_id)
    force = _force_flags(session, held, result, now)
    forced = force["force_pause"] or force["force_cancel"]
    actions = supported_actions if supported_actions is not None else (capability_actions(agent) or None)
    if not forced and _redeliver(session, agent_id, held, actions, result, plans):
        _heartbeat(agent, now, heartbeat_every)
        return result
    claimed: tuple[ExecutionGraph, ExecutionSubtask] | None = None
    ready, backoff_ends = False, None
    if not forced:
        params = _params(agent_id, agent.owner_id, actions, now)
        # One unlocked look first: when nothing is ready, as for most polls, that is all they cost.
        ready, backoff_ends = _readiness(session, params)
        if ready:
            claimed = _claim_candidate(session, agent_id, params, now)
    if claimed is not None:
        _hand_out(session, *claimed, agent_id, now, result, plans)
    elif forced:
        result.payload = {"work_available": False, "execution_id": None, "plan_id": None, "next_task": None,
                          **force}
    else:
        # Ready work it could not claim is another transaction's now (a claimer's, the worker's),
        # which may leave it ready without a word: look again shortly, not at once. Polls of the
        # pool until then would have found the same (its ready work all held), at the cost of a look.
        result.next_ready_at = now + BUSY_RECHECK if ready else backoff_ends
        if not held and not assigned:
            result.free_in = Pool(agent.owner_id, frozenset(actions) if actions is not None else None)
    # Last, so the agent row is locked after the execution rows, in the same order as the event
    # worker (executions, then agents' heartbeats): updated first, it deadlocked with the worker.
    _heartbeat(agent, now, heartbeat_every)
    return result


def _hand_out(session: Session, g: ExecutionGraph, sub: ExecutionSubtask, agent_id: str, now: datetime,
              result: ClaimResult, plans: PlanCatalog) -> None:
    """The claim itself, on the locked execution: the subtask is the agent's, and the answer says so."""
    ex = g.execution
    start_subtask(g, sub, agent_id, now)
    if ex.status == ExecutionStatus.QUEUED:
        move_execution(session, ex, ExecutionStatus.RUNNING, now, result.after, reason="first claim")
    result.after.holds.append((ex.id, sub.plan_subtask_id, agent_id))
    result.payload = _payload(session, g, sub, {"force_pause": False, "force_cancel": False}, plans)
    # Always, even when the execution's status and current task stay: the execution page shows each
    # subtask's state, and a claim moves one (QUEUED -> RUNNING) with no event of its own.
    title = plans.task_title(ex.plan_id, ex.current_task_id) if ex.current_task_id else None
    result.after.messages.append(execution_update(ex, title, now))


def _claim_candidate(session: Session, agent_id: str, params: dict[str, Any],
                     now: datetime) -> tuple[ExecutionGraph, ExecutionSubtask] | None:
    """Lock the first execution with ready subtasks that no other transaction holds, and return it
    with the first of those subtasks still ready once it is locked; None when there is none.

    Executions are locked first, as every writer does, and never waited for: the claimers of one
    execution's subtasks would queue up behind each other (and behind the event worker), each
    holding a thread and a connection. Concurrent claimers spread over the executions with ready
    work instead. One that finds them all held answers 204 and looks again shortly (BUSY_RECHECK)."""
    found = _candidates(session, params)
    order = list(found)[:MAX_EXECUTIONS]
    while order:
        execution_id = _lock_first_free(session, order)
        if execution_id is None:
            return None
        # Read under the lock `_lock_first_free` took (no second FOR UPDATE): a claim that committed
        # meanwhile shows here.
        g = load_graphs(session, [execution_id], lock=False)[execution_id]
        for subtask_id in found[execution_id]:
            if _still_ready(g, g.subtasks[subtask_id], agent_id, now):
                return g, g.subtasks[subtask_id]
        order.remove(execution_id)
    return None


def _heartbeat(agent: Agent, now: datetime, every: timedelta) -> None:
    last = agent.last_heartbeat
    if last is None or last <= now - every:
        agent.last_heartbeat = now
