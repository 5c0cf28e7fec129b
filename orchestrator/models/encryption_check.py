"""The database's proof of which keys encrypt it."""

from __future__ import annotations

from sqlalchemy import CheckConstraint
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.encryption import EncryptedText
from orchestrator.models.base import Base


class EncryptionCheck(Base):
    """One row: a known text encrypted under this database's keys, written by the first process (or
    migration) that encrypts anything. A process whose keys cannot read it back stops at startup
    (`orchestrator/encryption_keys.py`) instead of writing data the others cannot read."""

    __tablename__ = "encryption_check"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    token: Mapped[str] = mapped_column(EncryptedText)
