"""agents: request signing (mode and secret) and a per-agent rate limit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00.000000

Agents registered before this revision have no signing secret, so they become `signing = 'optional'`
(the column's server default): their unsigned requests keep working until an operator issues them a
secret (`POST /api/agents/{id}/signing-secret`) and sets them to `required`. Agents registered after
it are `required` from the model. `signing_secret` is a Fernet token (orchestrator.encryption), NULL
when none was issued. `rate_limit_per_minute` NULL means the settings' default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import orchestrator.encryption

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("rate_limit_per_minute", "signing_secret", "signing")


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: on SQLite that would copy `agents`, which other tables reference.
    op.add_column("agents", sa.Column("signing", sa.String(length=16), server_default="optional", nullable=False))
    op.add_column("agents", sa.Column("signing_secret", orchestrator.encryption.EncryptedText(), nullable=True))
    op.add_column("agents", sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite (3.35 and later) drops a plain column in place, as PostgreSQL does.
    for column in COLUMNS:
        op.drop_column("agents", column)
