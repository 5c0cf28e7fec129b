"""A web process's cache of principals (by token, session or credential), valid under one access epoch.

Entries are loaded from the database under the access epoch read just before (orchestrator/revocation.py)
and kept only while the cache is at that epoch: seeing another value empties it, and an entry loaded
under a value the cache has already left is not stored. An entry also goes after CACHE_SECONDS, and
at its token's expiry.

CACHE_SECONDS is not what makes a revocation take effect (the epoch does, at once); it bounds what no
epoch announces: a revocation whose announcement failed (its request was answered 503, and a retry
announces again), a row changed in the database by hand. It is minutes, not seconds, because at
10,000 agents polling every 10 s through a few web processes a 30 s lifetime reloaded an agent
from the database on about half its polls (docs/performance-polls.md).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

from orchestrator.credentials import Principal
from orchestrator.models import utcnow

CACHE_SECONDS = 300.0
_MAX_ENTRIES = 50_000  # agents and users a process keeps; past that the oldest tenth makes room
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
                for stale in list(itertools.islice(self._entries, _MAX_ENTRIES // 10)):
                    del self._entries[stale]  # the first inserted: dicts keep insertion order
            self._entries[key] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._epoch = _UNSEEN
