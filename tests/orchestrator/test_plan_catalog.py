"""The worker's plan catalog: loaded once, loaded again only for what it does not hold yet."""

from __future__ import annotations

import re

from sqlalchemy import event, select

from orchestrator.models import Execution, ExecutionSubtask, PlanSubtask, PlanTask
from orchestrator.plan_catalog import PlanCatalog
from tests.workers.helpers import queued_execution


def _queries(db, work, tables: str = "plan_") -> int:
    """The statements `work` sends whose text names `tables` (a regular expression)."""
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.unit_of_work() as s:
            work(s)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    return len([q for q in seen if re.search(tables, q)])


def test_a_known_plan_costs_no_query_and_a_new_subtask_loads_it_again(db) -> None:
    scene = queued_execution(db, n_subtasks=2)
    with db.reading() as s:
        plan_id = s.get(Execution, scene.execution_id).plan_id
        task_id = s.scalar(select(PlanTask.id).where(PlanTask.plan_id == plan_id))
    catalog = PlanCatalog()
    need = [(plan_id, ["task_0_a", "task_0_b"], [task_id])]
    assert _queries(db, lambda s: catalog.load(s, need)) == 2
    assert catalog.step(plan_id, "task_0_b").action == "send_email"
    assert _queries(db, lambda s: catalog.load(s, need)) == 0

    with db.unit_of_work() as s:  # what a decomposition does: a plan gains a subtask
        s.add(PlanSubtask(plan_id=plan_id, task_id=task_id, id="task_0_z", title="Added later",
                          action="call_phone", position=9))
    assert _queries(db, lambda s: catalog.load(s, [(plan_id, ["task_0_a", "task_0_z"], [task_id])])) == 2
    assert (catalog.step(plan_id, "task_0_z").title, catalog.step(plan_id, "task_0_z").action) == (
        "Added later", "call_phone")
    assert catalog.task_title(plan_id, task_id) is not None


def test_the_least_recently_used_plans_are_forgotten(db) -> None:
    scenes = [queued_execution(db) for _ in range(3)]
    with db.reading() as s:
        plans = [s.get(Execution, sc.execution_id).plan_id for sc in scenes]
    catalog = PlanCatalog(max_plans=2)
    with db.reading() as s:
        for plan_id in plans:
            catalog.load(s, [(plan_id, ["task_0_a"], [])])
    assert _queries(db, lambda s: catalog.load(s, [(plans[2], ["task_0_a"], [])])) == 0
    assert _queries(db, lambda s: catalog.load(s, [(plans[0], ["task_0_a"], [])])) == 2  # forgotten


def test_a_claim_reads_the_plan_from_the_catalog_once(db) -> None:
    """The poll's claim answers from the process's catalog: the first claim of a plan loads it, the
    next ones read no plan row but for the ready-work queries' join, and the answers are what a fresh
    catalog gives."""
    from orchestrator.models import utcnow
    from orchestrator.scheduling import claim_work

    scene = queued_execution(db, n_subtasks=3)
    catalog = PlanCatalog()
    plan_rows = r"(FROM|JOIN) (plans|plan_tasks|plan_subtasks)\b"

    def claim(plans: PlanCatalog | None):
        answer = []

        def work(s) -> None:
            answer.append(claim_work(s, scene.agent_id, None, utcnow(), plans=plans).payload)
            sub = s.get(ExecutionSubtask, f"{scene.execution_id}:{answer[0]['next_task']['task_id']}")
            sub.status, sub.agent_id = "QUEUED", None  # put back, as the sweeper does: the next claim gets it

        return _queries(db, work, plan_rows), answer[0]["next_task"]

    cold, first = claim(catalog)
    warm, second = claim(catalog)
    _, fresh = claim(None)
    assert (cold, warm) == (2 + 2, 2)  # the catalog's two; the ready-work queries' join on plan_subtasks
    assert first == second == fresh
    assert fresh["title"] and fresh["context"]["plan_goal"] and fresh["context"]["upcoming_tasks"]
