"""Operators' accounts: creating users, deactivating and activating them, their passwords and tokens.

One service for the CLI (`orchestrator users|tokens ...`) and the API (`/api/admin/users`,
`/api/me/tokens`). Whatever takes access away commits first, then ends the dashboard sessions it
concerns and announces itself (`orchestrator/revocation.py`), so that every web process refuses the
old access from its next request on and open WebSockets close:
- deactivating a user ends its sessions, its tokens' and sessions' stream tokens and sockets;
- revoking a token ends that token, and the stream tokens and sockets opened with it;
- setting a password ends the user's dashboard sessions (tokens stay: they are revoked one by one).
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from orchestrator.credentials import (
    check_password,
    hash_password,
    issue_user_token,
    new_id,
    revoke_user_token,
    token_status,
    user_tokens,
)
from orchestrator.db import Database, flush_new
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.models import ApiCredential, User, utcnow
from orchestrator.publish import iso
from orchestrator.revocation import announce
from orchestrator.sessions import SessionStore

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,119}")
USERNAME_RULE = "1 to 120 letters, digits or . _ @ + -, starting with a letter or digit"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def valid_username(username: str) -> bool:
    return USERNAME.fullmatch(username) is not None


def check_password_rule(password: str) -> None:
    if not (MIN_PASSWORD <= len(password) <= MAX_PASSWORD):
        raise ValidationFailed(f"A password has {MIN_PASSWORD} to {MAX_PASSWORD} characters.", field="password")
    if "\x00" in password:
        raise ValidationFailed("A password cannot contain a NUL character.", field="password")


@functools.cache
def _stand_in_hash() -> str:
    # Made on first use, not at import: hashing costs tens of milliseconds.
    return hash_password(secrets.token_urlsafe(16))


def verify_login(s: Session, username: str, password: str) -> User | None:
    """The active user `username` whose password this is, or None. An unknown or malformed username
    costs one password hash too, so that the answer's time does not tell which usernames exist."""
    # Names made before the username rule may break it; a NUL or control character never matches.
    plausible = 0 < len(username) <= 120 and username.isprintable()
    user = s.scalar(select(User).where(User.username == username)) if plausible else None
    if user is None or not user.password_hash:
        check_password_hash(_stand_in_hash(), password)
        return None
    if not check_password(user, password) or not user.is_active:
        return None
    return user


def user_view(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "display_name": user.display_name, "email": user.email,
            "is_admin": user.is_admin, "is_active": user.is_active, "created_at": iso(user.created_at),
            "deactivated_at": iso(user.deactivated_at)}


def token_view(cred: ApiCredential, now: datetime | None = None) -> dict[str, Any]:
    """A token as listings show it: never the token itself, which exists only in the issuing answer."""
    return {"id": cred.id, "name": cred.label, "prefix": cred.token_prefix, "status": token_status(cred, now),
            "created_at": iso(cred.created_at), "expires_at": iso(cred.expires_at),
            "revoked_at": iso(cred.revoked_at)}


@dataclass(frozen=True)
class NewUser:
    username: str
    password: str | None = None
    is_admin: bool = False
    display_name: str | None = None
    email: str | None = None


class Accounts:
    def __init__(self, db: Database, r: redis.Redis, prefix: str) -> None:
        self.db = db
        self.redis = r
        self.prefix = prefix
        self.sessions = SessionStore(r, prefix)

    # -- users -------------------------------------------------------------------------------------

    def create(self, new: NewUser) -> User:
        if not valid_username(new.username):
            raise ValidationFailed(f"A username has {USERNAME_RULE}.", field="username")
        if new.password is not None:
            check_password_rule(new.password)
        with self.db.unit_of_work() as s:
            taken = s.scalar(select(User.id).where(func.lower(User.username) == new.username.lower()))
            if taken is not None:
                raise Conflict(f"The username {new.username} is taken.", username=new.username)
            user = User(id=new_id("user"), username=new.username, display_name=new.display_name or new.username,
                        email=new.email, is_admin=new.is_admin, is_active=True,
                        password_hash=hash_password(new.password) if new.password is not None else None)
            s.add(user)
            flush_new(s, Conflict(f"The username {new.username} is taken.", username=new.username))
        return user

    def list(self) -> list[User]:
        with self.db.reading() as s:
            return list(s.scalars(select(User).order_by(User.username)))

    def get(self, user_id: str) -> User:
        with self.db.reading() as s:
            return _user(s, user_id)

    def id_of(self, username: str) -> str:
        """The id of the user named `username` (what the CLI is given)."""
        with self.db.reading() as s:
            user_id = s.scalar(select(User.id).where(User.username == username))
        if user_id is None:
            raise NotFound(f"No user named {username}.", username=username)
        return user_id

    def deactivate(self, user_id: str) -> User:
        with self.db.unit_of_work() as s:
            user = _user(s, user_id, lock=True)
            if user.is_active and user.is_admin:
                _keep_an_admin(s, user)
            if user.is_active:
                user.is_active = False
                user.deactivated_at = utcnow()
        sids = self.sessions.end_all(user_id)
        announce(self.redis, self.prefix, user_ids=[user_id], grants=sids)
        return user

    def activate(self, user_id: str) -> User:
        with self.db.unit_of_work() as s:
            user = _user(s, user_id, lock=True)
            user.is_active = True
            user.deactivated_at = None
        # Nothing to end, but caches must learn it: the epoch also moves when access is given back.
        announce(self.redis, self.prefix)
        return user

    def set_password(self, user_id: str, password: str) -> None:
        check_password_rule(password)
        with self.db.unit_of_work() as s:
            _user(s, user_id, lock=True).password_hash = hash_password(password)
        sids = self.sessions.end_all(user_id)
        announce(self.redis, self.prefix, grants=sids)

    # -- tokens ------------------------------------------------------------------------------------

    def issue_token(self, user_id: str, name: str | None, expires_at: datetime | None,
                    not_after: datetime | None = None) -> tuple[ApiCredential, str]:
        """A new token of `user_id` and the token itself, which is shown this once and never stored."""
        with self.db.unit_of_work() as s:
            return issue_user_token(s, _user(s, user_id), name, expires_at, not_after)

    def tokens(self, user_id: str) -> list[ApiCredential]:
        with self.db.reading() as s:
            _user(s, user_id)
            return user_tokens(s, user_id)

    def revoke_token(self, user_id: str, token_id: str) -> ApiCredential:
        with self.db.unit_of_work() as s:
            cred = revoke_user_token(s, user_id, token_id)
        announce(self.redis, self.prefix, grants=[token_id])
        return cred

    def owner_of_token(self, token_id: str) -> str:
        """The user whose token `token_id` is (the CLI revokes by token id alone)."""
        with self.db.reading() as s:
            cred = s.get(ApiCredential, token_id)
        if cred is None or cred.user_id is None:
            raise NotFound(f"Token {token_id} not found.", token_id=token_id)
        return cred.user_id


def _user(s: Session, user_id: str, lock: bool = False) -> User:
    user = s.get(User, user_id, with_for_update=lock)
    if user is None:
        raise NotFound(f"User {user_id} not found.", user_id=user_id)
    return user


def _keep_an_admin(s: Session, leaving: User) -> None:
    """Refuse to deactivate the last active admin: nobody could then manage users over the API."""
    others = s.scalar(select(func.count()).select_from(User).where(
        User.is_admin.is_(True), User.is_active.is_(True), User.id != leaving.id))
    if not others:
        raise Conflict("This is the last active admin; make another admin first.", user_id=leaving.id)
