"""Event shards as the database knows them: the fence that keeps a late lease holder from committing."""

from __future__ import annotations

from sqlalchemy import BigInteger
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.models.base import Base


class ShardFence(Base):
    """The highest lease token that has committed a batch of the shard's events.

    Every batch's transaction ends by raising it to its own token, and is refused when it already
    holds a higher one: a holder whose lease expired (a stalled worker) cannot commit over the batches
    of the holder that took the shard after it (see `orchestrator/events/drain.py`).
    """

    __tablename__ = "shard_fences"

    shard: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    token: Mapped[int] = mapped_column(BigInteger)
