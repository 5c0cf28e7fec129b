"""Draining a shard: read a batch from its Redis stream, apply it, commit, then acknowledge.

Only the holder of the shard's lease reads it, so events of one execution are applied in the order
they were accepted (invariant 3). Entries are acknowledged (and deleted) only after the database
commit (invariant 1); a worker killed mid-batch leaves them pending, and the next lease holder
reads its pending list before anything new. Replies, pub/sub and hold releases follow the commit
(invariant 5).

The lease is short and renewed while its holder lives (`events/lease.py`), so a dead worker's shard
resumes within seconds. A holder that outlived its lease without noticing (a stalled process) can
neither read new entries nor commit over the batches of the holder after it: each batch's
transaction ends at the shard's fence (`advance_fence`), and a refused batch rolls back whole and
stops the drain, with nothing acknowledged and nothing set aside.

A bad message is the message's problem, not the shard's: when a batch fails for a reason other
than an unreachable database or Redis, it is split until the entries that fail alone are found; the
rest is applied. A failing entry stays pending and is tried again, and once it has been delivered
`max_deliveries` times it is moved to the dead-letter stream (`dead_letters`), its outcome becomes
`rejected`, and the shard moves on. Entries that cannot even be decoded go there at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import orjson
import redis
from redis.exceptions import ResponseError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from orchestrator.db import Database, is_transient
from orchestrator.effects import Notify, queue_effects, report_effects
from orchestrator.events.apply import BatchResult, WorkerMemory, apply_batch
from orchestrator.events.dead_letters import DeadLetters
from orchestrator.events.lease import FencedOut, LeaseLost, ShardLease, ShardLeases, advance_fence
from orchestrator.events.protocol import GROUP, SHARDS_SWEPT, Envelope, Keys, MalformedEntry, store_outcome
from orchestrator.metrics import instruments
from orchestrator.models import utcnow

log = logging.getLogger(__name__)

Entry = tuple[bytes, Envelope]
Raw = dict[bytes, dict[bytes, bytes]]

MAX_DELIVERIES = 3


@dataclass
class DrainStats:
    shard: int
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    lease_taken: bool = True
    more: bool = False  # stopped at the time budget with entries left: drain again soon
    superseded: bool = False  # the lease passed to a newer holder mid-drain: it drains the rest


def ensure_group(r: redis.Redis, stream: str) -> None:
    try:
        r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_unavailable(exc: BaseException) -> bool:
    """The database or Redis cannot be reached, the pool has no connection free, or the database keeps
    choosing us as a deadlock victim: no entry is to blame, so nothing may be set aside; the batch
    waits for the next drain. An OperationalError counts as such, except PostgreSQL's "program limit
    exceeded" (class 54: an index row or a statement too large), which an entry can cause."""
    if isinstance(exc, redis.RedisError | PoolTimeout):
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        return not str(getattr(exc.orig, "sqlstate", None) or "").startswith("54")
    return isinstance(exc, DBAPIError) and (exc.connection_invalidated or is_transient(exc))


def _worth_retrying(exc: DBAPIError) -> bool:
    # The batch rolls back whole, so another try is safe after a deadlock, a lost connection or a
    # racing duplicate insert.
    return isinstance(exc, IntegrityError) or exc.connection_invalidated or is_transient(exc)


class ShardDrainer:
    def __init__(self, db: Database, r: redis.Redis, prefix: str, *, batch_size: int, lease_seconds: int,
                 notify: Notify | None = None, max_deliveries: int = MAX_DELIVERIES) -> None:
        self.db = db
        self.redis = r
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.notify = notify
        self.max_deliveries = max_deliveries
        self.dead_letters = DeadLetters(r, prefix)
        self.leases = ShardLeases(r, self.keys, lease_seconds)
        self._grouped: set[str] = set()
        self.memory = WorkerMemory()

    def _ensure_group(self, stream: str) -> None:
        # Once per stream and process; a Redis that lost the group (a restart without persistence)
        # makes the read fail with NOGROUP, and the next drain comes here again (see `drain`).
        if stream not in self._grouped:
            ensure_group(self.redis, stream)
            self._grouped.add(stream)

    def retry_after(self, shard: int) -> float | None:
        """When a drain found the lease taken: the seconds after which one more drain should run, if
        entries wait and none is scheduled yet; else None. A holder that died leaves its lease to
        expire, and nothing else would trigger a drain of an idle shard until beat's next round."""
        if self.redis.xlen(self.keys.stream(shard)) == 0:
            return None
        ttl_ms = max(int(self.redis.pttl(self.keys.lease(shard))), 0) + 200
        if not self.redis.set(self.keys.retry_flag(shard), b"1", nx=True, px=ttl_ms):
            return None  # one is scheduled already
        return ttl_ms / 1000

    def drain(self, shard: int, budget_seconds: float = 0.25, max_rounds: int = 20) -> DrainStats:
        """Drain `shard` until its stream is empty, or return at once if another worker holds it.

        A drain stops after `budget_seconds` with `more` set, so that a busy shard cannot keep a
        worker process from the other shards' triggers waiting behind it in the queue.
        """
        try:
            return self._drain(shard, budget_seconds, max_rounds)
        except BaseException:
            # The trigger flag says a drain will read the stream again; this one will not, so the
            # next accepted event must trigger one (best effort: Redis may be what failed).
            with contextlib.suppress(redis.RedisError):
                self.redis.delete(self.keys.trigger_flag(shard))
            raise

    def _drain(self, shard: int, budget_seconds: float, max_rounds: int) -> DrainStats:
        stats = DrainStats(shard)
        stream = self.keys.stream(shard)
        deadline = time.monotonic() + budget_seconds
        for _ in range(max_rounds):
            lease = self.leases.acquire(shard)
            if lease is None:
                stats.lease_taken = stats.batches > 0
                return stats
            try:
                self._ensure_group(stream)
                with lease.kept_alive():
                    self._drain_locked(lease, stream, stats, deadline)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._grouped.discard(stream)  # Redis lost the stream's group: make it again, go on
                continue
            except LeaseLost as exc:
                if not self._token_was_behind(lease, exc):
                    log.warning("shard %s: stopped draining, a newer lease holder takes over (%s)", shard, exc)
                    stats.superseded = True
                    return stats
            finally:
                lease.release()
            # The trigger flag stood for this drain: events accepted while it ran sent no trigger,
            # since it reads on until the stream is empty. Clearing it first means: whatever arrives
            # from here on triggers a drain itself, and whatever arrived before is seen by the
            # length check.
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.trigger_flag(shard))
            pipe.xlen(stream)
            if pipe.execute()[1] == 0:
                break
            if time.monotonic() >= deadline:
                stats.more = True
                break
        return stats

    def _drain_locked(self, lease: ShardLease, stream: str, stats: DrainStats, deadline: float) -> None:
        """Read, apply and acknowledge batches until the stream is empty or the budget is spent.
        Raises LeaseLost once the lease is no longer ours (each read renews it, or finds it gone)."""
        shard = lease.shard
        start = "0"  # first what a dead predecessor (or a failed try) read but never acknowledged
        while True:
            got = lease.read(stream, start, self.batch_size)
            raw = [(eid, f) for eid, f in got if f]  # pending entries already deleted come back empty
            if not raw:
                if start == ">":
                    return
                start = self._next_start(start, got)
                continue
            entries = self._decode(shard, stream, raw, stats)
            began = time.perf_counter()
            result, failed = self._apply_isolating(entries, lease, first_delivery=start == ">")
            _count_batch(result, len(raw), time.perf_counter() - began)
            done = [eid for eid, _ in entries if eid not in failed]
            self._after_commit(result, {env.id for _, env in entries if not env.awaited}, stream, done)
            stats.batches += 1
            stats.applied += result.applied
            stats.duplicates += result.duplicates
            stats.batch_sizes.append(len(raw))
            if failed:
                lease.renew()  # set entries aside only while the shard is still ours
            moved = self._settle_failures(shard, stream, dict(raw), entries, failed)
            stats.dead_lettered += moved
            # Whatever failed and was not set aside is still pending: read it again (a new delivery).
            start = "0" if moved < len(failed) else self._next_start(start, got)
            if time.monotonic() >= deadline:
                return

    def _next_start(self, start: str, got: list[tuple[bytes, dict[bytes, bytes]]]) -> str:
        """Where the next read starts: the rest of the pending list while a full batch of it came back
        (a predecessor with larger batches may have left more than one), then new entries (">"), so
        that nothing new overtakes what was accepted before it."""
        if start != ">" and len(got) >= self.batch_size:
            return got[-1][0].decode()
        return ">"

    def _decode(self, shard: int, stream: str, raw: list[tuple[bytes, dict[bytes, bytes]]],
                stats: DrainStats) -> list[Entry]:
        entries: list[Entry] = []
        for entry_id, fields in raw:
            try:
                entries.append((entry_id, Envelope.decode(fields)))
            except MalformedEntry as exc:
                log.error("shard %s: stream entry %r is not an envelope (%s); set aside", shard, entry_id, exc)
                self.dead_letters.add(shard, stream, entry_id, fields, None, "malformed", 1)
                stats.dead_lettered += 1
        return entries

    def _apply_isolating(self, entries: list[Entry], lease: ShardLease,
                         first_delivery: bool = False) -> tuple[BatchResult, dict[bytes, BaseException]]:
        """Apply `entries`; when the batch fails because of what it holds, apply it in halves, down to
        the single entries that fail alone. Returns the merged result and the failing entries.

        A fenced-out batch is no entry's fault: a newer holder exists, so this drain stops whole."""
        if not entries:
            return BatchResult(), {}
        try:
            return self._apply([env for _, env in entries], lease, first_delivery), {}
        except Exception as exc:
            if is_unavailable(exc) or isinstance(exc, LeaseLost):
                raise
            if len(entries) == 1:
                return BatchResult(), {entries[0][0]: exc}
        mid = len(entries) // 2
        first, failed_first = self._apply_isolating(entries[:mid], lease)
        second, failed_second = self._apply_isolating(entries[mid:], lease)
        first.merge(second)
        return first, {**failed_first, **failed_second}

    def _apply(self, envelopes: list[Envelope], lease: ShardLease, first_delivery: bool = False) -> BatchResult:
        tries = 0

        def work(session: Session) -> BatchResult:
            nonlocal tries
            tries += 1  # a retry may follow a commit whose answer was lost: look for the events then
            result = apply_batch(session, envelopes, utcnow(), self.memory,
                                 first_delivery=first_delivery and tries == 1)
            advance_fence(session, lease.shard, lease.token)  # last: after apply's row locks
            return result

        return self.db.transaction(work, attempts=5, retry_if=_worth_retrying)

    def _token_was_behind(self, lease: ShardLease, exc: LeaseLost) -> bool:
        """After a refusal, lift the token counter past the database's token. If the lease is still
        ours, no newer holder exists: the counter itself was behind (Redis lost it, or came back from
        an AOF that had not caught up), and the next round, with a fresh token, may go on."""
        if not isinstance(exc, FencedOut):
            return False
        self.leases.raise_floor(lease.shard, exc.newest)
        if not lease.held():
            return False
        log.warning("shard %s: the lease token counter was behind the database (%s); raised", lease.shard, exc)
        return True

    def _settle_failures(self, shard: int, stream: str, raw: Raw, entries: list[Entry],
                         failed: dict[bytes, BaseException]) -> int:
        """Log each failing entry; set aside those delivered `max_deliveries` times. Returns how many."""
        if not failed:
            return 0
        deliveries = self._deliveries(stream, list(failed))
        moved = 0
        for entry_id, env in entries:
            exc = failed.get(entry_id)
            if exc is None:
                continue
            n = deliveries.get(entry_id, self.max_deliveries)
            log.error("shard %s: event %s (execution %s) failed to apply on delivery %d of %d: %s: %s", shard,
                      env.id, env.execution_id, n, self.max_deliveries, type(exc).__name__, exc,
                      exc_info=n >= self.max_deliveries)
            if n >= self.max_deliveries:
                self.dead_letters.add(shard, stream, entry_id, raw[entry_id], env, type(exc).__name__, n)
                moved += 1
        return moved

    def _deliveries(self, stream: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
        found: dict[bytes, int] = {}
        for rows in pipe.execute():
            for row in rows:
                found[row["message_id"]] = int(row["times_delivered"])
        return found

    def _after_commit(self, result: BatchResult, unawaited: set[str], stream: str, done: list[bytes]) -> None:
        """In one round trip, what the commit left to do in Redis (holds, releases, stream messages,
        the ready-work counters), then the waiting POSTs' answers, and the applied entries
        acknowledged and deleted; then the log lines and notifications. In that order: told that its
        report was applied, an agent may poll at once, and must find the work its report made ready
        (orchestrator/ready_work.py), not a marker from before it."""
        pipe = self.redis.pipeline(transaction=False)
        queue_effects(pipe, self.prefix, result.after)
        for eid, outcome in result.outcomes.items():
            store_outcome(pipe, self.keys, eid, orjson.dumps(outcome), awaited=eid not in unawaited)
        if done:
            pipe.xack(stream, GROUP, *done)
            pipe.xdel(stream, *done)
        pipe.execute()
        report_effects(result.after, self.notify)


def _count_batch(result: BatchResult, size: int, seconds: float) -> None:
    """Metrics of a batch whose transaction committed (counter increments only: no round trip)."""
    counters = instruments()
    counters.apply_batch_size.observe(size)
    counters.apply_batch_seconds.observe(seconds)
    counters.events_applied.inc(result.applied)
    for code, n in result.rejected.items():
        counters.events_rejected.labels("apply", code).inc(n)


def backlog_shards(r: redis.Redis, prefix: str, shards: int) -> list[int]:
    """Shards whose streams hold entries (new or unacknowledged): what beat's `rescue_stalled_work` drains.
    Retired ones too (at or past `shards`, up to SHARDS_SWEPT): no new event goes there, but those
    queued before INGEST_SHARDS was lowered are applied."""
    keys = Keys(prefix)
    pipe = r.pipeline(transaction=False)
    for shard in range(max(shards, SHARDS_SWEPT)):
        pipe.xlen(keys.stream(shard))
    return [shard for shard, n in enumerate(pipe.execute()) if n]
