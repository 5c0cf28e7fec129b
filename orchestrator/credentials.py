"""API tokens and passwords: issuing, hashing, checking, listing and revoking users' tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from orchestrator.errors import NotFound, ValidationFailed
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
    expires_at: datetime | None = None,
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
        expires_at=expires_at,
    )
    session.add(cred)
    return cred, token


def find_credential(session: Session, token: str, now: datetime | None = None) -> ApiCredential | None:
    """The live credential for `token`, or None when it is unknown, revoked or expired."""
    cred = session.scalar(select(ApiCredential).where(ApiCredential.token_hash == hash_token(token)))
    return cred if cred is not None and _live(cred, now or utcnow()) else None


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
    """Who a request acts for: an operator ("user") or an agent; and, when known, through which grant
    (the API token's credential id, or the dashboard session's id) and until when (the token's expiry).
    An agent's carries its request signing mode and secret (orchestrator/signing.py), so that checking
    a signature needs no database read."""

    kind: str  # "user" | "agent"
    id: str
    is_admin: bool = False
    via: str | None = None
    until: datetime | None = None
    signing: str | None = None  # an agent's: "required" | "optional"
    signing_secret: str | None = field(default=None, repr=False)
    rate_limit_per_minute: int | None = None  # an agent's own limit; None: the settings' AGENT_RATE_LIMIT
    owner_id: str | None = None  # an agent's operator (None: it may do any operator's work)

    @property
    def is_user(self) -> bool:
        return self.kind == "user"

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None (unknown, revoked, expired, deactivated)."""
    cred = find_credential(session, token)
    return _owner(session, cred) if cred is not None else None


def credential_principal(session: Session, credential_id: str, now: datetime | None = None) -> Principal | None:
    """The principal of a live credential found by its id (what a stream token names), or None."""
    cred = session.get(ApiCredential, credential_id)
    if cred is None or not _live(cred, now or utcnow()):
        return None
    return _owner(session, cred)


def user_principal(session: Session, user_id: str, via: str | None = None) -> Principal | None:
    """The principal of an active user (a dashboard session's), or None."""
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        return None
    return Principal("user", user.id, user.is_admin, via=via)


def _live(cred: ApiCredential, now: datetime) -> bool:
    return cred.revoked_at is None and (cred.expires_at is None or cred.expires_at > now)


def _owner(session: Session, cred: ApiCredential) -> Principal | None:
    if cred.user_id is not None:
        user = session.get(User, cred.user_id)
        if user is None or not user.is_active:
            return None
        return Principal("user", user.id, user.is_admin, via=cred.id, until=cred.expires_at)
    agent = session.get(Agent, cred.agent_id)
    if agent is None or not agent.is_active:
        return None
    return Principal("agent", agent.id, via=cred.id, until=cred.expires_at, signing=agent.signing,
                     signing_secret=agent.signing_secret, rate_limit_per_minute=agent.rate_limit_per_minute,
                     owner_id=agent.owner_id)


# -- users' tokens ------------------------------------------------------------------------------------

TOKEN_NAME_MAX = 200


def token_status(cred: ApiCredential, now: datetime | None = None) -> str:
    if cred.revoked_at is not None:
        return "revoked"
    if cred.expires_at is not None and cred.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def issue_user_token(session: Session, user: User, name: str | None, expires_at: datetime | None,
                     not_after: datetime | None = None, now: datetime | None = None) -> tuple[ApiCredential, str]:
    """A new API token of `user`. `not_after` is the expiry of the token that asks for this one: a
    token cannot mint a token that outlives it (so a short-lived token cannot become a lasting one)."""
    now = now or utcnow()
    if not user.is_active:
        raise ValidationFailed(f"User {user.username} is deactivated; activate it first.", user_id=user.id)
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at must be in the future.", field="expires_at")
    if not_after is not None and (expires_at is None or expires_at > not_after):
        raise ValidationFailed("A token cannot outlive the token that issues it; set an earlier expiry.",
                               field="expires_at", not_after=not_after.isoformat())
    if name is not None and not (0 < len(name) <= TOKEN_NAME_MAX):
        raise ValidationFailed(f"A token's name has 1 to {TOKEN_NAME_MAX} characters.", field="name")
    return issue_credential(session, user_id=user.id, label=name, expires_at=expires_at)


def user_tokens(session: Session, user_id: str) -> list[ApiCredential]:
    """Every token of the user, revoked and expired ones too, newest first."""
    return list(session.scalars(select(ApiCredential).where(ApiCredential.user_id == user_id)
                                .order_by(ApiCredential.created_at.desc(), ApiCredential.id.desc())))


def revoke_user_token(session: Session, user_id: str, token_id: str, now: datetime | None = None) -> ApiCredential:
    """Revoke token `token_id` of `user_id` (again is a no-op); NotFound when it is not that user's."""
    cred = session.get(ApiCredential, token_id)
    if cred is None or cred.user_id != user_id:
        raise NotFound(f"Token {token_id} not found.", token_id=token_id)
    if cred.revoked_at is None:
        cred.revoked_at = now or utcnow()
    return cred
