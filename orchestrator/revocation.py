"""Revocations reach every web process at once: the access epoch and the `access_revoked` message.

Web processes keep who a token or a login stands for in a per-process cache, so that the event
path need not ask the database. Whatever takes access away (a token revoked, a user deactivated,
a password reset, a logout) first commits, then calls `announce`, which in one round trip:
- sets the **access epoch** (`{prefix}auth:epoch`) to a fresh random value. A cache holds only
  entries loaded under the value it last read, and a request trusts a cached entry only once its
  own first Redis round trip has read the epoch again and found it unchanged (`EpochSeen`). A
  random value, not a counter, so that a Redis that lost the key cannot come back to a value
  some cache still holds;
- publishes `access_revoked` on the live stream's channel, naming the users and the grants (token
  ids, login session ids) it concerns, so that open WebSockets opened through them close (1008).
  Grants are named by a digest: a session id is a secret, and the message passes through every
  web process's relay.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
import redis

from orchestrator.publish import channel

ACCESS_REVOKED = "access_revoked"


def epoch_key(prefix: str) -> str:
    return f"{prefix}auth:epoch"


class EpochChanged(Exception):
    """The access epoch moved since the caller's cache was filled: authenticate again, from the database."""

    def __init__(self, current: bytes | None) -> None:
        super().__init__("access epoch changed")
        self.current = current


@dataclass(frozen=True)
class EpochSeen:
    """The epoch a cached principal was loaded under, for a caller whose first round trip re-reads it."""

    key: str
    value: bytes | None

    def queue(self, pipe: redis.client.Pipeline) -> None:
        """Read the epoch in a caller's round trip (orchestrator/round_trip.py)."""
        pipe.get(self.key)

    def verify(self, current: bytes | None) -> None:
        """Raise EpochChanged unless `current`, the key's value read just now, is the one seen."""
        if current != self.value:
            raise EpochChanged(current)


def grant_ref(grant: str) -> str:
    return hashlib.sha256(grant.encode()).hexdigest()[:32]


def revoked_message(user_ids: Iterable[str] = (), grants: Iterable[str] = ()) -> dict[str, object]:
    return {"type": ACCESS_REVOKED, "user_ids": sorted(set(user_ids)), "grants": sorted({grant_ref(g) for g in grants})}


def revokes(msg: dict[str, object], user_id: str, grant: str | None) -> bool:
    """Whether an `access_revoked` message ends access of `user_id` through `grant`."""
    users, grants = msg.get("user_ids") or (), msg.get("grants") or ()
    return user_id in users or (grant is not None and grant_ref(grant) in grants)  # type: ignore[operator]


def announce(r: redis.Redis, prefix: str, *, user_ids: Iterable[str] = (), grants: Iterable[str] = ()) -> None:
    """Tell every process that access changed. Call after the change has committed: a process that
    reloads from the database before the commit would cache the old state under the new epoch."""
    pipe = r.pipeline(transaction=False)
    pipe.set(epoch_key(prefix), secrets.token_hex(8))
    pipe.publish(channel(prefix), orjson.dumps(revoked_message(user_ids, grants)))
    pipe.execute()
