"""A shard's lease and its fencing token: who may read a shard's stream, and whose batches may commit.

The lease is a Redis key with a short expiry (INGEST_LEASE_SECONDS) whose value is the holder's
token. Tokens come from a per-shard counter that only grows, drawn in the same Lua call that takes
the lease, so a later holder always has a higher token. While its holder lives a thread renews the
lease every third of its length, inside long transactions too; when the holder dies (or its Redis
restarts from an AOF with the key in it) the lease runs out in seconds.

An expired lease does not stop a holder that is merely stalled (a long GC pause, a frozen VM): it
wakes up believing it still drains. Two checks make that harmless:
- reading: `XREADGROUP` runs in the same Lua call that checks the token, so a late holder takes no
  new entry from the stream (a new holder reads everything the old one left pending first);
- committing: each batch's transaction ends with `advance_fence`, which raises the shard's row in
  `shard_fences` to the holder's token and refuses (`FencedOut`) when a newer token has already
  committed there. The late holder's batch rolls back whole and it acknowledges nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from orchestrator.events.protocol import CONSUMER, GROUP, Keys
from orchestrator.models import ShardFence

log = logging.getLogger(__name__)

Raw = list[tuple[bytes, dict[bytes, bytes]]]

# KEYS: lease, token counter. ARGV: lease ms. Returns the new token, or nil when the lease is held.
_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local token = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], token, 'px', ARGV[1])
return token
"""
# KEYS: lease. ARGV: token, lease ms. Returns 1 when the lease was still ours (and is renewed).
_RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('pexpire', KEYS[1], ARGV[2])
"""
# KEYS: a key holding a holder's token. ARGV: that token. Deletes the key only while it is still theirs
# (a shard's lease here; a pool's claim slot in orchestrator/ready_work.py).
RELEASE_IF_HELD = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('del', KEYS[1])
"""
# KEYS: lease, stream. ARGV: token, lease ms, group, consumer, count, start id. Returns nil when the
# lease is not ours, else the entries read ([id, fields or nil] each; nil for one deleted meanwhile).
_READ = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return false end
redis.call('pexpire', KEYS[1], ARGV[2])
local found = redis.call('xreadgroup', 'GROUP', ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'STREAMS', KEYS[2], ARGV[6])
if not found then return {} end
return found[1][2]
"""
# KEYS: token counter. ARGV: a token the database has seen commit.
_RAISE_FLOOR = """
local current = tonumber(redis.call('get', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('set', KEYS[1], ARGV[1]) end
return 0
"""


class LeaseLost(Exception):
    """The shard's lease ran out and may be another worker's now: stop draining. What has committed
    stays committed; what has not is still pending, for the next holder."""


class FencedOut(LeaseLost):
    """A newer lease holder has committed a batch of the shard: this batch was rolled back whole."""

    def __init__(self, shard: int, token: int, newest: int) -> None:
        super().__init__(f"shard {shard}: lease token {token} is older than {newest}, which has committed")
        self.shard = shard
        self.token = token
        self.newest = newest


class ShardLeases:
    """Takes shards' leases for one drainer; the Lua scripts are registered once here."""

    def __init__(self, r: redis.Redis, keys: Keys, seconds: int) -> None:
        self.redis = r
        self.keys = keys
        self.ms = max(1, int(seconds * 1000))
        self._acquire = r.register_script(_ACQUIRE)
        self.renew_script = r.register_script(_RENEW)
        self.release_script = r.register_script(RELEASE_IF_HELD)
        self.read_script = r.register_script(_READ)
        self._raise_floor = r.register_script(_RAISE_FLOOR)

    def acquire(self, shard: int) -> ShardLease | None:
        """The shard's lease with a fresh token, or None while someone else holds it."""
        token = self._acquire(keys=[self.keys.lease(shard), self.keys.lease_tokens(shard)], args=[self.ms])
        return None if token is None else ShardLease(self, shard, int(token))

    def raise_floor(self, shard: int, token: int) -> None:
        """Make the next token higher than `token`, one the database has seen commit. Redis may have
        come back with an older counter (an AOF written up to a second late) or none at all (a new
        Redis); without this its holders would be refused until the counter caught up on its own."""
        self._raise_floor(keys=[self.keys.lease_tokens(shard)], args=[token])


class ShardLease:
    """One holder's lease on one shard, under its token."""

    def __init__(self, leases: ShardLeases, shard: int, token: int) -> None:
        self.leases = leases
        self.shard = shard
        self.token = token
        self._key = leases.keys.lease(shard)

    def held(self) -> bool:
        """Whether the lease is still ours; if it is, it is extended to its full length again."""
        return bool(self.leases.renew_script(keys=[self._key], args=[self.token, self.leases.ms]))

    def renew(self) -> None:
        """Extend the lease to its full length again; LeaseLost if it is no longer ours."""
        if not self.held():
            raise LeaseLost(f"shard {self.shard}: lease token {self.token} expired")

    def read(self, stream: str, start: str, count: int) -> Raw:
        """`XREADGROUP` from `start` (">": new entries; "0" or an entry id: the pending ones after it)
        while the lease is ours, renewing it; LeaseLost otherwise. Deleted pending entries come back
        with no fields."""
        found: Any = self.leases.read_script(
            keys=[self._key, stream], args=[self.token, self.leases.ms, GROUP, CONSUMER, count, start])
        if found is None:
            raise LeaseLost(f"shard {self.shard}: lease token {self.token} expired")
        return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}) for entry_id, flat in found]

    def release(self) -> None:
        """Give the lease up, unless it has already passed to someone else."""
        self.leases.release_script(keys=[self._key], args=[self.token])

    @contextmanager
    def kept_alive(self) -> Iterator[None]:
        """Renew the lease from a thread while the block runs, so that a batch whose transaction
        outlasts the lease keeps it. The thread dies with the process, and the lease soon after."""
        stop = threading.Event()
        thread = threading.Thread(target=self._keep_renewing, args=(stop,), daemon=True,
                                  name=f"lease-{self.shard}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _keep_renewing(self, stop: threading.Event) -> None:
        # Every third of the lease: one or two failed renewals (a Redis blip) do not lose it.
        interval = self.leases.ms / 3000
        while not stop.wait(interval):
            try:
                self.renew()
            except LeaseLost:
                log.warning("shard %s: lease token %s expired while draining", self.shard, self.token)
                return
            except redis.RedisError as exc:
                log.warning("shard %s: could not renew the lease (%s); trying again", self.shard, exc)


def advance_fence(session: Session, shard: int, token: int) -> None:
    """Record, in the batch's own transaction, that `token` commits a batch of `shard`; FencedOut
    (and the caller's unit of work rolls back) when a higher token already has.

    Called last, after `apply_batch` has taken its row locks: the row is the shard's alone and only
    its lease holders take it, so it serialises a late holder with the new one and nothing else. It
    runs on the connection, not through the session, so that nothing is flushed early and the event
    rows are still inserted by the commit's final flush, numbered on their way in."""
    table = ShardFence.__table__
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table).values(shard=shard, token=token)
    stmt = stmt.on_conflict_do_update(index_elements=[table.c.shard], set_={"token": stmt.excluded.token},
                                      where=table.c.token <= stmt.excluded.token).returning(table.c.token)
    conn = session.connection()
    if conn.execute(stmt).first() is None:
        newest = conn.execute(select(table.c.token).where(table.c.shard == shard)).scalar_one()
        raise FencedOut(shard, token, int(newest))
