"""The front end's half of the event path: check agents' events, queue them, wait for their outcomes.

`Ingestor.submit` runs the checks in this order, all from Redis when its caches are warm:
1. tenancy: the agent takes part in the execution (assigned to it, or has held work in it);
2. dedup: the same report again (its idempotency key, scoped by agent) replays the first outcome,
   and a key reused with another body is refused;
3. the hold: a new report about a subtask comes from the agent that holds it.
A cache miss costs one read-only query per check for the whole submission, never a transaction
(invariant 6). Then one Lua call queues every new event atomically (dedupe again, mark pending,
XADD to the execution's shard), so an answered 2xx means the events are in Redis (invariant 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import redis
from sqlalchemy import or_, select

from orchestrator.db import Database
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.events.protocol import (
    DEDUP_SECONDS,
    OUTCOME_SECONDS,
    Envelope,
    Keys,
    dedup_key,
    fingerprint,
    pending_outcome,
    read_outcome,
    shard_of,
)
from orchestrator.holds import holds_key, members_key, record_members
from orchestrator.ids import event_id as new_event_id
from orchestrator.metrics import instruments
from orchestrator.models import Execution, ExecutionSubtask
from orchestrator.round_trip import RoundTripCheck, execute, queue_checks

# KEYS: per event (dedup key, stream key, outcome key), then the trigger flag of each shard touched.
# ARGV: dedup ttl, outcome ttl, flag ttl (ms), number of events, then per event (event id, encoded
# envelope, fingerprint, pending record, index of its shard's flag); an empty fingerprint means "no
# dedup key". Every reuse of a key with another body is found before anything is written: all or
# nothing. Returns per event (1 if queued or 0 if a duplicate, event id), then per flag 1 when this
# call set it: only then does the caller trigger a drain of that shard.
_ACCEPT = """
local n = tonumber(ARGV[4])
for i = 1, n do
  local fp = ARGV[5 * i + 2]
  if fp ~= '' then
    local existing = redis.call('GET', KEYS[3 * i - 2])
    if existing then
      local sp = string.find(existing, ' ', 1, true)
      if sp and string.sub(existing, sp + 1) ~= fp then return {-1, i} end
    end
  end
end
local out = {}
local touched = {}
for i = 1, n do
  local eid, payload, fp, pending = ARGV[5 * i], ARGV[5 * i + 1], ARGV[5 * i + 2], ARGV[5 * i + 3]
  local existing = false
  if fp ~= '' then existing = redis.call('GET', KEYS[3 * i - 2]) end
  if existing then
    local sp = string.find(existing, ' ', 1, true)
    out[#out + 1] = 0
    out[#out + 1] = sp and string.sub(existing, 1, sp - 1) or existing
  else
    if fp ~= '' then redis.call('SET', KEYS[3 * i - 2], eid .. ' ' .. fp, 'EX', ARGV[1]) end
    redis.call('SET', KEYS[3 * i], pending, 'EX', ARGV[2])
    redis.call('XADD', KEYS[3 * i - 1], '*', 'e', payload)
    touched[tonumber(ARGV[5 * i + 4])] = true
    out[#out + 1] = 1
    out[#out + 1] = eid
  end
end
for f = 1, #KEYS - 3 * n do
  if touched[f] and redis.call('SET', KEYS[3 * n + f], '1', 'NX', 'PX', ARGV[3]) then
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# How long a shard's trigger flag stands for "a drain is queued or running, and will read the stream
# again before it stops" (the drain clears it as it stops). Longer than a drain's time budget plus a
# task's wait in the queue, so that a busy shard costs one Celery task per drain, not one per event.
# Should the task be lost, the next event after this long triggers anew (and beat drains meanwhile).
TRIGGER_FLAG_MS = 1000


class NotHolder(Conflict):
    """A new report about a subtask the agent does not hold (never claimed, released, or another's)."""

    code = "not_holder"


class IdempotencyKeyReused(ValidationFailed):
    """The agent's idempotency key was used before with another body: replaying the first outcome
    would tell the agent its second report was applied, which it was not."""

    code = "idempotency_key_reused"


class EventsRefused(Conflict):
    """Some events of a batch were refused; none of it was accepted."""

    code = "events_refused"


@dataclass(frozen=True)
class Submission:
    """One event as a handler hands it over: validated, in wire form (no None values, ISO times)."""

    execution_id: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class Accepted:
    event_id: str
    execution_id: str | None
    duplicate: bool


@dataclass
class _Checked:
    """The submission as the checks left it: per index, the earlier acceptance or the refusal."""

    items: Sequence[Submission]
    keys: list[str | None]
    prints: list[str]
    earlier: dict[int, Accepted] = field(default_factory=dict)
    refused: dict[int, Exception] = field(default_factory=dict)


@dataclass
class Ingestor:
    """Accepts events into the shard streams and triggers the worker that drains them."""

    redis: redis.Redis
    prefix: str
    shards: int
    trigger: Callable[[int], None]  # enqueue drain(shard); the web layer passes Celery's send_task
    db: Database | None = None  # for cold-cache lookups; without it a miss is a refusal

    def __post_init__(self) -> None:
        self.keys = Keys(self.prefix)
        self._accept = self.redis.register_script(_ACCEPT)

    # -- the checked path the API uses ------------------------------------------------------------

    def submit(self, agent_id: str, items: Sequence[Submission], received_at: datetime,
               checks: Sequence[RoundTripCheck] = (), *, awaited: bool = False) -> list[Accepted]:
        """Check and queue `items` (all or none); raises the refusal of the first bad one, or
        `EventsRefused` naming each when there are several events. `checks` ride along in the first
        round trip, which changes nothing, and may refuse the request before anything is done: the
        access epoch the caller's cached authentication relies on (`EpochChanged` when it moved:
        orchestrator/revocation.py), the agent's rate-limit count (orchestrator/round_trip.py).
        `awaited`: the caller waits for the outcome (`wait_outcome`), so the worker pushes it a reply."""
        checked = self._check(agent_id, items, checks)
        if checked.refused:
            _count_refusals(checked.refused.values())
            if len(items) == 1:
                raise checked.refused[0]
            raise EventsRefused("Some events were refused; none of the batch was accepted.", refused=[
                {"index": i, "code": getattr(e, "code", "refused"), "message": getattr(e, "message", str(e))}
                for i, e in sorted(checked.refused.items())])
        fresh = [i for i in range(len(items)) if i not in checked.earlier]
        if checked.earlier:
            instruments().events_duplicate.inc(len(checked.earlier))
        queued = self._queue(agent_id, [(items[i], checked.keys[i], checked.prints[i]) for i in fresh], received_at,
                             awaited)
        result = dict(checked.earlier)
        result.update(zip(fresh, queued, strict=True))
        return [result[i] for i in range(len(items))]

    def _check(self, agent_id: str, items: Sequence[Submission], checks: Sequence[RoundTripCheck] = ()) -> _Checked:
        keys = [dedup_key(s.body) for s in items]
        checked = _Checked(items, keys, [fingerprint(s.body) if k else "" for s, k in zip(items, keys, strict=True)])
        self._check_reuse_within(checked)
        executions = sorted({s.execution_id for s in items if s.execution_id is not None})
        # One read per distinct key: a batch's events mostly name the same few subtasks, and each
        # command in the pipeline costs the web process more than Redis's work on it.
        dedup_of = [self.keys.dedup(agent_id, s.execution_id, k) if k else None
                    for s, k in zip(items, keys, strict=True)]
        dedups = sorted({key for key in dedup_of if key is not None})
        holds = sorted({(s.execution_id, ref) for s in items if s.execution_id and (ref := _ref(s.body))})
        pipe = self.redis.pipeline(transaction=False)
        queue_checks(pipe, checks)
        for execution_id in executions:
            pipe.sismember(members_key(self.prefix, execution_id), agent_id)
        for key in dedups:
            pipe.get(key)
        for execution_id, ref in holds:
            pipe.hget(holds_key(self.prefix, execution_id), ref)
        replies = execute(pipe, checks)
        member_hits = dict(zip(executions, replies[:len(executions)], strict=True))
        dedup_hits = dict(zip(dedups, replies[len(executions):len(executions) + len(dedups)], strict=True))
        hold_hits = dict(zip(holds, replies[len(executions) + len(dedups):], strict=True))
        outsiders = self._outsiders(agent_id, [e for e, hit in member_hits.items() if not hit])
        for i, s in enumerate(items):
            if s.execution_id in outsiders:
                checked.refused[i] = NotFound(f"Execution {s.execution_id} not found.", execution_id=s.execution_id)
            elif i not in checked.refused and (key := dedup_of[i]) is not None and dedup_hits[key] is not None:
                self._earlier(checked, i, dedup_hits[key])
        self._check_holds(agent_id, checked, hold_hits)
        return checked

    @staticmethod
    def _check_reuse_within(checked: _Checked) -> None:
        seen: dict[tuple[str | None, str], str] = {}
        for i, (s, k) in enumerate(zip(checked.items, checked.keys, strict=True)):
            if k is None:
                continue
            first = seen.setdefault((s.execution_id, k), checked.prints[i])
            if first != checked.prints[i]:
                checked.refused[i] = IdempotencyKeyReused(
                    "This idempotency_key was already used with a different body.", index=i)

    def _earlier(self, checked: _Checked, i: int, raw: bytes) -> None:
        eid, _, fp = raw.decode().partition(" ")
        if fp and fp != checked.prints[i]:
            checked.refused[i] = IdempotencyKeyReused(
                "This idempotency_key was already used with a different body.", event_id=eid)
        else:
            checked.earlier[i] = Accepted(eid, checked.items[i].execution_id, duplicate=True)

    def _outsiders(self, agent_id: str, unknown: list[str]) -> set[str]:
        """Executions among `unknown` (not in the Redis cache) that the agent takes no part in."""
        if not unknown:
            return set()
        if self.db is None:
            return set(unknown)
        with self.db.reading() as s:
            involved = set(s.scalars(select(Execution.id).where(
                Execution.id.in_(unknown),
                or_(Execution.agent_id == agent_id,
                    Execution.id.in_(select(ExecutionSubtask.execution_id).where(
                        ExecutionSubtask.agent_id == agent_id, ExecutionSubtask.execution_id.in_(unknown)))),
            )))
        for execution_id in involved:
            record_members(self.redis, self.prefix, execution_id, [agent_id])
        return set(unknown) - involved

    def _check_holds(self, agent_id: str, checked: _Checked, hold_hits: dict[tuple[str, str], Any]) -> None:
        misses: list[int] = []
        for i, s in enumerate(checked.items):
            if i in checked.refused or i in checked.earlier or s.body["event_type"] == "heartbeat":
                continue
            hit = hold_hits.get((s.execution_id, _ref(s.body)))  # type: ignore[arg-type]
            if not isinstance(hit, bytes) or hit.decode() != agent_id:
                misses.append(i)
        if not misses:
            return
        held = self._held_from_db(agent_id, {checked.items[i].execution_id for i in misses})
        for i in misses:
            s = checked.items[i]
            ref = _ref(s.body)
            subtasks, by_task = held.get(s.execution_id, (set(), defaultdict(list)))
            if ref not in subtasks and len(by_task.get(ref, [])) != 1:
                checked.refused[i] = NotHolder(f"Agent {agent_id} does not hold {ref} in execution {s.execution_id}.",
                                               execution_id=s.execution_id, task_id=ref)

    def _held_from_db(self, agent_id: str, executions: set[str | None]) -> dict[str, tuple[set[str], dict]]:
        """What the agent holds in `executions`, by subtask id and by task id: one query for all."""
        held: dict[str, tuple[set[str], dict[str, list[str]]]] = {}
        if self.db is None:
            return held
        with self.db.reading() as s:
            rows = s.execute(select(ExecutionSubtask.execution_id, ExecutionSubtask.execution_task_id,
                                    ExecutionSubtask.plan_subtask_id).where(
                ExecutionSubtask.execution_id.in_([e for e in executions if e is not None]),
                ExecutionSubtask.agent_id == agent_id, ExecutionSubtask.status == "RUNNING"))
            for execution_id, task_row_id, subtask_id in rows:
                subtasks, by_task = held.setdefault(execution_id, (set(), defaultdict(list)))
                subtasks.add(subtask_id)
                by_task[task_row_id.removeprefix(f"{execution_id}:")].append(subtask_id)
        return held

    # -- queueing ---------------------------------------------------------------------------------

    def accept_many(self, items: Sequence[tuple[str | None, str, dict[str, Any]]],
                    received_at: datetime) -> list[Accepted]:
        """Queue events without the checks (tests and tools that act as the front end itself)."""
        by_agent: list[Accepted] = []
        for execution_id, agent_id, body in items:
            k = dedup_key(body)
            by_agent += self._queue(agent_id, [(Submission(execution_id, body), k, fingerprint(body) if k else "")],
                                    received_at)
        return by_agent

    def _queue(self, agent_id: str, items: Sequence[tuple[Submission, str | None, str]],
               received_at: datetime, awaited: bool = True) -> list[Accepted]:
        if not items:
            return []
        keys: list[str] = []
        args: list[Any] = [DEDUP_SECONDS, OUTCOME_SECONDS, TRIGGER_FLAG_MS, len(items)]
        flags: dict[int, int] = {}  # shard → its flag's index (from 1) among the flag keys
        for s, k, fp in items:
            env = Envelope(new_event_id(), s.execution_id, agent_id, received_at, s.body, awaited)
            shard = shard_of(env.routing_id, self.shards)
            keys += [self.keys.dedup(agent_id, s.execution_id, k or "-"), self.keys.stream(shard),
                     self.keys.outcome(env.id)]
            args += [env.id, env.encode(), fp if k else "", pending_outcome(env.id, s.execution_id, agent_id),
                     flags.setdefault(shard, len(flags) + 1)]
        keys += [self.keys.trigger_flag(shard) for shard in flags]
        raw = self._accept(keys=keys, args=args)
        if raw[0] == -1:  # a racing request used one of the keys with another body
            raise IdempotencyKeyReused("This idempotency_key was already used with a different body.",
                                       index=int(raw[1]) - 1)
        accepted = [Accepted(eid.decode() if isinstance(eid, bytes) else eid, s.execution_id, duplicate=not is_new)
                    for (s, _, _), is_new, eid in zip(items, raw[0:2 * len(items):2], raw[1:2 * len(items):2],
                                                      strict=True)]
        new = sum(1 for a in accepted if not a.duplicate)
        counters = instruments()
        counters.events_accepted.inc(new)
        if new < len(accepted):
            counters.events_duplicate.inc(len(accepted) - new)
        for shard, flag_set in zip(flags, raw[2 * len(items):], strict=True):
            if flag_set:  # no drain is queued or running for this shard: start one
                self.trigger(shard)
        return accepted

    # -- outcomes ---------------------------------------------------------------------------------

    def wait_outcome(self, event_id: str, timeout_ms: int) -> dict[str, Any] | None:
        """The outcome the worker pushed for `event_id`, or None when it did not come in time."""
        if timeout_ms > 0:
            got = self.redis.blpop([self.keys.reply(event_id)], timeout=timeout_ms / 1000)
            if got is not None:
                return orjson.loads(got[1])
        return self.outcome(event_id)

    def outcome(self, event_id: str) -> dict[str, Any] | None:
        """The stored outcome; None while pending or when Redis no longer knows the event."""
        pending, record = self.lookup(event_id)
        return None if pending else record

    def lookup(self, event_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(still pending, the stored record: whose event it is, and its outcome once there) in one
        read; (False, None) when Redis no longer knows the event."""
        return read_outcome(self.redis.get(self.keys.outcome(event_id)))


def _count_refusals(refusals: Iterable[Exception]) -> None:
    rejected = instruments().events_rejected
    for exc in refusals:
        rejected.labels("accept", getattr(exc, "code", "refused")).inc()


def _ref(body: dict[str, Any]) -> str | None:
    return body.get("subtask_id") or body.get("task_id")
