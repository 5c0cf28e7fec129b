"""Who a request acts for: a bearer token (an operator's or an agent's), or the dashboard's login.

Tokens resolve to a Principal through the database once, then from a per-process cache
(`web/principal_cache.py`) that is valid under one value of the access epoch, which whatever takes
access away changes (`orchestrator/revocation.py`). A cached principal is trusted only once the
request's first Redis round trip has read the epoch and found it unchanged:
- views read it before they run (`current_principal`: one GET, in the same pipeline as the
  session lookup for the dashboard);
- the agents' event views (`require_agent_submit`) do not add that round trip: they pass
  `epoch_seen()` to `Ingestor.submit`, whose first round trip (made anyway) reads it too. When it has
  moved, nothing has been read or queued yet: the view runs again once authenticated from the
  database. (Until then such a view may answer a bad body 422, or a wrong agent_id 403.)

The dashboard logs in with Flask-Login: its cookie carries a session id whose record lives in Redis
(`orchestrator/sessions.py`), so logout, a password reset or deactivation ends it everywhere. A
browser sends that cookie with any site's request, so a session-authenticated write must also carry
the page's CSRF token (Flask-WTF; `X-CSRF-Token`); bearer requests need none.

Agents also sign their requests (`orchestrator/signing.py`): `_bearer_principal` checks an agent's
signature before any view runs, with the secret and mode that come with its cached principal. A
signed request from a cached agent costs one Redis round trip, which both claims the nonce and reads
the epoch (so no view has to confirm it afterwards); a signature or mode read from a cache that may be
stale is confirmed against the epoch before a request is refused for it.

An agent's requests are counted against its rate limit as it is authenticated (`current_principal`,
`web/rate_limits.py`); for `require_agent_submit` views, in their first round trip
(`first_trip_checks`), or after the view when it refused the request before that. Other checks to
add on every request belong in `_guard`, or in `_bearer_principal` for tokens only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import Flask, current_app, g, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError, CSRFProtect

from orchestrator.credentials import Principal, authenticate, credential_principal, hash_token, user_principal
from orchestrator.errors import Forbidden, NotFound, Unauthorized
from orchestrator.revocation import EpochChanged, EpochSeen, announce, epoch_key
from orchestrator.round_trip import RoundTripCheck
from orchestrator.sessions import SessionStore, is_session_id, session_key
from orchestrator.signing import (
    NONCE_TTL_SECONDS,
    NonceReused,
    SignatureRequired,
    SignedRequest,
    nonce_key,
    request_target,
)
from web.principal_cache import Hit, PrincipalCache
from web.rate_limits import agent_count, count_agent_request, settle_agent_count

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

login_manager = LoginManager()
csrf = CSRFProtect()
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def init_auth(app: Flask) -> None:
    """Bind Flask-Login and Flask-WTF's CSRF protection; CSRF is checked only where a session is used."""
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # bearer requests carry no CSRF token
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session (12 h at most)
    app.extensions["principal_cache"] = PrincipalCache()
    login_manager.user_loader(_load_session_user)
    login_manager.init_app(app)
    csrf.init_app(app)


class SessionUser(UserMixin):
    """Flask-Login's user: the principal of a live dashboard session. Its id is the session's id,
    not the user's (Flask-Login's "alternative token"), so an ended session loads nobody."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def get_id(self) -> str:
        return self.principal.via or ""


def _cache() -> PrincipalCache:
    return current_app.extensions["principal_cache"]


def _prefix() -> str:
    return current_app.config["SETTINGS"].redis_key_prefix


def _sessions() -> SessionStore:
    return SessionStore(current_app.extensions["redis"], _prefix())


def _read_epoch(*keys: str) -> list[bytes | None]:
    """Read the access epoch (and `keys`) in one round trip; the cache follows the epoch read."""
    pipe = current_app.extensions["redis"].pipeline(transaction=False)
    pipe.get(epoch_key(_prefix()))
    for key in keys:
        pipe.get(key)
    epoch, *values = pipe.execute()
    _cache().observe(epoch)
    return [epoch, *values]


def _cached_or_load(key: str, epoch: bytes | None, load: Callable[[Any], Principal | None]) -> Principal | None:
    hit = _cache().get(key)
    if hit is not None:
        return hit.principal
    with current_app.extensions["db"].reading() as s:
        principal = load(s)
    if principal is not None:
        _cache().put(key, principal, epoch)
    return principal


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def current_principal() -> Principal:
    """The request's principal; raises Unauthorized when there is no valid token or session."""
    if "principal" in g:
        return g.principal
    token = bearer_token()
    g.principal = _bearer_principal(token) if token is not None else _session_principal()
    if g.principal.is_agent:
        # Before any view runs (over its limit, an agent's request does nothing), or in the first
        # round trip of a `require_agent_submit` view, which changes nothing either.
        count_agent_request(defer=bool(g.get("auth_defer_epoch")))
    return g.principal


def first_trip_checks() -> list[RoundTripCheck]:
    """For a `require_agent_submit` view: what its first Redis round trip must confirm (orchestrator/
    round_trip.py): the epoch of a cached principal, unless this request has read it already, and the
    agent's rate-limit count, unless it has been made."""
    checks: list[RoundTripCheck] = []
    seen = g.pop("auth_epoch_seen", None)
    if seen is not None:
        checks.append(seen)
    count = agent_count()
    if count is not None:
        checks.append(count)
    return checks


def _bearer_principal(token: str) -> Principal:
    key = "token:" + hash_token(token)
    hit = _cache().get(key)
    if hit is not None and hit.principal.is_agent:
        signed = _signed_request()
        if signed is not None:
            return _signed_cached_agent(token, key, hit.principal, hit.epoch, signed)
    principal = _token_principal(token, key, hit)
    return _check_signing(token, key, principal, _signed_request()) if principal.is_agent else principal


def _token_principal(token: str, key: str, hit: Hit | None) -> Principal:
    if hit is not None and g.get("auth_defer_epoch"):
        g.auth_epoch_seen = EpochSeen(epoch_key(_prefix()), hit.epoch)
        return hit.principal
    try:
        epoch, = _read_epoch()
    except redis.RedisError as exc:
        # The database is the truth; only the cache needs Redis. Endpoints that need no Redis
        # (reading executions, plans) keep working while it is away.
        log.warning("Redis unavailable (%s); authenticating from the database alone", type(exc).__name__)
        with current_app.extensions["db"].reading() as s:
            principal = authenticate(s, token)
    else:
        principal = _cached_or_load(key, epoch, lambda s: authenticate(s, token))
    if principal is None:
        raise Unauthorized("The API token is not valid.")
    return principal


# -- agents' signatures (orchestrator/signing.py) ---------------------------------------------------

def _signed_request() -> SignedRequest | None:
    # From the decoded path, not the raw request line, which not every WSGI server passes on.
    target = request_target(request.script_root + request.path, request.query_string.decode("latin-1"))
    return SignedRequest.from_headers(request.method, target, request.headers)


def _reload(token: str, key: str, epoch: bytes | None) -> Principal:
    principal = _cached_or_load(key, epoch, lambda s: authenticate(s, token))
    if principal is None:
        raise Unauthorized("The API token is not valid.")
    return principal


def _claim_nonce(pipe: redis.client.Pipeline, agent_id: str, signed: SignedRequest) -> None:
    pipe.set(nonce_key(_prefix(), agent_id, signed.nonce), b"1", nx=True, ex=NONCE_TTL_SECONDS)


def _signed_cached_agent(token: str, key: str, cached: Principal, seen: bytes | None,
                         signed: SignedRequest) -> Principal:
    """A cached agent's signed request: one round trip claims the nonce and confirms the epoch."""
    body = request.get_data(cache=True)
    try:
        signed.verify(cached.signing_secret, body)
    except Unauthorized:
        epoch, = _read_epoch()
        if epoch == seen:
            raise
        return _check_signing(token, key, _reload(token, key, epoch), signed)  # the secret was rotated
    pipe = current_app.extensions["redis"].pipeline(transaction=False)
    pipe.get(epoch_key(_prefix()))
    _claim_nonce(pipe, cached.id, signed)
    epoch, claimed = pipe.execute()
    _cache().observe(epoch)
    if not claimed:
        raise NonceReused("This request's nonce was used before.")
    if epoch == seen:
        return cached
    principal = _reload(token, key, epoch)  # access changed meanwhile: the database decides
    signed.verify(principal.signing_secret, body)
    return principal


def _check_signing(token: str, key: str, principal: Principal, signed: SignedRequest | None) -> Principal:
    """`principal`, an agent's, once its request is found signed as its signing mode asks."""
    if signed is None:
        if principal.signing == "optional":
            return principal
        seen = g.pop("auth_epoch_seen", None)  # a cached mode, not yet confirmed: it may have just changed
        if seen is not None:
            epoch, = _read_epoch()
            if epoch != seen.value:
                return _check_signing(token, key, _reload(token, key, epoch), None)
        raise SignatureRequired("This agent signs its requests: see the README's Security section.")
    signed.verify(principal.signing_secret, request.get_data(cache=True))
    pipe = current_app.extensions["redis"].pipeline(transaction=False)
    _claim_nonce(pipe, principal.id, signed)
    if not pipe.execute()[0]:
        raise NonceReused("This request's nonce was used before.")
    return principal


def _load_session_user(sid: str) -> SessionUser | None:
    """The user of live session `sid` (Flask-Login calls this with the cookie's session id)."""
    principal = session_principal(sid)
    return SessionUser(principal) if principal is not None else None


def session_principal(sid: str) -> Principal | None:
    """The principal of dashboard session `sid`, or None when it has ended or its user is deactivated."""
    if not is_session_id(sid):
        return None
    epoch, owner = _read_epoch(session_key(_prefix(), sid))
    if owner is None:
        return None
    principal = _cached_or_load("session:" + sid, epoch, lambda s: user_principal(s, owner.decode(), via=sid))
    return principal if principal is not None and principal.id == owner.decode() else None


def _session_principal() -> Principal:
    """The dashboard user logged in by the session; writes must prove they come from our pages."""
    if not current_user.is_authenticated:
        raise Unauthorized("Send an API token: 'Authorization: Bearer <token>'.")
    if request.method not in _SAFE_METHODS:
        try:
            csrf.protect()
        except CSRFError as exc:
            raise Forbidden("A session-authenticated write needs the page's X-CSRF-Token header.",
                            reason=exc.description) from exc
    return current_user.principal


def grant_is_live(principal: Principal) -> bool:
    """Whether the grant a stream token was issued through (`principal.via`) still gives access."""
    via = principal.via
    if via is None:
        return False
    if is_session_id(via):
        now = session_principal(via)
    else:
        epoch, = _read_epoch()
        now = _cached_or_load("credential:" + via, epoch, lambda s: credential_principal(s, via))
    return now is not None and now.id == principal.id and now.kind == "user"


# -- logging in and out (the dashboard's login form) ------------------------------------------------

def start_session(user_id: str, username: str) -> None:
    """Log `user_id` in: a new server-side session, and a fresh cookie (no fixation, a new CSRF token)."""
    end_session()  # a session this browser had goes, even when the same user logs in again
    sid = _sessions().start(user_id)
    login_user(SessionUser(Principal("user", user_id, via=sid)))
    session["username"] = username  # shown in the page header


def end_session() -> None:
    """Log out: the session's record goes, so its cookie, stream tokens and sockets stop working."""
    if current_user.is_authenticated:
        sid = current_user.get_id()
        _sessions().end(sid)
        announce(current_app.extensions["redis"], _prefix(), grants=[sid])
    logout_user()
    session.clear()


# -- view guards ------------------------------------------------------------------------------------

def _reauthenticate() -> None:
    g.pop("principal", None)
    g.pop("auth_epoch_seen", None)
    g.auth_defer_epoch = False


def _deferring(view: Callable[..., Any], check: Callable[[Principal, dict[str, Any]], None], args: Any,
               kwargs: dict[str, Any]) -> Any:
    """Run a view whose first round trip confirms the epoch: again, authenticated from the database,
    when it had moved (nothing was done: the epoch is read before anything else)."""
    try:
        return view(*args, **kwargs)
    except EpochChanged:
        _reauthenticate()
        check(current_principal(), kwargs)
        return view(*args, **kwargs)


def _guard(check: Callable[[Principal, dict[str, Any]], None], defer_epoch: bool = False) -> Callable[[F], F]:
    """A view decorator that runs `check(principal, url variables)` first; the check raises to refuse."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.auth_defer_epoch = defer_epoch
            if not defer_epoch:
                check(current_principal(), kwargs)
                return view(*args, **kwargs)
            try:
                check(current_principal(), kwargs)
                answer = _deferring(view, check, args, kwargs)
            except BaseException:
                settle_agent_count()  # a request refused before its round trip still counts; over the limit: 429
                raise
            settle_agent_count(refuse=False)  # done: counted (by its round trip, or now), never undone
            return answer

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


# Only operators (user tokens or the dashboard session) may call the view.
require_user = _guard(_operator)
# Only admin operators may call the view; anyone else gets a 404.
require_admin = _guard(_admin)
# Only agents may call the view; an `agent_id` in the URL must be the caller's own.
require_agent = _guard(_agent_itself)
# The same, for views whose first Redis round trip is `Ingestor.submit(..., epoch=epoch_seen())`.
require_agent_submit = _guard(_agent_itself, defer_epoch=True)
