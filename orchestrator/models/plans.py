"""The plan aggregate: a plan, its tasks (grouped in phases) and their atomic subtasks.

Task and subtask ids are the plan's own ("task_1_1", "task_1_1_a"), so they are unique per plan
and the keys are (plan_id, id): two plans made from one template can both have a "task_1_1".
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orchestrator.encryption import EncryptedJSON
from orchestrator.models.base import Base, utcnow

if TYPE_CHECKING:
    from orchestrator.models.executions import Execution


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (Index("ix_plans_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "plan_carol_breeder_sys_20260211"
    title: Mapped[str | None] = mapped_column(String(300))
    goal: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    source: Mapped[str] = mapped_column(String(32), default="api")  # api | file | planexe
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)

    tasks: Mapped[list[PlanTask]] = relationship(
        back_populates="plan", cascade="all, delete-orphan", order_by="PlanTask.position"
    )
    executions: Mapped[list[Execution]] = relationship(back_populates="plan")


class PlanTask(Base):
    """Structured task within a plan that agents can execute."""

    __tablename__ = "plan_tasks"

    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "task_1_1"
    phase_id: Mapped[str | None] = mapped_column(String(128))  # "phase_1"
    phase_title: Mapped[str | None] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(default=0)

    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    assignee_role: Mapped[str | None] = mapped_column(String(200))

    estimated_hours: Mapped[int | None]
    priority: Mapped[int] = mapped_column(default=1)  # 1 = highest

    decomposed: Mapped[bool] = mapped_column(default=False)
    decomposition_confidence: Mapped[float | None]
    decomposition_notes: Mapped[str | None] = mapped_column(Text)

    prerequisite_task_ids: Mapped[list[Any]] = mapped_column(default=list)
    is_blocking: Mapped[bool] = mapped_column(default=False)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)

    plan: Mapped[Plan] = relationship(back_populates="tasks")
    subtasks: Mapped[list[PlanSubtask]] = relationship(
        back_populates="task", cascade="all, delete-orphan", order_by="PlanSubtask.position"
    )


class PlanSubtask(Base):
    """Atomic action within a task."""

    __tablename__ = "plan_subtasks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["plan_id", "task_id"], ["plan_tasks.plan_id", "plan_tasks.id"], ondelete="CASCADE"
        ),
        Index("ix_plan_subtasks_task", "plan_id", "task_id"),
    )

    plan_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "task_1_1_a"
    task_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(default=0)

    title: Mapped[str] = mapped_column(String(500))
    action: Mapped[str | None] = mapped_column(String(120))  # "send_email", "make_phone_call"
    params: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)

    timeout_hours: Mapped[int] = mapped_column(default=24)
    retry_policy: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"max_attempts": 3, ...}

    prerequisite_subtask_ids: Mapped[list[Any]] = mapped_column(default=list)

    # What the decomposer said about this subtask (guide section 3); empty for hand-written plans.
    success_criteria: Mapped[list[Any]] = mapped_column(default=list)
    failure_handling: Mapped[str | None] = mapped_column(Text)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[PlanTask] = relationship(back_populates="subtasks")
