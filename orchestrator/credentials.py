"""API tokens and passwords: issuing, hashing, checking."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from orchestrator.models import Agent, ApiCredential, User, utcnow


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str) -> str:
    """A fresh bearer token; the kind ("usr", "agt") in front tells a leaked token's owner at a glance."""
    return f"{kind}_{secrets.token_urlsafe(32)}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def issue_credential(
    session: Session,
    *,
    user_id: str | None = None,
    agent_id: str | None = None,
    label: str | None = None,
    token: str | None = None,
) -> tuple[ApiCredential, str]:
    """Store a credential and return it with the plain token, which is never stored."""
    token = token or new_token("usr" if user_id else "agt")
    cred = ApiCredential(
        id=new_id("cred"),
        token_hash=hash_token(token),
        token_prefix=token[:12],
        user_id=user_id,
        agent_id=agent_id,
        label=label,
    )
    session.add(cred)
    return cred, token


def find_credential(session: Session, token: str, now: datetime | None = None) -> ApiCredential | None:
    """The live credential for `token`, or None when it is unknown, revoked or expired."""
    cred = session.scalar(select(ApiCredential).where(ApiCredential.token_hash == hash_token(token)))
    if cred is None or cred.revoked_at is not None:
        return None
    now = now or utcnow()
    if cred.expires_at is not None and cred.expires_at <= now:
        return None
    return cred


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def check_password(user: User, password: str) -> bool:
    if not user.password_hash:
        # Compare anyway so that a user without a password costs the same time as a wrong one.
        hmac.compare_digest("x", "y")
        return False
    return check_password_hash(user.password_hash, password)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an operator ("user") or an agent."""

    kind: str  # "user" | "agent"
    id: str
    is_admin: bool = False

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None (unknown, revoked, expired, deactivated)."""
    cred = find_credential(session, token)
    if cred is None:
        return None
    if cred.user_id is not None:
        user = session.get(User, cred.user_id)
        if user is None or not user.is_active:
            return None
        return Principal("user", user.id, user.is_admin)
    agent = session.get(Agent, cred.agent_id)
    if agent is None or not agent.is_active:
        return None
    return Principal("agent", agent.id)
