"""The immutable event log of executions."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orchestrator.encryption import EncryptedJSON, EncryptedText
from orchestrator.models.base import Base, utcnow

if TYPE_CHECKING:
    from orchestrator.models.agents import Agent
    from orchestrator.models.executions import Execution


class ExecutionEvent(Base):
    """One event, from an agent (`source="agent"`), a person or the system itself.

    Ids are time-ordered ("evt_" + milliseconds + randomness), so that id order is acceptance order;
    the id is the primary key that makes applying an event idempotent.

    `seq` is the event's position in COMMIT order, unique across all executions, handed out by
    `orchestrator/event_positions.py` as the writing transaction commits (NULL only before that
    commit, so never visible to another session). Id order is not commit order: shards commit
    independently and ids minted in one millisecond sort by randomness. Whatever has to replay or
    page "what came after this event" (the live stream's `since`, the event log) orders by `seq`.
    """

    __tablename__ = "execution_events"
    __table_args__ = (
        Index("ix_execution_events_execution_time", "execution_id", "timestamp", "id"),
        # A unique index rather than a unique constraint plus an index: one structure, and SQLite
        # can add it without rebuilding the table.
        Index("ix_execution_events_seq", "seq", unique=True),
        Index("ix_execution_events_execution_seq", "execution_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"))
    source: Mapped[str] = mapped_column(String(16), default="agent")  # agent | user | system

    event_type: Mapped[str] = mapped_column(String(40))
    task_id: Mapped[str | None] = mapped_column(String(128))
    subtask_id: Mapped[str | None] = mapped_column(String(128))

    status: Mapped[str | None] = mapped_column(String(40))  # running|success|error|blocked|paused
    # The payload is personal data, encrypted at rest (orchestrator/encryption.py); so is the outcome,
    # whose status message may quote the agent's error.
    message: Mapped[str | None] = mapped_column(EncryptedText)
    output_data: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)

    error_type: Mapped[str | None] = mapped_column(String(120))
    error_message: Mapped[str | None] = mapped_column(EncryptedText)
    human_review_required: Mapped[bool] = mapped_column(default=False)
    suggestions: Mapped[list[Any] | None] = mapped_column(EncryptedJSON)

    # What applying the event did: the execution's state after it, or why it was refused.
    outcome: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON)

    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
    agent_timestamp: Mapped[datetime | None]

    execution: Mapped[Execution] = relationship()
    agent: Mapped[Agent | None] = relationship()


class EventPosition(Base):
    """The one-row counter behind `ExecutionEvent.seq`: the last position handed out.

    Its row lock, held from the increment to the commit, is what puts positions in commit order
    (see `orchestrator/event_positions.py`).
    """

    __tablename__ = "event_positions"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
