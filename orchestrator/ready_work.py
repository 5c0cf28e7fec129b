"""Answering an idle agent's poll from Redis: has anything that could change "nothing for you" happened
since a poll found nothing?

An agent that polls and finds nothing polls again seconds later, and almost always finds nothing
again. That answer needs no database when Redis can tell that nothing moved. Keys (under the prefix):
- `work:version:{owner}`, an operator's version, raised after every commit that may make work of
  that operator's executions ready or change what a holder of it must be told: a subtask's last
  prerequisite done, a subtask back in the queue (retried, taken back, expired), executions queued,
  resumed, paused or cancelled, operators' changes (`AfterCommit.work_moved` names the owners).
  `carry_out` (orchestrator/effects.py) raises it, so every writer's after-commit step does. The
  agents of an operator watch that operator's version alone, so one tenant's flow of work does not
  send every other tenant's idle agents back to the database;
- `work:version`, raised with any owner's: the version of unowned agents, who may do anyone's work;
- `work:agent:{id}`, raised after each commit that hands the agent a subtask or assigns it an
  execution, so that a poll of the same agent running alongside cannot leave a marker that hides it;
- `work:idle:{id}`, the agent's marker: the state at which its last poll found nothing, read
  *before* that poll's transaction: the version, the agent's counter and the actions it asked for;
- `work:pool:{pool}`, the version at which some poll found no unassigned work for a pool: the agents
  of one owner (or none) that do the same actions, who are all offered the same unassigned work.

An agent that holds nothing and has no execution assigned to it that has not finished ("free") only
ever gets unassigned work of its pool, so its marker names the pool instead of a version: after the
version moves, the first of the pool's agents to look at the database renews the pool's marker and
the others answer from Redis again, instead of each looking once.

While the pool's marker is out of date, at most POOL_CLAIMERS of its free agents' polls look at the
database at once: each holds one of the pool's claim slots (`work:claiming:{pool}:{i}`, a token with
a short expiry, given back when the poll is done), and a poll that finds them all taken is answered
204 without a query. Those agents are interchangeable (the same work is offered to each), so this
delays no work by more than an agent's next poll, while without it every poll of a pool with ready
work ran a claim transaction: most found it taken by the time they locked, and each made the others
slower.

A marker cannot hide ready work: the counters are read before the transaction begins and raised only
after a commit, so a commit the poll's transaction did not see raises a counter past the value the
marker holds. What no counter announces is covered by the marker's lifetime (`idle_lifetime`): it
ends when the first retry backoff ends (time alone makes that work ready), 50 ms after a poll that
saw ready work it could not claim (another transaction held its execution, and may let go of it
without a word: a claimer rolling back, the worker committing a heartbeat; the pool's other polls
would have found it held too, and are answered the same for that long), and after
POLL_IDLE_SECONDS at most. That bound also covers an after-commit step that never ran (a crash
between the commit and Redis, Redis down then), an agent's capabilities changed in the database by
hand, and how long its `last_heartbeat` may lag, since only polls that reach the database write it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import redis

from orchestrator.events.lease import RELEASE_IF_HELD
from orchestrator.round_trip import RoundTripCheck, execute, queue_checks
from orchestrator.state_machine import ExecutionStatus

log = logging.getLogger(__name__)

# The per-agent counters and per-owner versions outlive any marker that could hold one of their
# values, by far (a key that expired and started again from 1 could match an old marker).
AGENT_KEY_SECONDS = 24 * 3600
# Transitions after which some poll may get another answer: work handed out again (queued,
# resumed, unblocked), or holders to be told to stop (paused, cancelled). QUEUED → RUNNING (the
# first claim) and moves to BLOCKED, COMPLETED or FAILED only take work away.
_MOVING_TARGETS = frozenset({ExecutionStatus.QUEUED, ExecutionStatus.PAUSED, ExecutionStatus.CANCELLED})


def version_key(prefix: str, owner_id: str | None = None) -> str:
    """The ready-work version that agents of `owner_id` watch (None: unowned agents, any owner's work)."""
    return f"{prefix}work:version" if owner_id is None else f"{prefix}work:version:{owner_id}"


def agent_key(prefix: str, agent_id: str) -> str:
    return f"{prefix}work:agent:{agent_id}"


def idle_key(prefix: str, agent_id: str) -> str:
    return f"{prefix}work:idle:{agent_id}"


def pool_key(prefix: str, pool: str) -> str:
    return f"{prefix}work:pool:{pool}"


def claim_slot_keys(prefix: str, pool: Pool, slots: int) -> list[str]:
    return [f"{prefix}work:claiming:{pool.key}:{i}" for i in range(slots)]


def moves_work(old: str, new: str) -> bool:
    """Whether an execution's move from `old` to `new` may change a poll's answer."""
    return new in _MOVING_TARGETS or (new == ExecutionStatus.RUNNING and old != ExecutionStatus.QUEUED)


def queue_changes(pipe: redis.client.Pipeline, prefix: str, *, owners: Iterable[str], agents: Iterable[str]) -> None:
    """Queue on `pipe`, after a commit: raise the versions of `owners` (work of theirs may have moved)
    and the unowned agents' one with them, and the counter of each of `agents` (handed a subtask, or
    assigned an execution)."""
    owners = sorted(set(owners))
    if owners:
        pipe.incr(version_key(prefix))
    for owner_id in owners:
        pipe.incr(version_key(prefix, owner_id))
        pipe.expire(version_key(prefix, owner_id), AGENT_KEY_SECONDS)
    for agent_id in sorted(set(agents)):
        pipe.incr(agent_key(prefix, agent_id))
        pipe.expire(agent_key(prefix, agent_id), AGENT_KEY_SECONDS)


def actions_part(actions: set[str] | None) -> str:
    """A short name for a set of actions; "*" for None (any, or the agent's registered capabilities)."""
    if actions is None:
        return "*"
    return hashlib.blake2b(",".join(sorted(actions)).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Pool:
    """The agents of `owner_id` (None: unowned, they may do anyone's work) that do exactly `actions`
    (None: any): all are offered the same unassigned work."""

    owner_id: str | None
    actions: frozenset[str] | None

    @property
    def key(self) -> str:
        return f"{self.owner_id or '-'}:{actions_part(set(self.actions) if self.actions is not None else None)}"


@dataclass(frozen=True)
class PollState:
    """What a poll read before its transaction, and what that says about the agent."""

    version: int  # of the agent's owner (`version_key`)
    counter: int
    actions: str  # `actions_part` of what the poll asked for
    owner: str = "-"  # the agent's owner, whose version `version` is ("-": none)
    idle: bool = False  # nothing is there for the agent: answer 204
    # The agent is free (its marker names `pool`), but the pool's marker is from an older version:
    # whether the pool has work is one query away (`pool_readiness` in orchestrator/scheduling.py).
    pool_stale: bool = False

    def bound_marker(self) -> str:
        return f"{self.owner}:{self.version}:{self.counter}:{self.actions}"

    def free_marker(self, pool: Pool) -> str:
        return f"free:{self.counter}:{self.actions}:{pool.key}"


def read_state(r: redis.Redis, prefix: str, agent_id: str, owner_id: str | None, actions: set[str] | None,
               pool: Pool | None, checks: Sequence[RoundTripCheck] = ()) -> PollState:
    """One round trip: the state now, and whether the agent's marker (and, when `pool` is the pool it
    was last found free in, that pool's marker) says that nothing is there for it. `owner_id` is the
    agent's owner, whose version it watches. `checks` ride along (the access epoch, the rate-limit
    count: orchestrator/round_trip.py) and may refuse the request; it reads nothing else of theirs."""
    if pool is not None and pool.owner_id != owner_id:
        pool = None  # the agent has changed hands since: its old pool says nothing of it
    keys = [version_key(prefix, owner_id), agent_key(prefix, agent_id), idle_key(prefix, agent_id)]
    if pool is not None:
        keys.append(pool_key(prefix, pool.key))
    if checks:
        pipe = r.pipeline(transaction=False)
        queue_checks(pipe, checks)
        pipe.mget(keys)
        values, = execute(pipe, checks)
    else:
        values = r.mget(keys)
    read = PollState(int(values[0] or 0), int(values[1] or 0), actions_part(actions), owner_id or "-")
    marker = values[2].decode() if values[2] is not None else None
    if marker is not None and marker == read.bound_marker():
        return replace(read, idle=True)
    if pool is not None and marker == read.free_marker(pool):
        fresh = values[3] is not None and int(values[3]) == read.version
        return replace(read, idle=fresh, pool_stale=not fresh)
    return read


def idle_lifetime(now: datetime, next_ready_at: datetime | None, longest: float) -> float:
    """Seconds a marker may live: `longest` at most, and never past the moment work waiting on a
    retry backoff becomes ready (no commit announces that)."""
    seconds = longest
    if next_ready_at is not None:
        seconds = min(seconds, (next_ready_at - now) / timedelta(seconds=1))
    return max(0.0, seconds)


def remember_idle(r: redis.Redis, prefix: str, agent_id: str, read: PollState, seconds: float,
                  free_in: Pool | None = None, free_for: float = 0.0) -> None:
    """The agent's poll found nothing in state `read`: answer its next polls from Redis while that
    holds, for `seconds` at most. `free_in` is the agent's pool when it is free (holds nothing, has
    no unfinished execution assigned): then the pool's marker lasts `seconds`, and the agent's own,
    which only says that it is free, `free_for` (what work is ready does not change that)."""
    ms, free_ms = int(seconds * 1000), int(free_for * 1000)
    pipe = r.pipeline(transaction=False)
    if free_in is None and ms > 0:
        pipe.set(idle_key(prefix, agent_id), read.bound_marker(), px=ms)
    if free_in is not None and free_ms > 0:
        pipe.set(idle_key(prefix, agent_id), read.free_marker(free_in), px=free_ms)
    if free_in is not None and ms > 0:
        pipe.set(pool_key(prefix, free_in.key), read.version, px=ms)
    if len(pipe):
        pipe.execute()


def remember_pool_idle(r: redis.Redis, prefix: str, pool: Pool, read: PollState, seconds: float) -> None:
    """No unassigned work for `pool` in state `read`: its free agents' polls are answered from Redis."""
    ms = int(seconds * 1000)
    if ms > 0:
        r.set(pool_key(prefix, pool.key), read.version, px=ms)


# KEYS: the pool's claim slots. ARGV: a token, the slot's lifetime in ms. Returns the key taken, or nil.
_TAKE_SLOT = """
for _, key in ipairs(KEYS) do
  if redis.call('set', key, ARGV[1], 'NX', 'PX', ARGV[2]) then return key end
end
return false
"""


class ClaimSlots:
    """The claim slots of every pool, for one process (its scripts registered once). `slots` 0: no limit.

    A slot outlives a poll that never gives it back (its process killed) by `seconds` at most; a poll
    slower than that only lets one more in."""

    def __init__(self, r: redis.Redis, prefix: str, slots: int, seconds: float = 2.0) -> None:
        self.prefix, self.slots, self.ms = prefix, slots, max(1, int(seconds * 1000))
        self._take = r.register_script(_TAKE_SLOT)
        self._give_back = r.register_script(RELEASE_IF_HELD)  # only while the slot is still this poll's

    def take(self, pool: Pool) -> ClaimSlot | None:
        """One of `pool`'s slots, or None when all are taken (a slot that holds nothing back when
        there is no limit). Raises RedisError: the caller's poll needs Redis anyway."""
        if self.slots <= 0:
            return ClaimSlot(self, None, "")
        token = secrets.token_hex(8)
        key = self._take(keys=claim_slot_keys(self.prefix, pool, self.slots), args=[token, self.ms])
        return None if key is None else ClaimSlot(self, key.decode(), token)


@dataclass(frozen=True)
class ClaimSlot:
    slots: ClaimSlots
    key: str | None
    token: str

    def give_back(self) -> None:
        """Free the slot for the pool's next poll. Never raises: a slot not given back expires, and the
        poll's answer (a claim that has committed, say) must still go out."""
        if self.key is None:
            return
        try:
            self.slots._give_back(keys=[self.key], args=[self.token])
        except redis.RedisError as exc:
            log.warning("Redis unavailable; claim slot left to expire (%s)", exc)
