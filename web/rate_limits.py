"""Rate limits: each agent's requests per minute, and dashboard login attempts per username and per address.

Flask-Limiter counts them in the app's Redis (through the app's own connection pool, so the embedded
Redis's unix socket too), under the app's key prefix, so that every web process shares the counts.
The strategy is the moving window: at most N requests in any 60 seconds, with no burst of 2N across
a window's edge.

- An agent's requests are counted as it is authenticated (`web/auth.py: current_principal`), before
  its view does anything, under its id: its own `rate_limit_per_minute` (carried by the cached
  principal, so no database read) or AGENT_RATE_LIMIT. A batch of events is one request. Over the
  limit the view does not run: 429 `rate_limited` (web/errors.py). Operators' tokens and dashboard
  sessions are not limited.
- Login attempts are counted before the form is checked or a password hashed, under a hash of the
  username (lower-cased: names are unique regardless of case) and under the client's address.

A refused answer carries `Retry-After` (seconds), `RateLimit-Limit`, `RateLimit-Remaining`,
`RateLimit-Reset` (seconds until a request is free again; IETF draft-ietf-httpapi-ratelimit-headers)
and `RateLimit-Policy`. Answers within the limit go without them: the count is the one Redis round
trip a request pays for its limit, and reading the window back for the headers would be a second.
Flask-Limiter's own headers are off: it writes X-RateLimit-* with a reset timestamp, on every answer.

When Redis is out of reach, each process counts in memory (Flask-Limiter's in-memory fallback) and
looks for Redis again with a backoff: the limiter never turns a request into an error; whatever
needs Redis still answers 503 as before.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

import redis
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from orchestrator.settings import Settings

log = logging.getLogger(__name__)


def _agent_gate() -> None:
    """Where an agent's request is counted: Flask-Limiter's limits decorate functions, and who the
    agent is is known only once its token has been checked, as the view starts."""


def _login_gate() -> None:
    """Where a login attempt is counted."""


def _agent_key() -> str:
    return g.principal.id


def _username_key() -> str:
    # A hash: a key stays short whatever the form holds (a megabyte, a NUL), and names stay out of Redis.
    username = request.form.get("username", "").strip().lower()
    return "user-" + hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class RateLimits:
    """One app's limiter and its gates (one per app: Flask-Limiter keeps its storage on the instance)."""

    def __init__(self, app: Flask, settings: Settings, client: redis.Redis) -> None:
        self.default_agent_limit = settings.agent_rate_limit
        self.limiter = Limiter(
            get_remote_address,
            app=app,
            # The scheme picks the Redis storage; the app's pool says where it is (TCP or unix socket).
            storage_uri="redis://",
            storage_options={"connection_pool": client.connection_pool,
                             "key_prefix": f"{settings.redis_key_prefix}ratelimit"},
            strategy="moving-window",
            in_memory_fallback_enabled=True,
            headers_enabled=False,  # written by `_headers`, under the IETF names
        )
        self.agent_gate: Callable[[], None] = self.limiter.shared_limit(
            self._agent_limit, scope="agent", key_func=_agent_key)(_agent_gate)
        by_address = self.limiter.shared_limit(settings.login_rate_limit_per_address, scope="login-address")
        by_username = self.limiter.shared_limit(settings.login_rate_limit_per_username, scope="login-username",
                                                key_func=_username_key)
        self.login_gate: Callable[[], None] = by_username(by_address(_login_gate))
        app.after_request(self._headers)

    def _agent_limit(self) -> str:
        # Flask-Limiter also reads it before any view runs, when no one is authenticated yet; an
        # exception here would count as Redis being down.
        principal = g.get("principal")
        own = principal.rate_limit_per_minute if principal is not None else None
        return f"{own}/minute" if own else self.default_agent_limit

    def _headers(self, response: Response) -> Response:
        current = self.limiter.current_limit
        if current is None or not current.breached:
            return response
        try:
            reset_at, remaining = current.window
        except redis.RedisError as exc:  # Redis went away after the count: the answer goes without them
            log.warning("Redis unavailable; rate limit headers left out (%s)", type(exc).__name__)
            return response
        reset_in = max(0, math.ceil(reset_at - time.time()))
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(remaining)
        response.headers["RateLimit-Reset"] = str(reset_in)
        response.headers["RateLimit-Policy"] = f"{current.limit.amount};w={current.limit.get_expiry()}"
        response.headers["Retry-After"] = str(max(1, reset_in))
        return response


def init_rate_limits(app: Flask, settings: Settings) -> None:
    app.extensions["rate_limits"] = RateLimits(app, settings, app.extensions["redis"])


def count_agent_request() -> None:
    """Count the request of the agent in `g.principal`, once per request; raises RateLimitExceeded
    when the agent is over its limit."""
    if g.get("agent_request_counted"):
        return  # authenticated again (the access epoch moved): still one request
    g.agent_request_counted = True
    current_app.extensions["rate_limits"].agent_gate()


def count_login_attempt() -> None:
    """Count a login attempt; raises RateLimitExceeded when its username or address is over its limit."""
    # The form is parsed here, so that a body that does not parse is answered 4xx: raised inside the
    # limiter, any error is taken for Redis being down.
    _ = request.form
    current_app.extensions["rate_limits"].login_gate()
