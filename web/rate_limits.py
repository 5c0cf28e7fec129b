"""Rate limits: each agent's requests per minute, and dashboard login attempts per username and per address.

They are counted with `limits` (the library under Flask-Limiter, used directly: Flask-Limiter's
per-request machinery, a before-request check of every route, resolving decorated limits and their
exemptions, cost a fifth of the web tier's CPU on an agent's event POST, more than the count
itself) in the app's Redis, through the app's own connection pool (so the embedded Redis's unix
socket too), under the app's key prefix, so that every web process shares the counts. The strategy
is the moving window: at most N requests in any 60 seconds, with no burst of 2N across a window's edge.

- An agent's requests are counted as it is authenticated (`web/auth.py: current_principal`), before
  its view does anything, under its id; for the poll and the event POSTs, whose views begin with a
  Redis round trip that changes nothing, the count rides in that round trip instead of one of its own
  (`AgentCount`, orchestrator/round_trip.py), and is made after the view if it did not get there
  (a body refused before it, say). Either way: its own `rate_limit_per_minute` (carried by the cached
  principal, so no database read) or AGENT_RATE_LIMIT. A batch of events is one request. Over the
  limit the view does not run: 429 `rate_limited` (web/errors.py). Operators' tokens and dashboard
  sessions are not limited.
- Login attempts are counted before the form is checked or a password hashed, under a hash of the
  username (lower-cased: names are unique regardless of case) and under the client's address.

A refused answer carries `Retry-After` (seconds), `RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset` (seconds until a request is free again; IETF draft-ietf-httpapi-ratelimit-headers)
and `RateLimit-Policy`. Answers within the limit go without them: the count is the one Redis round
trip a request pays for its limit, and reading the window back for the headers would be a second.

When Redis is out of reach, each process counts in memory and looks for Redis again after a backoff
(1 s, doubling to 30 s): the limiter never turns a request into an error; whatever needs Redis still
answers 503 as before.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass

import redis
from flask import Flask, current_app, g, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from orchestrator.settings import Settings

log = logging.getLogger(__name__)

_BACKOFF_FIRST, _BACKOFF_MOST = 1.0, 30.0


class RateLimited(Exception):
    """A request over `limit`: 429 with the headers `headers` (web/errors.py)."""

    def __init__(self, limit: RateLimitItem, reset_in: int, remaining: int) -> None:
        super().__init__(f"over {limit}")
        self.limit = limit
        self.headers = {
            "RateLimit-Limit": str(limit.amount),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_in),
            "RateLimit-Policy": f"{limit.amount};w={limit.get_expiry()}",
            "Retry-After": str(max(1, reset_in)),
        }


@dataclass
class _Fallback:
    """Until when this process counts in memory, and the next backoff."""

    until: float = 0.0
    backoff: float = _BACKOFF_FIRST


class RateLimits:
    """One app's counters: in Redis, or in this process's memory while Redis is out of reach."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        storage = RedisStorage("redis://", connection_pool=client.connection_pool,
                               key_prefix=f"{settings.redis_key_prefix}ratelimit")
        self._shared = MovingWindowRateLimiter(storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._fallback = _Fallback()
        self._lock = threading.Lock()
        self.default_agent_limit = parse(settings.agent_rate_limit)
        self.login_per_address = parse(settings.login_rate_limit_per_address)
        self.login_per_username = parse(settings.login_rate_limit_per_username)
        self._parsed: dict[int, RateLimitItem] = {}

    def agent_limit(self, per_minute: int | None) -> RateLimitItem:
        if not per_minute:
            return self.default_agent_limit
        item = self._parsed.get(per_minute)
        if item is None:
            item = self._parsed.setdefault(per_minute, parse(f"{per_minute}/minute"))
        return item

    def deferred(self, limit: RateLimitItem, scope: str, key: str) -> AgentCount | None:
        """The count as a check for a caller's round trip; None while counting in memory (then count now)."""
        if self._limiter() is not self._shared:
            return None
        return AgentCount(self, limit, scope, key)

    def queue_hit(self, pipe: redis.client.Pipeline, limit: RateLimitItem, scope: str, key: str) -> None:
        """Queue on `pipe` what `count` does in Redis: `limits`' own moving-window script on its own key,
        by its digest (a Script called on a pipeline would ask Redis whether it has it first, every
        time: a round trip more). Redis may not have it (never loaded, or restarted): the reply is then
        a NoScriptError, and `AgentCount.verify` counts the usual way, which loads it."""
        storage = self._shared.storage
        assert isinstance(storage, RedisStorage)
        pipe.evalsha(storage.lua_acquire_moving_window.sha, 1, storage.prefixed_key(limit.key_for(scope, key)),
                     time.time(), limit.amount, limit.get_expiry(), 1)

    def count(self, limit: RateLimitItem, scope: str, key: str) -> None:
        """Count one request under (scope, key); raises RateLimited when it is over `limit`."""
        limiter = self._limiter()
        try:
            allowed = limiter.hit(limit, scope, key)
            if limiter is self._shared and self._fallback.backoff != _BACKOFF_FIRST:
                self._fallback = _Fallback()  # Redis is back: a later outage starts from the first backoff
        except (redis.RedisError, StorageError) as exc:
            self._redis_lost(exc)
            limiter = self._local
            allowed = limiter.hit(limit, scope, key)
        if not allowed:
            raise self._refusal(limiter, limit, scope, key)

    def _limiter(self) -> MovingWindowRateLimiter:
        if time.monotonic() < self._fallback.until:
            return self._local
        return self._shared

    def _redis_lost(self, exc: Exception) -> None:
        with self._lock:
            log.warning("Redis unavailable; rate limits counted in this process for %.0f s (%s)",
                        self._fallback.backoff, type(exc).__name__)
            self._fallback.until = time.monotonic() + self._fallback.backoff
            self._fallback.backoff = min(_BACKOFF_MOST, self._fallback.backoff * 2)

    def refusal(self, limit: RateLimitItem, scope: str, key: str) -> RateLimited:
        """The refusal of a request over `limit`, counted in Redis (`AgentCount`)."""
        return self._refusal(self._shared, limit, scope, key)

    def _refusal(self, limiter: MovingWindowRateLimiter, limit: RateLimitItem, scope: str, key: str) -> RateLimited:
        try:
            reset_at, remaining = limiter.get_window_stats(limit, scope, key)
        except (redis.RedisError, StorageError) as exc:  # Redis went away after the count
            log.warning("Redis unavailable; rate limit headers estimated (%s)", type(exc).__name__)
            reset_at, remaining = time.time() + limit.get_expiry(), 0
        return RateLimited(limit, max(0, math.ceil(reset_at - time.time())), remaining)


@dataclass
class AgentCount:
    """An agent's request counted in its view's first round trip (a `RoundTripCheck`)."""

    limits: RateLimits
    limit: RateLimitItem
    scope: str
    key: str
    counted: bool = False  # a round trip carried it and came back
    refused: RateLimited | None = None

    def queue(self, pipe: redis.client.Pipeline) -> None:
        self.limits.queue_hit(pipe, self.limit, self.scope, self.key)

    def verify(self, reply: object) -> None:
        self.counted = True
        if isinstance(reply, redis.exceptions.NoScriptError):
            try:
                self.limits.count(self.limit, self.scope, self.key)
            except RateLimited as exc:
                self.refused = exc
                raise
            return
        if isinstance(reply, Exception):
            raise reply
        if not reply:
            self.refused = self.limits.refusal(self.limit, self.scope, self.key)
            raise self.refused

    def settle(self, refuse: bool = True) -> None:
        """After the view: count now if no round trip carried the count (the view refused the request
        before it, or Redis failed: then `count` counts in memory); raise a refusal unless `refuse` is
        False (the view's work is done: it stands, and the count is only recorded)."""
        if self.refused is not None and refuse:
            raise self.refused
        if not self.counted:
            self.counted = True
            try:
                self.limits.count(self.limit, self.scope, self.key)
            except RateLimited:
                if refuse:
                    raise


def init_rate_limits(app: Flask, settings: Settings) -> None:
    app.extensions["rate_limits"] = RateLimits(settings, app.extensions["redis"])


def count_agent_request(defer: bool = False) -> None:
    """Count the request of the agent in `g.principal`, once per request; raises RateLimited when the
    agent is over its limit. With `defer`, the count waits for the view's first round trip
    (`agent_count`), or for its end (`settle_agent_count`)."""
    pending: AgentCount | None = g.get("agent_count")
    if pending is not None and pending.refused is not None:
        raise pending.refused  # authenticated again, but that request was over its limit
    if g.get("agent_request_counted"):
        return  # authenticated again (the access epoch moved): still one request
    g.agent_request_counted = True
    limits: RateLimits = current_app.extensions["rate_limits"]
    principal = g.principal
    limit = limits.agent_limit(principal.rate_limit_per_minute)
    g.agent_count = limits.deferred(limit, "agent", principal.id) if defer else None
    if g.agent_count is None:
        limits.count(limit, "agent", principal.id)


def agent_count() -> AgentCount | None:
    """The request's count, if it waits for the view's first round trip; that round trip carries it."""
    pending: AgentCount | None = g.get("agent_count")
    return pending if pending is not None and not pending.counted else None


def settle_agent_count(refuse: bool = True) -> None:
    """After a view that deferred its count: count it if its round trip did not; raise its refusal
    (`refuse`: the view failed, so over the limit the answer is 429)."""
    pending: AgentCount | None = g.get("agent_count")
    if pending is not None:
        pending.settle(refuse)


def count_login_attempt() -> None:
    """Count a login attempt; raises RateLimited when its username or address is over its limit."""
    limits: RateLimits = current_app.extensions["rate_limits"]
    # A hash: a key stays short whatever the form holds (a megabyte, a NUL), and names stay out of Redis.
    username = request.form.get("username", "").strip().lower()
    hashed = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    limits.count(limits.login_per_username, "login-username", hashed)
    limits.count(limits.login_per_address, "login-address", request.remote_addr or "-")
