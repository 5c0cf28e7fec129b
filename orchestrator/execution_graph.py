"""An execution loaded as a graph, and the moves that every writer makes on it.

The worker (applying agents' events), the poll (claiming work), a person (resolving a block) and
the sweeper (timeouts) all change subtasks the same way: through these functions, on rows loaded
with `load_graphs` inside the caller's unit of work. Nothing here commits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from orchestrator.models import Execution, ExecutionSubtask, ExecutionTask
from orchestrator.retry import RetryPolicy
from orchestrator.state_machine import SubtaskStatus, TaskStatus

DONE_SUBTASK = frozenset({SubtaskStatus.COMPLETE, SubtaskStatus.SKIPPED})
DONE_TASK = frozenset({TaskStatus.COMPLETE, TaskStatus.SKIPPED})

DEFAULT_NEXT_STEP_OPTIONS = ["approve_alternative", "retry_task", "skip_task", "cancel_execution"]


@dataclass
class ExecutionGraph:
    execution: Execution
    tasks: dict[str, ExecutionTask]  # by plan task id, in plan order
    subtasks: dict[str, ExecutionSubtask]  # by plan subtask id, in plan order
    dependents: dict[str, list[str]] = field(default_factory=dict)
    # A subtask became ready in this unit of work (its last prerequisite done, or back in the queue,
    # at once or after a backoff): the writer must tell idle polls to look again
    # (`AfterCommit.work_moved`, orchestrator/ready_work.py). Nothing else these moves do can turn
    # a poll's "nothing for you" into work.
    readied: bool = False

    def __post_init__(self) -> None:
        deps: dict[str, list[str]] = defaultdict(list)
        for sub in self.subtasks.values():
            for pre in sub.prerequisite_ids or []:
                deps[pre].append(sub.plan_subtask_id)
        self.dependents = dict(deps)

    def task_of(self, sub: ExecutionSubtask) -> ExecutionTask:
        return next(t for t in self.tasks.values() if t.id == sub.execution_task_id)

    def subtasks_of(self, task: ExecutionTask) -> list[ExecutionSubtask]:
        return [s for s in self.subtasks.values() if s.execution_task_id == task.id]

    def all_done(self) -> bool:
        return all(t.status in DONE_TASK for t in self.tasks.values())

    def next_ready(self, now: datetime) -> ExecutionSubtask | None:
        """The subtask the poll would hand out next (highest priority, then plan order)."""
        ready = [
            s for s in self.subtasks.values()
            if s.status == SubtaskStatus.QUEUED and s.waiting_on == 0 and (s.not_before is None or s.not_before <= now)
        ]
        return min(ready, key=lambda s: (s.priority, s.position), default=None)



def load_graphs(session: Session, execution_ids: Iterable[str], *, lock: bool = True,
                results: bool = True) -> dict[str, ExecutionGraph]:
    """Load executions with their tasks and subtasks: three queries however many executions.

    With `lock`, the execution rows are locked (FOR UPDATE on PostgreSQL; SQLite's write lock is
    already held by the unit of work), so concurrent writers to one execution take turns.
    Without `results`, the finished work's results are not read (they are encrypted, and decrypting
    every one of a large execution's costs its writers more than all the rest); they can still be set.
    """
    ids = sorted(set(execution_ids))
    if not ids:
        return {}
    q = select(Execution).where(Execution.id.in_(ids)).order_by(Execution.id)
    if lock:
        q = q.with_for_update()
    executions = {e.id: e for e in session.scalars(q)}
    unread = () if results else (defer(ExecutionTask.result_data), defer(ExecutionSubtask.result_data))
    tasks: dict[str, list[ExecutionTask]] = defaultdict(list)
    for t in session.scalars(
        select(ExecutionTask).where(ExecutionTask.execution_id.in_(ids)).order_by(ExecutionTask.position)
        .options(*unread[:1])
    ):
        tasks[t.execution_id].append(t)
    subs: dict[str, list[ExecutionSubtask]] = defaultdict(list)
    for s in session.scalars(
        select(ExecutionSubtask).where(ExecutionSubtask.execution_id.in_(ids)).order_by(ExecutionSubtask.position)
        .options(*unread[1:])
    ):
        subs[s.execution_id].append(s)
    return {
        eid: ExecutionGraph(
            execution=ex,
            tasks={t.plan_task_id: t for t in tasks[eid]},
            subtasks={s.plan_subtask_id: s for s in subs[eid]},
        )
        for eid, ex in executions.items()
    }


def _release_dependents(g: ExecutionGraph, sub: ExecutionSubtask) -> None:
    for dep_id in g.dependents.get(sub.plan_subtask_id, []):
        dep = g.subtasks[dep_id]
        if dep.waiting_on == 1 and dep.status == SubtaskStatus.QUEUED:
            g.readied = True
        dep.waiting_on = max(0, dep.waiting_on - 1)


def _refresh_task(g: ExecutionGraph, task: ExecutionTask, now: datetime) -> None:
    subs = g.subtasks_of(task)
    done = sum(1 for s in subs if s.status in DONE_SUBTASK)
    task.subtasks_completed = done
    task.progress_percent = round(100 * done / len(subs)) if subs else 100
    if done == len(subs) and task.status not in DONE_TASK:
        any_complete = any(s.status == SubtaskStatus.COMPLETE for s in subs)
        task.status = TaskStatus.COMPLETE if any_complete else TaskStatus.SKIPPED
        task.completed_at = now
        g.execution.tasks_completed = sum(1 for t in g.tasks.values() if t.status in DONE_TASK)
    _refresh_current_task(g)


def _refresh_current_task(g: ExecutionGraph) -> None:
    active = [t for t in g.tasks.values() if t.status not in DONE_TASK]
    running = [t for t in active if t.status in (TaskStatus.RUNNING, TaskStatus.BLOCKED)]
    current = (running or active or [None])[0]
    g.execution.current_task_id = current.plan_task_id if current is not None else None


def start_subtask(g: ExecutionGraph, sub: ExecutionSubtask, agent_id: str, now: datetime) -> None:
    """A claim: the agent holds the subtask from now on, unacknowledged until the agent's first event
    about it (orchestrator/events/apply.py)."""
    sub.status = SubtaskStatus.RUNNING
    sub.agent_id = agent_id
    sub.claimed_at = now
    sub.acknowledged_at = None
    sub.started_at = sub.started_at or now
    task = g.task_of(sub)
    if task.status == TaskStatus.QUEUED:
        task.status = TaskStatus.RUNNING
        task.started_at = task.started_at or now
    _refresh_current_task(g)


def complete_subtask(g: ExecutionGraph, sub: ExecutionSubtask, result: dict[str, Any] | None, now: datetime) -> None:
    sub.status = SubtaskStatus.COMPLETE
    sub.completed_at = now
    sub.result_data = result
    sub.error = None
    _release_dependents(g, sub)
    _refresh_task(g, g.task_of(sub), now)


def skip_subtask(g: ExecutionGraph, sub: ExecutionSubtask, now: datetime) -> None:
    if sub.status in DONE_SUBTASK:
        return
    sub.status = SubtaskStatus.SKIPPED
    sub.completed_at = now
    _release_dependents(g, sub)
    _refresh_task(g, g.task_of(sub), now)


def skip_task(g: ExecutionGraph, task: ExecutionTask, now: datetime) -> None:
    task.next_step_options = None
    if task.status == TaskStatus.BLOCKED:
        task.status = TaskStatus.RUNNING  # so that the refresh below can close it
    for sub in g.subtasks_of(task):
        skip_subtask(g, sub, now)
    _refresh_task(g, task, now)


def retries_left(sub: ExecutionSubtask) -> bool:
    return sub.attempt < sub.max_attempts


def unclaim_subtask(g: ExecutionGraph, sub: ExecutionSubtask) -> None:
    """Back in the queue, held by no one; its attempt is the caller's business."""
    g.readied = True
    sub.status = SubtaskStatus.QUEUED
    sub.agent_id = sub.claimed_at = sub.acknowledged_at = None


def retry_subtask(sub: ExecutionSubtask, policy: RetryPolicy, error: str | None, now: datetime,
                  *, g: ExecutionGraph, delay: float | None = None) -> datetime:
    """Put a failed subtask back in the queue for its next attempt, after the policy's backoff."""
    wait = policy.delay_after(sub.attempt) if delay is None else delay
    unclaim_subtask(g, sub)
    sub.error = error
    sub.attempt += 1
    sub.not_before = now + timedelta(seconds=wait)
    task = g.task_of(sub)
    if task.status in (TaskStatus.BLOCKED, TaskStatus.ERROR):
        task.status = TaskStatus.RUNNING
        task.next_step_options = None
        task.error_message = None
    return sub.not_before


def fail_subtask(g: ExecutionGraph, sub: ExecutionSubtask, error: str | None, now: datetime) -> None:
    sub.status = SubtaskStatus.ERROR
    sub.error = error
    sub.completed_at = now
    sub.agent_id = None
    task = g.task_of(sub)
    task.status = TaskStatus.ERROR
    task.error_message = error


def block_task(g: ExecutionGraph, sub: ExecutionSubtask, error: str | None, suggestions: list[Any] | None,
               options: list[str] | None) -> list[str]:
    """Stop a subtask for a person to decide; return the next-step options offered."""
    sub.status = SubtaskStatus.ERROR
    sub.error = error
    sub.agent_id = None
    task = g.task_of(sub)
    task.status = TaskStatus.BLOCKED
    task.error_message = error
    task.suggestions = list(suggestions or [])
    offered = list(dict.fromkeys([*(options or []), *DEFAULT_NEXT_STEP_OPTIONS]))
    task.next_step_options = offered
    _refresh_current_task(g)
    return offered
