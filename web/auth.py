"""Bearer-token authentication for the API, and the dashboard's session login for the same API.

Tokens resolve to a Principal through the database once, then from a small per-process cache for
`CACHE_SECONDS`, so the event hot path does not open a transaction to authenticate (a revoked key
stops working within that time). The dashboard's pages call the API with their login session
instead; since a browser sends that cookie on any site's request, a session-authenticated write must
also carry the session's CSRF token in `X-CSRF-Token`.
"""

from __future__ import annotations

import functools
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request, session

from orchestrator.credentials import Principal, authenticate, hash_token
from orchestrator.errors import Forbidden, NotFound, Unauthorized
from orchestrator.models import User

CACHE_SECONDS = 30.0
_MAX_ENTRIES = 10_000

F = TypeVar("F", bound=Callable[..., Any])


class _TokenCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, key: str) -> Principal | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] < time.monotonic():
                return None
            return hit[1]

    def put(self, key: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + CACHE_SECONDS, principal)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _cache() -> _TokenCache:
    return current_app.extensions.setdefault("token_cache", _TokenCache())


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def current_principal() -> Principal:
    """The request's principal; raises Unauthorized when there is no valid token."""
    if "principal" in g:
        return g.principal
    token = bearer_token()
    if token is None:
        g.principal = _session_principal()
        return g.principal
    key = hash_token(token)
    principal = _cache().get(key)
    if principal is None:
        with current_app.extensions["db"].reading() as session:
            principal = authenticate(session, token)
        if principal is None:
            raise Unauthorized("The API token is not valid.")
        _cache().put(key, principal)
    g.principal = principal
    return principal


def _session_principal() -> Principal:
    """The dashboard user logged in by the Flask session; writes must prove they come from our pages."""
    user_id = session.get("user_id")
    if not user_id:
        raise Unauthorized("Send an API token: 'Authorization: Bearer <token>'.")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get("X-CSRF-Token", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            raise Forbidden("A session-authenticated write needs the page's X-CSRF-Token header.")
    key = f"session:{user_id}"
    principal = _cache().get(key)
    if principal is None:
        with current_app.extensions["db"].reading() as s:
            user = s.get(User, user_id)
            if user is None or not user.is_active:
                raise Unauthorized("The login session is no longer valid; log in again.")
            principal = Principal("user", user.id, user.is_admin)
        _cache().put(key, principal)
    return principal


def _guard(check: Callable[[Principal, dict[str, Any]], None]) -> Callable[[F], F]:
    """A view decorator that runs `check(principal, url variables)` first; the check raises to refuse."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check(current_principal(), kwargs)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _operator(principal: Principal, _url: dict[str, Any]) -> None:
    if not principal.is_user:
        raise Forbidden("This endpoint takes an operator's token, not an agent's.")


def _admin(principal: Principal, _url: dict[str, Any]) -> None:
    if not (principal.is_user and principal.is_admin):
        raise NotFound("Not found.")  # anyone else is told it does not exist


def _agent_itself(principal: Principal, url: dict[str, Any]) -> None:
    if not principal.is_agent:
        raise Forbidden("This endpoint takes an agent's API key.")
    if "agent_id" in url and url["agent_id"] != principal.id:
        raise Forbidden("An agent may only act as itself.")


# Only operators (user tokens) may call the view.
require_user = _guard(_operator)
# Only admin operators may call the view.
require_admin = _guard(_admin)
# Only agents may call the view; an `agent_id` in the URL must be the caller's own.
require_agent = _guard(_agent_itself)
