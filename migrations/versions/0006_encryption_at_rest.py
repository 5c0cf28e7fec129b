"""encryption at rest: event payloads, subtask params and results, plan context stored as Fernet tokens

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00.000000

The JSON columns become TEXT (a token is text, and the database can no longer read what is inside),
then every stored value is encrypted in place, in batches of rows; downgrade decrypts them and gives
the JSON columns their type back. Both need the keys of `orchestrator.encryption`: those passed as
`migrations.upgrade(..., keyring=...)`, or else the ones the settings name (ENCRYPTION_KEYS or the
data dir's key file), read only when there is a stored value to encrypt or decrypt.

On SQLite a column's type cannot be altered, and rebuilding a table (batch mode) would drop and
recreate tables that others reference, which SQLite turns into deletes with foreign keys on; a new
column is added, filled, and put in the old one's place instead.
"""

import logging
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from orchestrator.encryption import Keyring
from orchestrator.encryption_keys import CHECK_TEXT
from orchestrator.settings import Settings

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
BATCH_ROWS = 1000

# table: (primary key, JSON columns, text columns), as they are at this revision
ENCRYPTED = {
    "plans": (("id",), ("context",), ()),
    "plan_subtasks": (("plan_id", "id"), ("params",), ()),
    "executions": (("id",), (), ("status_message",)),
    "execution_tasks": (("id",), ("result_data", "suggestions", "next_step_options"), ("error_message",)),
    "execution_subtasks": (("id",), ("params_override", "result_data"), ("error",)),
    "execution_events": (("id",), ("output_data", "suggestions", "outcome"), ("message", "error_message")),
}
NOT_NULL = {("plans", "context"), ("plan_subtasks", "params")}


class _Keys:
    """The keyring, fetched on the first stored value: an empty database needs none."""

    def __init__(self) -> None:
        self.keyring: Keyring | None = None

    def __call__(self) -> Keyring:
        if self.keyring is None:
            given = op.get_context().config.attributes.get("keyring")
            self.keyring = given if given is not None else Keyring.from_settings(Settings.from_env())
        return self.keyring


def _retype(table: str, column: str, to_json: bool) -> None:
    """The column's type: TEXT, or back to JSON (JSONB on PostgreSQL)."""
    if op.get_bind().dialect.name == "postgresql":
        old, new = (sa.Text(), postgresql.JSONB()) if to_json else (postgresql.JSONB(), sa.Text())
        op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=(table, column) not in NOT_NULL,
                        postgresql_using=f"{column}::{'jsonb' if to_json else 'text'}")
        return
    fresh = f"{column}__0006"
    not_null = " NOT NULL DEFAULT '{}'" if (table, column) in NOT_NULL else ""
    op.execute(f"ALTER TABLE {table} ADD COLUMN {fresh} {'JSON' if to_json else 'TEXT'}{not_null}")
    op.execute(f"UPDATE {table} SET {fresh} = {column}")
    op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.execute(f"ALTER TABLE {table} RENAME COLUMN {fresh} TO {column}")


def _rewrite(table: str, change: Callable[[str, str], str | None]) -> None:
    """Every stored value of the table's encrypted columns through `change(column, value)`, in batches."""
    pk, json_cols, text_cols = ENCRYPTED[table]
    cols = (*json_cols, *text_cols)
    t = sa.table(table, *(sa.column(c, sa.Text()) for c in (*pk, *cols)))
    keys = [t.c[k] for k in pk]
    stmt = (sa.update(t).where(*(t.c[k] == sa.bindparam(f"pk_{k}") for k in pk))
            .values({c: sa.bindparam(f"new_{c}") for c in cols}))
    conn = op.get_bind()
    total = conn.scalar(sa.select(sa.func.count()).select_from(t))
    done, after = 0, None
    while True:
        query = sa.select(t).order_by(*keys).limit(BATCH_ROWS)
        if after is not None:
            query = query.where(sa.tuple_(*keys) > sa.tuple_(*after))
        rows = conn.execute(query).mappings().all()
        if not rows:
            return
        conn.execute(stmt, [{**{f"pk_{k}": row[k] for k in pk},
                             **{f"new_{c}": None if row[c] is None else change(c, row[c]) for c in cols}}
                            for row in rows])
        done += len(rows)
        after = tuple(rows[-1][k] for k in pk)
        log.info("0006: %s %d/%d rows", table, done, total)


def _encrypt(table: str, keys: _Keys) -> Callable[[str, str], str | None]:
    nullable_json = {c for c in ENCRYPTED[table][1] if (table, c) not in NOT_NULL}

    def change(column: str, value: str) -> str | None:
        if column in nullable_json and value == "null":  # what the JSON type stored for None
            return None
        return keys().encrypt(value.encode())

    return change


def _decrypt(keys: _Keys) -> Callable[[str, str], str | None]:
    return lambda _column, value: keys().decrypt(value).decode()


def upgrade() -> None:
    op.create_table(
        "encryption_check",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_encryption_check_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_encryption_check")),
    )
    keys = _Keys()
    for table, (_pk, json_cols, _text_cols) in ENCRYPTED.items():
        for column in json_cols:
            _retype(table, column, to_json=False)
        _rewrite(table, _encrypt(table, keys))
    if keys.keyring is not None:  # something was encrypted: record under which keys
        check = sa.table("encryption_check", sa.column("id", sa.Integer()), sa.column("token", sa.Text()))
        op.execute(check.insert().values(id=1, token=keys().encrypt(CHECK_TEXT.encode())))


def downgrade() -> None:
    keys = _Keys()
    for table, (_pk, json_cols, _text_cols) in ENCRYPTED.items():
        _rewrite(table, _decrypt(keys))
        for column in json_cols:
            _retype(table, column, to_json=True)
    op.drop_table("encryption_check")
