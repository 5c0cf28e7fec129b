"""Small factories for test rows; each returns the object it added (not yet committed)."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from orchestrator.credentials import issue_credential
from orchestrator.models import Agent, Plan, PlanSubtask, PlanTask, User


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
