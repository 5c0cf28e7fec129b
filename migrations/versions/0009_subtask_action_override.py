"""execution_subtasks.action_override: the action a person switched a blocked subtask to

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 06:30:00.000000

`approve_phone_call`, the guide's answer to a bounced email, retries the stopped subtask as
`make_phone_call`. NULL (every existing row) means the plan's action.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: on SQLite that would copy the table, which others reference.
    op.add_column("execution_subtasks", sa.Column("action_override", sa.String(length=120), nullable=True))


def downgrade() -> None:
    op.drop_column("execution_subtasks", "action_override")
