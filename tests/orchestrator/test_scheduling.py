"""claim_work: what is ready, in which order, and that concurrent claims never collide."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import func, select

from orchestrator.db import Database
from orchestrator.executions import create_execution
from orchestrator.models import Agent, Execution, ExecutionSubtask, PlanSubtask, utcnow
from orchestrator.progress import complete_subtask, load_graphs
from orchestrator.scheduling import claim_work
from tests.factories import make_agent, make_plan, make_user
from tests.workers.helpers import queued_execution


def claim(db: Database, agent_id: str, actions: set[str] | None = None):
    with db.unit_of_work() as s:
        return claim_work(s, agent_id, actions, utcnow())


def test_prerequisites_and_order(db) -> None:
    scene = queued_execution(db, n_tasks=2, n_subtasks=2)
    got = []
    for _ in range(4):
        result = claim(db, scene.agent_id)
        assert result.payload is not None
        got.append(result.payload["next_task"]["task_id"])
        assert claim(db, scene.agent_id).payload is None  # the next one waits for this one
        with db.unit_of_work() as s:
            sub = s.get(ExecutionSubtask, f"{scene.execution_id}:{got[-1]}")
            g = load_graphs(s, [scene.execution_id])[scene.execution_id]
            complete_subtask(g, g.subtasks[sub.plan_subtask_id], {"message": "ok"}, utcnow())
    assert got == ["task_0_a", "task_0_b", "task_1_a", "task_1_b"]


def test_first_claim_starts_the_execution_and_heartbeats(db) -> None:
    scene = queued_execution(db)
    result = claim(db, scene.agent_id)
    assert result.transitions == [(scene.execution_id, "QUEUED", "RUNNING")]
    assert result.holds == [(scene.execution_id, "task_0_a", scene.agent_id)]
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "RUNNING"
        assert s.get(Agent, scene.agent_id).last_heartbeat is not None


def test_filters(db) -> None:
    scene = queued_execution(db, n_subtasks=1)
    assert claim(db, scene.agent_id, {"make_phone_call"}).payload is None
    with db.unit_of_work() as s:
        sub = s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a")
        sub.not_before = utcnow() + timedelta(minutes=5)
    assert claim(db, scene.agent_id, {"send_email"}).payload is None  # backing off
    with db.unit_of_work() as s:
        s.get(ExecutionSubtask, f"{scene.execution_id}:task_0_a").not_before = None
        s.get(Execution, scene.execution_id).agent_id = scene.agent_id
        make_agent(s, "agent_stranger")
    assert claim(db, "agent_stranger").payload is None  # assigned to another agent
    assert claim(db, scene.agent_id).payload["next_task"]["task_id"] == "task_0_a"


def test_priority_first(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        agent = make_agent(s, "agent_p")
        for pid, prio in (("plan_low", 5), ("plan_high", 1)):
            plan = make_plan(s, owner, pid, n_subtasks=1)
            plan.tasks[0].priority = prio
            s.flush()
            create_execution(s, owner.id, pid, utcnow(), execution_id=f"exec_{pid}").status = "QUEUED"
        agent_id = agent.id
    assert claim(db, agent_id).payload["plan_id"] == "plan_high"


def test_twenty_concurrent_claimers_never_share_a_subtask(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s)
        agents = [make_agent(s, f"agent_c{i}").id for i in range(20)]
        for e in range(10):
            plan = make_plan(s, owner, f"plan_c{e}", n_subtasks=20)
            for sub in plan.tasks[0].subtasks:
                sub.prerequisite_subtask_ids = []
            s.flush()
            create_execution(s, owner.id, plan.id, utcnow()).status = "QUEUED"
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run(agent_id: str) -> None:
        while True:
            for attempt in range(20):
                try:
                    result = claim(db, agent_id)
                    break
                except Exception:  # noqa: BLE001 - a PostgreSQL deadlock victim or SQLite busy: poll again
                    if attempt == 19:
                        raise
            if result.payload is None:
                return
            with lock:
                claims.append((result.payload["execution_id"], result.payload["next_task"]["task_id"]))

    threads = [threading.Thread(target=run, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    counts = Counter(claims)
    assert len(counts) == 200 and set(counts.values()) == {1}
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(ExecutionSubtask).where(
            ExecutionSubtask.status == "RUNNING")) == 200
        assert s.scalar(select(func.count()).select_from(PlanSubtask)) == 200
