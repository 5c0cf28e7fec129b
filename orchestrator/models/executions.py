"""The execution aggregate: one run of a plan, with the state of each task and subtask."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orchestrator.encryption import EncryptedJSON, EncryptedText
from orchestrator.models.base import Base, utcnow

if TYPE_CHECKING:
    from orchestrator.models.agents import Agent
    from orchestrator.models.plans import Plan


class Execution(Base):
    """Single execution of a plan by one agent, or by any capable agent when `agent_id` is empty."""

    __tablename__ = "executions"
    __table_args__ = (
        Index("ix_executions_owner_status", "owner_id", "status", "created_at"),
        Index("ix_executions_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "exec_larry_prospect_20260211_001"
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), index=True)
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"), index=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))

    status: Mapped[str] = mapped_column(String(16), default="CREATED")
    status_message: Mapped[str | None] = mapped_column(EncryptedText)  # may quote an agent's error

    tasks_total: Mapped[int] = mapped_column(default=0)
    tasks_completed: Mapped[int] = mapped_column(default=0)
    current_task_id: Mapped[str | None] = mapped_column(String(128))

    pause_requested: Mapped[bool] = mapped_column(default=False)
    cancel_requested: Mapped[bool] = mapped_column(default=False)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)

    # Where the event log went once the execution had ended long ago (orchestrator/archive.py): a
    # location without `archived_at` is an archival under way; `restored_at` keeps a restored log hot.
    archived_at: Mapped[datetime | None]
    archive_location: Mapped[str | None] = mapped_column(String(1024))
    archived_events: Mapped[int | None]
    restored_at: Mapped[datetime | None]

    plan: Mapped[Plan] = relationship(back_populates="executions")
    agent: Mapped[Agent | None] = relationship()
    tasks: Mapped[list[ExecutionTask]] = relationship(
        back_populates="execution", cascade="all, delete-orphan", order_by="ExecutionTask.position"
    )


class ExecutionTask(Base):
    """Execution state for a single task."""

    __tablename__ = "execution_tasks"
    __table_args__ = (
        ForeignKeyConstraint(["plan_id", "plan_task_id"], ["plan_tasks.plan_id", "plan_tasks.id"]),
        UniqueConstraint("execution_id", "plan_task_id"),
    )

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    plan_id: Mapped[str] = mapped_column(String(128))
    plan_task_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(default=0)

    status: Mapped[str] = mapped_column(String(16), default="QUEUED")  # QUEUED|RUNNING|BLOCKED|COMPLETE|ERROR|SKIPPED

    subtasks_total: Mapped[int] = mapped_column(default=0)
    subtasks_completed: Mapped[int] = mapped_column(default=0)
    progress_percent: Mapped[int] = mapped_column(default=0)

    result_data: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    error_message: Mapped[str | None] = mapped_column(EncryptedText)
    # While BLOCKED: what the agent suggested and what a person may choose.
    suggestions: Mapped[list[Any] | None] = mapped_column(EncryptedJSON)
    next_step_options: Mapped[list[Any] | None] = mapped_column(EncryptedJSON)

    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    execution: Mapped[Execution] = relationship(back_populates="tasks")
    subtask_executions: Mapped[list[ExecutionSubtask]] = relationship(
        back_populates="execution_task", cascade="all, delete-orphan", order_by="ExecutionSubtask.position"
    )


class ExecutionSubtask(Base):
    """Execution state for a single subtask: the unit an agent claims."""

    __tablename__ = "execution_subtasks"
    __table_args__ = (
        ForeignKeyConstraint(["plan_id", "plan_subtask_id"], ["plan_subtasks.plan_id", "plan_subtasks.id"]),
        UniqueConstraint("execution_id", "plan_subtask_id"),
        # The poll's query: ready subtasks of an execution, best priority first.
        Index("ix_execution_subtasks_ready", "execution_id", "status", "waiting_on", "priority", "position"),
        Index("ix_execution_subtasks_holder", "agent_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    execution_task_id: Mapped[str] = mapped_column(ForeignKey("execution_tasks.id", ondelete="CASCADE"))
    # Denormalised from the task so that the poll and the worker need no join.
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    plan_id: Mapped[str] = mapped_column(String(128))
    plan_subtask_id: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(default=0)
    priority: Mapped[int] = mapped_column(default=1)

    status: Mapped[str] = mapped_column(String(16), default="QUEUED")  # QUEUED|RUNNING|COMPLETE|ERROR|SKIPPED
    attempt: Mapped[int] = mapped_column(default=1)
    max_attempts: Mapped[int] = mapped_column(default=3)

    # Subtasks (plan ids) that must be complete first: the subtask's own prerequisites and every
    # subtask of its task's prerequisite tasks. `waiting_on` counts those not yet done.
    prerequisite_ids: Mapped[list[Any]] = mapped_column(default=list)
    waiting_on: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[datetime | None]  # retry backoff: not handed out before this
    # Params a person approved in place of the plan's (an "approve alternative" answer to a block).
    params_override: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    # The action a person switched the subtask to (`approve_phone_call`: make_phone_call), else the plan's.
    action_override: Mapped[str | None] = mapped_column(String(120))

    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"))  # the agent holding it
    claimed_at: Mapped[datetime | None]
    # When the holder's first event about this claim was applied: until then the claim is only an
    # answer that may have been lost, so the poll hands it out again and the sweeper takes it back
    # after CLAIM_ACK_SECONDS without costing an attempt (orchestrator/scheduling.py, sweeper.py).
    acknowledged_at: Mapped[datetime | None]

    result_data: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)
    error: Mapped[str | None] = mapped_column(EncryptedText)

    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    execution_task: Mapped[ExecutionTask] = relationship(back_populates="subtask_executions")
