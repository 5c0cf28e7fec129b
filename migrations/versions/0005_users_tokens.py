"""users and their tokens: when a user was deactivated

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

Users deactivated before this revision keep no date (NULL): none was recorded.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestrator.models.base

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deactivated_at", orchestrator.models.base.UTCDateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table, and `users` cannot be dropped while other
    # tables' rows point at it. SQLite (3.35 and later) drops a plain column in place, as PostgreSQL does.
    op.drop_column("users", "deactivated_at")
