"""Small factories for test rows; each returns the object it added (not yet committed)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.credentials import issue_credential
from orchestrator.models import Agent, Execution, Plan, PlanSubtask, PlanTask, User
from orchestrator.signing import new_signing_secret


def make_user(session: Session, username: str | None = None, **kw: Any) -> User:
    username = username or f"user_{secrets.token_hex(3)}"
    user = User(id=f"user_{username}", username=username, **kw)
    session.add(user)
    session.flush()
    return user


def make_user_with_token(session: Session, username: str | None = None) -> tuple[User, str]:
    user = make_user(session, username)
    _, token = issue_credential(session, user_id=user.id, label="test")
    return user, token


def make_agent(session: Session, agent_id: str | None = None, **kw: Any) -> Agent:
    kw.setdefault("signing_secret", new_signing_secret())  # signing is required, as for a registered agent
    agent = Agent(id=agent_id or f"agent_{secrets.token_hex(3)}", name=kw.pop("name", "Larry"), **kw)
    session.add(agent)
    session.flush()
    return agent


def make_plan(session: Session, owner: User, plan_id: str | None = None, n_tasks: int = 1,
              n_subtasks: int = 2) -> Plan:
    plan = Plan(id=plan_id or f"plan_{secrets.token_hex(4)}", goal="Build a breeder system", owner_id=owner.id,
                context={"business_type": "Dog breeding"})
    for t in range(n_tasks):
        task = PlanTask(id=f"task_{t}", title=f"Task {t}", description="d", position=t,
                        prerequisite_task_ids=[f"task_{t - 1}"] if t else [])
        for s in range(n_subtasks):
            task.subtasks.append(PlanSubtask(
                plan_id=plan.id, id=f"task_{t}_{chr(97 + s)}", title=f"Subtask {t}.{s}", action="send_email",
                params={"to": "carol@example.com"}, retry_policy={"max_attempts": 3}, position=s,
                prerequisite_subtask_ids=[f"task_{t}_{chr(96 + s)}"] if s else [],
            ))
        plan.tasks.append(task)
    session.add(plan)
    session.flush()
    return plan


def make_execution(session: Session, owner: User, plan: Plan | None = None, status: str = "CREATED",
                   execution_id: str | None = None, **plan_kw: Any) -> Execution:
    """An execution of `plan` (a new `make_plan` one by default), moved straight to `status`."""
    from orchestrator.executions import create_execution
    from orchestrator.models import utcnow

    plan = plan or make_plan(session, owner, **plan_kw)
    ex = create_execution(session, owner.id, plan.id, utcnow(), execution_id=execution_id)
    ex.status = status
    if status not in ("CREATED", "QUEUED"):
        ex.started_at = utcnow()
    session.flush()
    return ex


def block_subtask(session: Session, execution_id: str, subtask_id: str, options: list[str] | None = None,
                  error: str = "Carol's address bounced") -> list[str]:
    """Block the task of `subtask_id` as an agent's blocking error would, execution BLOCKED; the options offered."""
    from orchestrator.execution_graph import block_task, load_graphs

    g = load_graphs(session, [execution_id])[execution_id]
    offered = block_task(g, g.subtasks[subtask_id], error, ["Call Carol"], options)
    g.execution.status = "BLOCKED"
    session.flush()
    return offered
