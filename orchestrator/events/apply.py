"""Applying a batch of agents' events in one transaction (the last step of the event path).

`apply_batch` runs inside the caller's unit of work. It skips events already in the log (a batch
delivered again after a crash: invariant 2), locks the touched executions, moves their subtasks,
tasks and state through `progress` and the state machine, and adds every event row at once.
It returns each event's outcome and, in an `AfterCommit`, what must happen only after the commit:
pub/sub messages, released holds, transition log lines and owner notifications (invariant 5).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from orchestrator.effects import AfterCommit
from orchestrator.event_positions import EventRow, add_events, event_row
from orchestrator.events.protocol import Envelope, rejected_outcome
from orchestrator.execution_graph import (
    ExecutionGraph,
    block_task,
    complete_subtask,
    fail_subtask,
    load_graphs,
    retries_left,
    retry_subtask,
)
from orchestrator.models import Agent, ExecutionEvent, ExecutionSubtask
from orchestrator.plan_catalog import PlanCatalog, PlanStep
from orchestrator.publish import event_message, execution_update, iso
from orchestrator.retry import RetryPolicy
from orchestrator.state_machine import (
    FINISHED_STATES,
    EventFacts,
    ExecutionStatus,
    InvalidStateTransition,
    SubtaskStatus,
    settle,
)
from orchestrator.transitions import move_execution

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id → its outcome
    after: AfterCommit = field(default_factory=AfterCommit)
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # error code → new events answered not applied

    def merge(self, other: BatchResult) -> None:
        """Add another (already committed) batch: its outcomes, counts and what it must do after its commit."""
        self.outcomes.update(other.outcomes)
        self.after.merge(other.after)
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.rejected.update(other.rejected)


@dataclass
class WorkerMemory:
    """What a worker process keeps between batches, to spare each batch queries: the plans it read,
    and when it last wrote each agent's `last_heartbeat`. Writing that at most every
    `heartbeat_every` per agent (as the poll does) spares a statement per agent per batch; the column
    then lags by that much at most (a rolled-back batch's write counts as written: a little more),
    against a silence window of minutes (HEARTBEAT_WINDOW_SECONDS)."""

    plans: PlanCatalog = field(default_factory=PlanCatalog)
    heartbeat_every: timedelta = timedelta(seconds=5)
    written: dict[str, datetime] = field(default_factory=dict)

    def heartbeats_due(self, seen: dict[str, datetime]) -> list[tuple[str, datetime]]:
        """The (agent, time) heartbeats of `seen` to write now, in one lock order across workers."""
        if len(self.written) > 50_000:
            self.written.clear()
        due = [(agent_id, at) for agent_id, at in sorted(seen.items())
               if (last := self.written.get(agent_id)) is None or at - last >= self.heartbeat_every or at < last]
        self.written.update(due)
        return due


def _load_plans(session: Session, graphs: dict[str, ExecutionGraph], plans: PlanCatalog) -> None:
    plans.load(session, [(g.execution.plan_id, g.subtasks, [t.plan_task_id for t in g.tasks.values()])
                         for g in graphs.values()])


def _find_subtask(g: ExecutionGraph, agent_id: str, body: dict[str, Any]) -> ExecutionSubtask | None:
    ref = body.get("subtask_id") or body.get("task_id")
    if not ref:
        return None
    sub = g.subtasks.get(ref)
    if sub is not None:
        return sub
    task = g.tasks.get(ref)
    if task is None:
        return None
    held = [s for s in g.subtasks_of(task) if s.agent_id == agent_id and s.status == SubtaskStatus.RUNNING]
    return held[0] if len(held) == 1 else None


class _Applier:
    def __init__(self, session: Session, now: datetime, graphs: dict[str, ExecutionGraph],
                 memory: WorkerMemory) -> None:
        self.session = session
        self.now = now
        self.graphs = graphs
        self.memory = memory
        self.plans = memory.plans
        self.result = BatchResult()
        self.rows: list[EventRow] = []
        self.heartbeats: dict[str, datetime] = {}
        self.touched: dict[str, ExecutionGraph] = {}
        # execution id → its next ready subtask and that step, while no event of the batch moved its
        # subtasks: most events (heartbeats, task_started) do not, and the search scans them all.
        self.next_up: dict[str, tuple[ExecutionSubtask | None, PlanStep | None]] = {}

    def apply(self, env: Envelope) -> None:
        body = env.body
        if env.execution_id is None:
            # An agent's liveness heartbeat: it refreshes the agent and goes into no execution's log.
            self._seen(env)
            self.result.outcomes[env.id] = {"event_id": env.id, "execution_id": None, "agent_id": env.agent_id,
                                            "recorded_at": iso(env.received_at), "applied": True}
            self.result.applied += 1
            return
        g = self.graphs.get(env.execution_id)
        if g is None:
            # Without an execution there is nothing to log the event against (the FK would refuse it).
            self.result.outcomes[env.id] = rejected_outcome(env, "not_found",
                                                            f"Execution {env.execution_id} not found.")
            return
        self._seen(env)
        sub = _find_subtask(g, env.agent_id, body)
        row = event_row(
            id=env.id, execution_id=env.execution_id, agent_id=env.agent_id, source="agent",
            event_type=body["event_type"], task_id=body.get("task_id"),
            subtask_id=sub.plan_subtask_id if sub is not None else body.get("subtask_id"),
            status=body.get("status"), message=body.get("message"), output_data=body.get("output_data"),
            error_type=body.get("error_type"), error_message=body.get("error_message"),
            human_review_required=bool(body.get("human_review_required")), suggestions=body.get("suggestions"),
            timestamp=env.received_at, agent_timestamp=_parse_ts(body.get("agent_timestamp")),
        )
        outcome = self._apply_to_graph(env, g, sub)
        row["outcome"] = outcome
        self.rows.append(row)
        self.result.outcomes[env.id] = outcome
        self.result.after.messages.append(event_message(row, g.execution.owner_id))
        self.touched[g.execution.id] = g
        self.result.applied += 1

    @staticmethod
    def _acknowledge(env: Envelope, sub: ExecutionSubtask | None) -> None:
        """The holder's first event about its claim shows that the poll's answer reached it: from now
        on the poll stops handing the claim out again and the sweeper's CLAIM_ACK_SECONDS no longer
        applies (orchestrator/scheduling.py, orchestrator/sweeper.py)."""
        if (sub is not None and sub.acknowledged_at is None and sub.status == SubtaskStatus.RUNNING
                and sub.agent_id == env.agent_id):
            sub.acknowledged_at = env.received_at

    def _seen(self, env: Envelope) -> None:
        self.heartbeats[env.agent_id] = max(self.heartbeats.get(env.agent_id, env.received_at), env.received_at)

    def _apply_to_graph(self, env: Envelope, g: ExecutionGraph, sub: ExecutionSubtask | None) -> dict[str, Any]:
        body, ex = env.body, g.execution
        kind = body["event_type"]
        if kind == "heartbeat":
            self._acknowledge(env, sub)  # one that names a held subtask shows the agent has it too
            return self._ok(env, g)
        if ex.status in FINISHED_STATES:
            return rejected_outcome(env, "execution_finished",
                                    f"Execution {ex.id} is {ex.status}; the report was logged.")
        if sub is None:
            return rejected_outcome(env, "unknown_subtask", "The event names no subtask of this execution.")
        if sub.status != SubtaskStatus.RUNNING or sub.agent_id != env.agent_id:
            return rejected_outcome(env, "not_holder",
                                    f"Agent {env.agent_id} does not hold subtask {sub.plan_subtask_id}.")
        self._acknowledge(env, sub)

        facts: EventFacts
        extra: dict[str, Any] = {}
        error_text = body.get("error_message") or body.get("message")
        if kind == "task_started":
            facts = EventFacts(kind)
        elif kind in ("subtask_complete", "task_complete"):
            complete_subtask(g, sub, body.get("output_data"), self.now)
            self._release(ex.id, sub)
            facts = EventFacts(kind, all_done=g.all_done())
        elif kind == "task_blocked" or body.get("human_review_required") or body.get("blocking"):
            options = block_task(g, sub, error_text, body.get("suggestions"), body.get("next_step_options"))
            self._release(ex.id, sub)
            facts = EventFacts(kind, human_review_required=bool(body.get("human_review_required")),
                               blocking=True)
            extra = {"human_review_required": True, "escalated_to": ex.owner_id, "next_step_options": options}
            self.result.after.notifications.append({
                "execution_id": ex.id, "owner_id": ex.owner_id, "task_id": g.task_of(sub).plan_task_id,
                "subtask_id": sub.plan_subtask_id, "error_type": body.get("error_type"), "error_message": error_text,
                "suggestions": body.get("suggestions") or [], "next_step_options": options,
            })
        else:  # task_error that needs no person
            can_retry = retries_left(sub)
            if can_retry:
                policy = RetryPolicy.from_json(self._plan_subtask(ex.plan_id, sub).retry_policy)
                retry_at = retry_subtask(sub, policy, error_text, self.now, g=g)
                extra = {"retry_scheduled": True, "attempt": sub.attempt, "retry_at": iso(retry_at)}
            else:
                fail_subtask(g, sub, error_text, self.now)
                extra = {"retry_scheduled": False, "attempts_exhausted": True}
            self._release(ex.id, sub)
            facts = EventFacts(kind, retries_left=can_retry)
        if kind != "task_started":
            self.next_up.pop(ex.id, None)  # the subtask moved: what comes next may have changed

        try:
            path = settle(ex.status, facts)
        except InvalidStateTransition as exc:
            # The subtask moved, but the execution cannot (a fatal error while PAUSED): say so.
            extra["state_change_refused"] = str(exc)
            path = []
        self._move(g, path, kind, error_text)
        return {**self._ok(env, g), **extra}

    def _move(self, g: ExecutionGraph, path: list[str], kind: str, error_text: str | None) -> None:
        for target in path:
            move_execution(self.session, g.execution, target, self.now, self.result.after, reason=kind,
                           detail=error_text)

    def _ok(self, env: Envelope, g: ExecutionGraph) -> dict[str, Any]:
        ex = g.execution
        nxt, nxt_plan = self._next_up(g) if ex.status not in FINISHED_STATES else (None, None)
        if ex.status == ExecutionStatus.COMPLETED:
            message = "Execution complete."
        elif nxt_plan is not None:
            message = f"Recorded. Next: {nxt_plan.title}"
        else:
            message = ex.status_message or "Recorded."
        return {
            "event_id": env.id, "execution_id": ex.id, "agent_id": env.agent_id, "recorded_at": iso(env.received_at),
            "applied": True,
            "status": ex.status, "next_task_id": nxt.plan_subtask_id if nxt is not None else None,
            "next_action": nxt_plan.action if nxt_plan is not None else None, "status_message": message,
        }

    def _next_up(self, g: ExecutionGraph) -> tuple[ExecutionSubtask | None, PlanStep | None]:
        ex = g.execution
        found = self.next_up.get(ex.id)
        if found is None:
            nxt = g.next_ready(self.now)
            found = self.next_up[ex.id] = (nxt, self._plan_subtask(ex.plan_id, nxt) if nxt is not None else None)
        return found

    def _plan_subtask(self, plan_id: str, sub: ExecutionSubtask) -> PlanStep:
        return self.plans.step(plan_id, sub.plan_subtask_id)

    def _release(self, execution_id: str, sub: ExecutionSubtask) -> None:
        self.result.after.release(execution_id, sub.plan_subtask_id)

    def finish(self) -> BatchResult:
        """Write the heartbeats, then hand the event rows over: they are inserted in one statement as
        the transaction commits, numbered on their way in (`orchestrator/event_positions.py`)."""
        for agent_id, seen in self.memory.heartbeats_due(self.heartbeats):
            self.session.execute(
                update(Agent).where(Agent.id == agent_id).values(last_heartbeat=seen),
                execution_options={"synchronize_session": False},
            )
        for g in self.touched.values():
            ex = g.execution
            title = self.plans.task_title(ex.plan_id, ex.current_task_id or "")
            self.result.after.messages.append(execution_update(ex, title, self.now))
        add_events(self.session, self.rows)
        self.result.after.work_moved |= {g.execution.owner_id for g in self.graphs.values() if g.readied}
        return self.result


def _parse_ts(raw: Any) -> datetime | None:
    if raw is None or isinstance(raw, datetime):
        return raw
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def apply_batch(session: Session, envelopes: list[Envelope], now: datetime, memory: WorkerMemory | None = None,
                *, first_delivery: bool = False) -> BatchResult:
    """Apply `envelopes` (in acceptance order) inside the caller's transaction.

    `memory`: the worker's, kept between batches (without one, every plan is read and every
    heartbeat written). `first_delivery`: none of the envelopes was ever read before (the drain
    read them as new entries of its stream and this is the first try), so none can be in the log
    and the query that looks for them is skipped; should one be there after all, its insert fails
    and the caller's retry, no longer a first try, finds it."""
    memory = memory if memory is not None else WorkerMemory(heartbeat_every=timedelta(0))
    ids = list(dict.fromkeys(e.id for e in envelopes))
    seen: dict[str, Any] = {} if first_delivery else {
        eid: outcome
        for eid, outcome in session.execute(
            select(ExecutionEvent.id, ExecutionEvent.outcome).where(ExecutionEvent.id.in_(ids))
        )
    }
    fresh: list[Envelope] = []
    queued: set[str] = set()
    for env in envelopes:
        if env.id in seen or env.id in queued:
            continue
        queued.add(env.id)
        fresh.append(env)
    graphs = load_graphs(session, {e.execution_id for e in fresh if e.execution_id is not None}, lock=True,
                         results=False)
    _load_plans(session, graphs, memory.plans)
    applier = _Applier(session, now, graphs, memory)
    for env in fresh:
        applier.apply(env)
    result = applier.finish()
    result.rejected.update(o["error"]["code"] for o in result.outcomes.values() if not o.get("applied", True))
    for eid, outcome in seen.items():
        result.outcomes[eid] = outcome or {"event_id": eid, "applied": True}
    result.duplicates = len(envelopes) - len(fresh)
    return result
