"""A web process's cache of principals (by token, session or credential), valid under one access epoch.

Entries are loaded from the database under the access epoch read just before (orchestrator/revocation.py)
and kept only while the cache is at that epoch: seeing another value empties it, and an entry loaded
under a value the cache has already left is not stored. An entry also goes after CACHE_SECONDS, and
at its token's expiry.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from orchestrator.credentials import Principal
from orchestrator.models import utcnow

CACHE_SECONDS = 30.0
_MAX_ENTRIES = 10_000
_UNSEEN = object()  # no epoch read yet: equal to no value Redis can hold


@dataclass(frozen=True)
class Hit:
    principal: Principal
    epoch: bytes | None  # the epoch the entry was loaded under


class PrincipalCache:
    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._epoch: object = _UNSEEN

    def get(self, key: str) -> Hit | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] < time.monotonic():
                return None
            principal = entry[1]
            if principal.until is not None and principal.until <= utcnow():
                del self._entries[key]
                return None
            return Hit(principal, self._epoch)  # type: ignore[arg-type]

    def observe(self, epoch: bytes | None) -> None:
        """The epoch as just read from Redis: a new value empties the cache."""
        with self._lock:
            if epoch != self._epoch:
                self._entries.clear()
                self._epoch = epoch

    def put(self, key: str, principal: Principal, epoch: bytes | None) -> None:
        """Keep `principal`, loaded from the database after `epoch` was read, unless the cache has
        moved on from that epoch meanwhile (the load may predate a revocation)."""
        with self._lock:
            if epoch != self._epoch:
                return
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._epoch = _UNSEEN
