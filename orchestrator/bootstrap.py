"""First-run setup that scripts and tests rely on: the admin user named by the environment."""

from __future__ import annotations

from sqlalchemy import exists, select, update

from orchestrator.credentials import hash_password, hash_token, issue_credential, new_id
from orchestrator.db import Database
from orchestrator.models import ApiCredential, User, utcnow

ADMIN_TOKEN_LABEL = "ORCHESTRATOR_ADMIN_TOKEN"


def ensure_admin(db: Database, username: str, token: str, password: str | None = None) -> User:
    """Create or update admin `username` so that `token` is its API token (earlier env tokens are revoked)."""
    with db.unit_of_work() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            user = User(id=new_id("user"), username=username, display_name=username, is_admin=True)
            session.add(user)
            session.flush()
        user.is_admin = True
        user.is_active = True
        if password:
            user.password_hash = hash_password(password)
        wanted = hash_token(token)
        current = session.scalar(select(ApiCredential).where(ApiCredential.token_hash == wanted))
        if current is not None and current.user_id != user.id:
            raise ValueError("ORCHESTRATOR_ADMIN_TOKEN is already the token of another account")
        session.execute(
            update(ApiCredential)
            .where(
                ApiCredential.user_id == user.id,
                ApiCredential.label == ADMIN_TOKEN_LABEL,
                ApiCredential.token_hash != wanted,
                ApiCredential.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow())
        )
        if current is None:
            issue_credential(session, user_id=user.id, label=ADMIN_TOKEN_LABEL, token=token)
        else:
            current.revoked_at = None
        return user


def admin_can_log_in(db: Database) -> bool:
    """Whether an active admin with a dashboard password exists: someone can log in and add others."""
    with db.reading() as session:
        return bool(session.scalar(select(exists().where(User.is_admin.is_(True), User.is_active.is_(True),
                                                         User.password_hash.is_not(None)))))
