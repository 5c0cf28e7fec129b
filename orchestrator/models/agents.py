"""Registry of agents that poll for work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.encryption import EncryptedText
from orchestrator.models.base import Base, utcnow


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "agent_larry_001"
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(200))  # "Full-stack contractor"
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)

    poll_endpoint: Mapped[str | None] = mapped_column(String(500))
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    is_active: Mapped[bool] = mapped_column(default=True)
    last_heartbeat: Mapped[datetime | None]

    # [{"action": "send_email", "params": ["to", "subject", "body"]}, ...]
    capabilities: Mapped[list[Any]] = mapped_column(default=list)

    # Request signing (orchestrator/signing.py): "required" or "optional" (during a migration). Agents
    # registered before signing existed have no secret and were migrated as "optional".
    signing: Mapped[str] = mapped_column(String(16), default="required", server_default="optional")
    signing_secret: Mapped[str | None] = mapped_column(EncryptedText())  # the HMAC key, shown once
    # Requests per minute this agent may make; NULL means the settings' default.
    rate_limit_per_minute: Mapped[int | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
