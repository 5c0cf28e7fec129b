"""event positions: ExecutionEvent.seq in commit order, and its counter

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

events = sa.table("execution_events", sa.column("id"), sa.column("timestamp"), sa.column("seq"))
positions = sa.table("event_positions", sa.column("id"), sa.column("last_seq"))


def upgrade() -> None:
    op.create_table(
        "event_positions",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_event_positions_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_positions")),
    )
    with op.batch_alter_table("execution_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))

    # Events stored before positions existed were committed in an unknown order; acceptance time is
    # the best guess, and nothing can have replayed by position yet.
    ranked = sa.select(
        events.c.id, sa.func.row_number().over(order_by=(events.c.timestamp, events.c.id)).label("n"),
    ).subquery("ranked")
    op.execute(events.update().values(seq=ranked.c.n).where(events.c.id == ranked.c.id))
    op.execute(positions.insert().from_select(
        ["id", "last_seq"], sa.select(sa.literal(1), sa.func.count()).select_from(events)))

    with op.batch_alter_table("execution_events", schema=None) as batch_op:
        batch_op.create_index("ix_execution_events_seq", ["seq"], unique=True)
        batch_op.create_index("ix_execution_events_execution_seq", ["execution_id", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("execution_events", schema=None) as batch_op:
        batch_op.drop_index("ix_execution_events_execution_seq")
        batch_op.drop_index("ix_execution_events_seq")
        batch_op.drop_column("seq")
    op.drop_table("event_positions")
