"""executions: where their event log went when it was archived (orchestrator/archive.py)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 10:00:00.000000

`archive_location` set with `archived_at` NULL is an archival under way (its file is written whole, its
rows being deleted); both set, a finished one. `restored_at` keeps a restored log out of the next runs
for another ARCHIVE_AFTER_DAYS.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestrator.models.base

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("restored_at", "archived_events", "archive_location", "archived_at")


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: on SQLite that would copy `executions`, which other tables reference.
    op.add_column("executions", sa.Column("archived_at", orchestrator.models.base.UTCDateTime(timezone=True),
                                          nullable=True))
    op.add_column("executions", sa.Column("archive_location", sa.String(length=1024), nullable=True))
    op.add_column("executions", sa.Column("archived_events", sa.Integer(), nullable=True))
    op.add_column("executions", sa.Column("restored_at", orchestrator.models.base.UTCDateTime(timezone=True),
                                          nullable=True))


def downgrade() -> None:
    for column in COLUMNS:
        op.drop_column("executions", column)
