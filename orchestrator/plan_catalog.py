"""What the event worker and the poll need to know of plans, kept per process.

Each batch's outcomes name the next subtask's title and action, retries read a subtask's retry
policy, and stream messages carry the current task's title; a claim's answer carries the subtask's
title, action, params and timeout, the plan's goal and its neighbours' titles. Loading them for
every batch was an eighth of the worker's time at small batches, and three of a claim's statements.
Plan rows are never changed once written; a decomposition only adds subtasks to a plan. So an
entry stays true, and is loaded again only when an execution names a subtask or task it does not
hold yet.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.models import Plan, PlanSubtask, PlanTask


@dataclass(frozen=True)
class PlanStep:
    """A plan subtask's fields that applying events and answering claims read."""

    title: str
    action: str
    retry_policy: Any
    params: Any = None
    timeout_hours: float | None = None


@dataclass
class _Plan:
    steps: dict[str, PlanStep]
    task_titles: dict[str, str]
    goal: str | None = None


class PlanCatalog:
    """Plans' steps and task titles by plan id, the `max_plans` most recently used."""

    def __init__(self, max_plans: int = 2000) -> None:
        self.max_plans = max_plans
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self._lock = threading.Lock()  # a web process's threads share one catalog

    def load(self, session: Session, needs: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> None:
        """Make sure every (plan id, subtask ids, task ids) in `needs` is known: one query for the
        subtasks and one for the tasks of all the plans that are missing something."""
        needs = list(needs)
        stale = {plan_id for plan_id, subtasks, tasks in needs
                 if (p := self._plans.get(plan_id)) is None
                 or not set(subtasks) <= p.steps.keys() or not set(tasks) <= p.task_titles.keys()}
        fresh = _read_plans(session, stale) if stale else {}
        with self._lock:
            self._plans.update(fresh)
            for plan_id, _, _ in needs:
                if plan_id in self._plans:
                    self._plans.move_to_end(plan_id)
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)

    def step(self, plan_id: str, subtask_id: str) -> PlanStep:
        return self._plans[plan_id].steps[subtask_id]

    def goal(self, plan_id: str) -> str | None:
        return self._plans[plan_id].goal

    def subtask_title(self, plan_id: str, subtask_id: str) -> str:
        return self._plans[plan_id].steps[subtask_id].title

    def task_title(self, plan_id: str, task_id: str) -> str | None:
        plan = self._plans.get(plan_id)
        return plan.task_titles.get(task_id) if plan is not None else None


def _read_plans(session: Session, plan_ids: set[str]) -> dict[str, _Plan]:
    """The plans' subtasks (with the plan's goal) and tasks: two queries however many plans."""
    fresh = {plan_id: _Plan({}, {}) for plan_id in plan_ids}
    steps = (select(PlanSubtask.plan_id, PlanSubtask.id, PlanSubtask.title, PlanSubtask.action,
                    PlanSubtask.retry_policy, PlanSubtask.params, PlanSubtask.timeout_hours, Plan.goal)
             .join(Plan, Plan.id == PlanSubtask.plan_id).where(PlanSubtask.plan_id.in_(sorted(plan_ids))))
    for s in session.execute(steps):
        plan = fresh[s.plan_id]
        plan.goal = s.goal
        plan.steps[s.id] = PlanStep(s.title, s.action, s.retry_policy, s.params, s.timeout_hours)
    for plan_id, task_id, title in session.execute(
            select(PlanTask.plan_id, PlanTask.id, PlanTask.title).where(PlanTask.plan_id.in_(sorted(plan_ids)))):
        fresh[plan_id].task_titles[task_id] = title
    return fresh
