"""GET /api/agents/{id}/work: agents poll for their next subtask (each poll is a heartbeat).

A poll first asks Redis, in one round trip that also confirms the access epoch of a cached key,
whether anything moved since a poll found nothing for this agent (orchestrator/ready_work.py): if
nothing did, it answers 204 without the database. When only its pool's marker is out of date, the
poll takes one of the pool's claim slots (answering 204 at once when all are taken), then one
unlocked query says whether the pool has work. Otherwise it claims in a transaction.

A claim that has committed is always answered (200 with its payload), even when Redis fails in the
after-commit step (web/effects.py): an answer turned into a 503 would strand the claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import redis
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.metrics import instruments
from orchestrator.models import utcnow
from orchestrator.plan_catalog import PlanCatalog
from orchestrator.ready_work import (
    ClaimSlots,
    PollState,
    Pool,
    idle_lifetime,
    read_state,
    remember_idle,
    remember_pool_idle,
)
from orchestrator.scheduling import claim_work, pool_readiness
from orchestrator.settings import Settings
from web.auth import current_principal, first_trip_checks, require_agent_submit
from web.effects import after_commit
from web.openapi import doc
from web.schemas.agents import PollQuerySchema
from web.schemas.answers import ClaimSchema

bp = Blueprint("work", __name__, url_prefix="/api")
_query = PollQuerySchema()
log = logging.getLogger(__name__)
T = TypeVar("T")


@bp.get("/agents/<agent_id>/work")
@doc("The next ready subtask (204 when none), with force_pause / force_cancel", query=PollQuerySchema,
     security="agent", answers={200: ClaimSchema, 204: None})
@require_agent_submit  # the access epoch and the rate-limit count ride in `read_state`'s round trip
def poll(agent_id: str) -> ResponseReturnValue:
    started = time.perf_counter()
    outcome, answer = _poll(agent_id)
    counters = instruments()
    counters.polls.labels(outcome).inc()
    counters.poll_seconds.labels(outcome).observe(time.perf_counter() - started)
    return answer


def _poll(agent_id: str) -> tuple[str, ResponseReturnValue]:
    """The poll's answer, and what it was for the metrics: idle, idle_pool, busy, claimed or empty."""
    actions = _query.load(request.args)["supported_actions"]
    settings = current_app.config["SETTINGS"]
    r, prefix = current_app.extensions["redis"], settings.redis_key_prefix
    pools = _per_process("poll_pools", _Pools)
    pool = pools.get(agent_id, actions)
    before = read_state(r, prefix, agent_id, current_principal().owner_id, actions, pool, first_trip_checks())
    if before.idle:
        return "idle", ("", 204)
    if pool is None or not before.pool_stale:
        return _claim(agent_id, actions, before)
    # A free agent whose pool's marker is out of date: the pool may have new work, which only a few
    # of its polls at a time look for (orchestrator/ready_work.py: claim slots).
    slot = _per_process("claim_slots", lambda: ClaimSlots(r, prefix, settings.pool_claimers)).take(pool)
    if slot is None:
        return "busy", ("", 204)
    try:
        if _pool_idle(r, prefix, pool, before, _idle_for(settings)):
            return "idle_pool", ("", 204)
        return _claim(agent_id, actions, before)
    finally:
        slot.give_back()


def _claim(agent_id: str, actions: set[str] | None, before: PollState) -> tuple[str, ResponseReturnValue]:
    """The claim transaction: the agent's next subtask, or nothing (then the agent's marker says so)."""
    settings = current_app.config["SETTINGS"]
    r, prefix = current_app.extensions["redis"], settings.redis_key_prefix
    idle_for = _idle_for(settings)
    now = utcnow()
    plans = _per_process("plan_catalog", PlanCatalog)
    result = current_app.extensions["db"].transaction(
        lambda s: claim_work(s, agent_id, actions, now, heartbeat_every=timedelta(seconds=idle_for), plans=plans))
    after_commit(result.after)
    if result.payload is not None:
        instruments().claims.labels("true" if result.payload.get("redelivered") else "false").inc()
        return "claimed", (jsonify(result.payload), 200)
    _per_process("poll_pools", _Pools).put(agent_id, actions, result.free_in)
    try:
        remember_idle(r, prefix, agent_id, before, idle_lifetime(now, result.next_ready_at, idle_for),
                      result.free_in, idle_for)
    except redis.RedisError as exc:  # the next poll asks the database again: nothing is lost
        log.warning("Redis unavailable; idle poll not remembered (%s)", exc)
    return "empty", ("", 204)


def _idle_for(settings: Settings) -> float:
    # The heartbeat's staleness is bounded like the markers': idle polls skip both for that long.
    return min(settings.poll_idle_seconds, settings.heartbeat_window_seconds / 4)


def _per_process(name: str, make: Callable[[], T]) -> T:
    """The process's one `name` (made on first use: nothing is done at import or app creation)."""
    found = current_app.extensions.get(name)
    return found if found is not None else current_app.extensions.setdefault(name, make())


def _pool_idle(r: redis.Redis, prefix: str, pool: Pool, before: PollState, idle_for: float) -> bool:
    """Whether `pool` has no ready unassigned work (one unlocked query); if so, its marker says so."""
    now = utcnow()
    with current_app.extensions["db"].reading() as s:
        ready, backoff_ends = pool_readiness(s, pool, now)
    if ready:
        return False
    try:
        remember_pool_idle(r, prefix, pool, before, idle_lifetime(now, backoff_ends, idle_for))
    except redis.RedisError as exc:  # the answer stands; the pool's next poll looks again
        log.warning("Redis unavailable; idle pool not remembered (%s)", exc)
    return True


class _Pools:
    """The pool each agent (asking for given actions) was last found free in, per process: the
    pool's marker must be read in `read_state`'s one round trip. A wrong or missing entry only
    costs a look at the database."""

    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._entries: dict[tuple[str, frozenset[str] | None], Pool] = {}

    @staticmethod
    def _key(agent_id: str, actions: set[str] | None) -> tuple[str, frozenset[str] | None]:
        return agent_id, frozenset(actions) if actions is not None else None

    def get(self, agent_id: str, actions: set[str] | None) -> Pool | None:
        return self._entries.get(self._key(agent_id, actions))

    def put(self, agent_id: str, actions: set[str] | None, pool: Pool | None) -> None:
        if pool is None:
            self._entries.pop(self._key(agent_id, actions), None)
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[self._key(agent_id, actions)] = pool
