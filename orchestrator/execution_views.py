"""Executions as the API and the dashboard show them: detail with the task tree, lists, the event log.

What people read here is masked (`orchestrator/masking.py`): the agents' free text and output
(messages, errors, suggestions, output data) show emails and phone numbers as `c***@example.com`
and `***-***-9416`. Only the execution's owner may ask for it raw (`raw=True`); anyone else asking,
an admin included, is refused: seeing raw personal data is the owner's business.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.credentials import Principal
from orchestrator.errors import Forbidden, NotFound
from orchestrator.execution_graph import load_graphs
from orchestrator.masking import mask_fields, mask_text
from orchestrator.models import Execution, ExecutionEvent, PlanSubtask, PlanTask
from orchestrator.paging import newest_first_page
from orchestrator.publish import iso

# The fields of an event, a task and a subtask that hold what agents wrote (an event's outcome repeats it).
EVENT_PERSONAL_FIELDS = ("message", "error_message", "output_data", "suggestions", "outcome")
TASK_PERSONAL_FIELDS = ("error_message", "suggestions")
SUBTASK_PERSONAL_FIELDS = ("error", "result_data")


def _visible(ex: Execution | None, principal: Principal) -> bool:
    return ex is not None and (principal.is_admin or ex.owner_id == principal.id)


def check_raw_allowed(ex: Execution, principal: Principal) -> None:
    """Raw (unmasked) payloads are for the execution's owner only."""
    if ex.owner_id != principal.id:
        raise Forbidden("Only the execution's owner may read its raw payloads; ask without raw.",
                        execution_id=ex.id)


def summary(ex: Execution, current_task_title: str | None = None, raw: bool = False) -> dict[str, Any]:
    total = ex.tasks_total or 0
    status_message = ex.status_message if raw or ex.status_message is None else mask_text(ex.status_message)
    return {
        "execution_id": ex.id, "plan_id": ex.plan_id, "agent_id": ex.agent_id, "owner_id": ex.owner_id,
        "status": ex.status, "status_message": status_message,
        "progress": {"tasks_completed": ex.tasks_completed, "tasks_total": total,
                     "percent": round(100 * ex.tasks_completed / total) if total else 0,
                     "current_task_id": ex.current_task_id, "current_task_title": current_task_title},
        "pause_requested": ex.pause_requested, "cancel_requested": ex.cancel_requested,
        "created_at": iso(ex.created_at), "started_at": iso(ex.started_at), "completed_at": iso(ex.completed_at),
        "updated_at": iso(ex.updated_at),
    }


def execution_detail(session: Session, principal: Principal, execution_id: str, raw: bool = False) -> dict[str, Any]:
    """The execution with its task tree; masked unless `raw` (the owner only: Forbidden for others)."""
    g = load_graphs(session, [execution_id], lock=False).get(execution_id)
    if g is None or not _visible(g.execution, principal):
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    ex = g.execution
    if raw:
        check_raw_allowed(ex, principal)
    ptasks = {t.id: t for t in session.scalars(select(PlanTask).where(PlanTask.plan_id == ex.plan_id))}
    psubs = {s.id: s for s in session.scalars(select(PlanSubtask).where(PlanSubtask.plan_id == ex.plan_id))}
    current = ptasks.get(ex.current_task_id or "")
    tasks = []
    for task in g.tasks.values():
        pt = ptasks[task.plan_task_id]
        tasks.append(_task_view({
            "task_id": pt.id, "title": pt.title, "phase_id": pt.phase_id, "phase_title": pt.phase_title,
            "status": task.status, "progress_percent": task.progress_percent,
            "subtasks_completed": task.subtasks_completed, "subtasks_total": task.subtasks_total,
            "error_message": task.error_message, "suggestions": task.suggestions,
            "next_step_options": task.next_step_options,
            "started_at": iso(task.started_at), "completed_at": iso(task.completed_at),
            "subtasks": [
                {"subtask_id": s.plan_subtask_id, "title": psubs[s.plan_subtask_id].title,
                 "action": s.action_override or psubs[s.plan_subtask_id].action, "status": s.status,
                 "attempt": s.attempt, "max_attempts": s.max_attempts, "agent_id": s.agent_id, "error": s.error,
                 "result_data": s.result_data, "waiting_on": s.waiting_on, "not_before": iso(s.not_before),
                 "started_at": iso(s.started_at), "completed_at": iso(s.completed_at)}
                for s in g.subtasks_of(task)
            ],
        }, raw))
    return {**summary(ex, current.title if current else None, raw), "tasks": tasks}


def _task_view(task: dict[str, Any], raw: bool) -> dict[str, Any]:
    if raw:
        return task
    task = mask_fields(task, TASK_PERSONAL_FIELDS)
    task["subtasks"] = [mask_fields(s, SUBTASK_PERSONAL_FIELDS) for s in task["subtasks"]]
    return task


def list_executions(session: Session, principal: Principal, status: str | None, limit: int,
                    cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    q = select(Execution)
    if not principal.is_admin:
        q = q.where(Execution.owner_id == principal.id)
    if status:
        q = q.where(Execution.status == status)
    rows, next_cursor = newest_first_page(session, q, Execution, limit, cursor)
    titles = {}
    if rows:
        titles = {(p, t): title for p, t, title in session.execute(
            select(PlanTask.plan_id, PlanTask.id, PlanTask.title).where(
                PlanTask.plan_id.in_({r.plan_id for r in rows})))}
    items = [summary(r, titles.get((r.plan_id, r.current_task_id))) for r in rows]
    return items, next_cursor


def event_to_dict(ev: ExecutionEvent, raw: bool = False) -> dict[str, Any]:
    """The event as the log shows it: masked unless `raw`."""
    view = {
        "event_id": ev.id, "execution_id": ev.execution_id, "agent_id": ev.agent_id, "source": ev.source,
        "event_type": ev.event_type, "task_id": ev.task_id, "subtask_id": ev.subtask_id, "status": ev.status,
        "message": ev.message, "output_data": ev.output_data, "error_type": ev.error_type,
        "error_message": ev.error_message, "human_review_required": ev.human_review_required,
        "suggestions": ev.suggestions, "outcome": ev.outcome, "timestamp": iso(ev.timestamp),
        "agent_timestamp": iso(ev.agent_timestamp),
    }
    return view if raw else mask_fields(view, EVENT_PERSONAL_FIELDS)


def list_events(session: Session, principal: Principal, execution_id: str, limit: int, before: str | None,
                event_type: str | None = None, raw: bool = False) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first in commit order (`seq`); `before` is the last event id of the previous page. Masked
    unless `raw` (the owner only: Forbidden for others)."""
    ex = session.get(Execution, execution_id)
    if ex is None or not _visible(ex, principal):
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    if raw:
        check_raw_allowed(ex, principal)
    # A NULL seq (an uncommitted row: never visible here) would sort as the newest, then by id.
    q = (select(ExecutionEvent).where(ExecutionEvent.execution_id == execution_id)
         .order_by(ExecutionEvent.seq.desc().nulls_first(), ExecutionEvent.id.desc()).limit(limit + 1))
    if event_type:
        q = q.where(ExecutionEvent.event_type == event_type)
    if before:
        pivot = session.get(ExecutionEvent, before)
        if pivot is None or pivot.execution_id != execution_id:
            raise NotFound(f"Event {before} not found.", event_id=before)
        if pivot.seq is None:
            q = q.where(ExecutionEvent.seq.is_not(None) | (ExecutionEvent.id < pivot.id))
        else:
            q = q.where(ExecutionEvent.seq < pivot.seq)
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return [event_to_dict(r, raw) for r in rows], rows[-1].id if more else None


def event_log(session: Session, principal: Principal, execution_id: str, limit: int, before: str | None,
              event_type: str | None = None, raw: bool = False) -> dict[str, Any]:
    """A page of `list_events`, and whether the log was archived (orchestrator/archive.py): then the
    page holds only what came after the archival, and the rest is in the archive (its file named to
    admins, who can restore it)."""
    items, next_before = list_events(session, principal, execution_id, limit, before, event_type, raw)
    ex = session.get(Execution, execution_id)  # loaded by list_events: no query
    assert ex is not None
    archived = ex.archived_at is not None
    return {"events": items, "next_before": next_before, "archived": archived,
            "archived_at": iso(ex.archived_at), "archived_events": ex.archived_events if archived else None,
            "archive_location": ex.archive_location if archived and principal.is_admin else None}


# What opens and closes an attempt on the timeline. A claim writes no event, so the agent's
# task_started dates an earlier attempt's start (the subtask's started_at dates the current one).
_ATTEMPT_ENDS = {"subtask_complete": "completed", "task_complete": "completed", "task_error": "failed",
                 "task_blocked": "blocked", "subtask_timeout": "timed_out", "agent_silent": "agent_silent",
                 "claim_expired": "claim_expired"}
TIMELINE_EVENT_LIMIT = 20_000


def subtask_timeline(session: Session, principal: Principal, execution_id: str) -> dict[str, Any]:
    """Each subtask's attempts (start, end, how it ended) from the event log, for the execution
    page's Gantt chart; the gaps between them are waits (prerequisites, queue, retry backoff). Reads
    only unencrypted columns: types, subtask ids and times."""
    g = load_graphs(session, [execution_id], lock=False, results=False).get(execution_id)
    if g is None or not _visible(g.execution, principal):
        raise NotFound(f"Execution {execution_id} not found.", execution_id=execution_id)
    titles = dict(session.execute(select(PlanSubtask.id, PlanSubtask.title)
                                  .where(PlanSubtask.plan_id == g.execution.plan_id)).all())
    attempts: dict[str, list[dict[str, Any]]] = {}
    rows = session.execute(
        select(ExecutionEvent.event_type, ExecutionEvent.subtask_id, ExecutionEvent.timestamp)
        .where(ExecutionEvent.execution_id == execution_id, ExecutionEvent.subtask_id.is_not(None),
               ExecutionEvent.event_type.in_(["task_started", *_ATTEMPT_ENDS]))
        .order_by(ExecutionEvent.seq).limit(TIMELINE_EVENT_LIMIT))
    for kind, subtask_id, at in rows:
        mine = attempts.setdefault(subtask_id, [])
        if not mine or mine[-1]["ended_at"] is not None:
            mine.append({"started_at": iso(at), "ended_at": None, "outcome": None})
        if kind in _ATTEMPT_ENDS:
            mine[-1].update(ended_at=iso(at), outcome=_ATTEMPT_ENDS[kind])
    subtasks = []
    for task in g.tasks.values():
        for s in g.subtasks_of(task):
            mine = attempts.get(s.plan_subtask_id, [])
            if s.status == "RUNNING" and (not mine or mine[-1]["ended_at"] is not None):
                mine.append({"started_at": iso(s.started_at), "ended_at": None, "outcome": None})  # claimed
            subtasks.append({"subtask_id": s.plan_subtask_id, "task_id": task.plan_task_id,
                             "title": titles.get(s.plan_subtask_id, s.plan_subtask_id), "status": s.status,
                             "attempt": s.attempt, "max_attempts": s.max_attempts, "not_before": iso(s.not_before),
                             "attempts": mine})
    ex = g.execution
    return {"execution_id": ex.id, "created_at": iso(ex.created_at), "started_at": iso(ex.started_at),
            "completed_at": iso(ex.completed_at), "subtasks": subtasks}
