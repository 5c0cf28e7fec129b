"""Dashboard login sessions, held in Redis so that they can end: at logout, on a password reset, on
deactivation.

The browser's cookie (signed by Flask) carries only the session id; the record it names says whose
session it is. A cookie kept after logout therefore opens nothing: its record is gone. Each user's
session ids are also kept in a set, so that all of them can be ended at once. A Redis that loses its
data logs everyone out, which is the safe way to fail.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

import redis

# A dashboard session lasts a working day at most, however active; then the operator logs in again.
LIFETIME = timedelta(hours=12)
PREFIX = "ses_"


def session_key(prefix: str, sid: str) -> str:
    return f"{prefix}auth:session:{sid}"


def user_sessions_key(prefix: str, user_id: str) -> str:
    return f"{prefix}auth:user-sessions:{user_id}"


def is_session_id(grant: str | None) -> bool:
    return bool(grant) and grant.startswith(PREFIX)  # type: ignore[union-attr]


class SessionStore:
    def __init__(self, r: redis.Redis, prefix: str, lifetime: timedelta = LIFETIME) -> None:
        self.redis = r
        self.prefix = prefix
        self.lifetime = lifetime

    def start(self, user_id: str) -> str:
        """A new session of `user_id`; its id goes in the cookie."""
        sid = PREFIX + secrets.token_urlsafe(32)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(session_key(self.prefix, sid), user_id, ex=self.lifetime)
        pipe.sadd(user_sessions_key(self.prefix, user_id), sid)
        pipe.expire(user_sessions_key(self.prefix, user_id), self.lifetime)  # outlives its newest session
        pipe.execute()
        return sid

    def user_of(self, sid: str) -> str | None:
        raw = self.redis.get(session_key(self.prefix, sid))
        return raw.decode() if raw is not None else None

    def end(self, sid: str) -> None:
        user_id = self.user_of(sid)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(session_key(self.prefix, sid))
        if user_id is not None:
            pipe.srem(user_sessions_key(self.prefix, user_id), sid)
        pipe.execute()

    def end_all(self, user_id: str) -> list[str]:
        """End every session of `user_id`; returns their ids."""
        key = user_sessions_key(self.prefix, user_id)
        sids = sorted(s.decode() for s in self.redis.smembers(key))
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.delete(session_key(self.prefix, sid))
        pipe.delete(key)
        pipe.execute()
        return sids
