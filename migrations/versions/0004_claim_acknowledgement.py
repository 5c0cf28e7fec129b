"""claim acknowledgement: when the holder of a subtask first reported on its claim

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestrator.models.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

subtasks = sa.table("execution_subtasks", sa.column("status"), sa.column("claimed_at"), sa.column("started_at"),
                    sa.column("acknowledged_at"))


def upgrade() -> None:
    with op.batch_alter_table("execution_subtasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acknowledged_at", orchestrator.models.base.UTCDateTime(timezone=True),
                                      nullable=True))
    # Claims made before this revision may well be in their agents' hands: left unacknowledged they
    # would be handed out again and taken back within a minute, and run twice. Counting them as
    # acknowledged leaves them to the rules they were claimed under (timeout, silent agent).
    op.execute(subtasks.update().where(subtasks.c.status == "RUNNING")
               .values(acknowledged_at=sa.func.coalesce(subtasks.c.claimed_at, subtasks.c.started_at)))


def downgrade() -> None:
    with op.batch_alter_table("execution_subtasks", schema=None) as batch_op:
        batch_op.drop_column("acknowledged_at")
