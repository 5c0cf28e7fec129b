"""shard fences: the highest lease token that committed each shard's events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Starts empty: each shard's row appears with its first fenced commit, and a Redis whose token
    # counters are older than the rows catches up on the first refusal (orchestrator/events/drain.py).
    op.create_table(
        "shard_fences",
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shard", name=op.f("pk_shard_fences")),
    )


def downgrade() -> None:
    op.drop_table("shard_fences")
