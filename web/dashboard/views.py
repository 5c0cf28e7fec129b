"""Dashboard pages: login, executions (list and detail), agents, the ops view.

Pages are rendered here with the logged-in user's Principal and the same orchestrator functions the
JSON API uses, so a page never shows more than the API would. Everything that changes afterwards
(live updates, event paging, controls) is done by web/static/dashboard.js against the JSON API and
the WebSocket stream, authenticated by the same session (see web/auth.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from orchestrator.agents import agents_with_holdings
from orchestrator.errors import Forbidden, NotFound, Unauthorized
from orchestrator.event_log import SYSTEM_EVENT_TYPES
from orchestrator.execution_views import execution_detail, list_executions
from orchestrator.state_machine import AGENT_EVENT_TYPES, VALID_TRANSITIONS
from orchestrator.users import verify_login
from web.auth import csrf, current_principal, end_session, start_session
from web.dashboard.forms import LoginForm
from web.rate_limits import RateLimited, count_login_attempt

bp = Blueprint("dashboard", __name__)

F = TypeVar("F", bound=Callable[..., Any])

# The log's type filter: the agents' own event types and those the orchestrator writes.
EVENT_TYPES = sorted({*AGENT_EVENT_TYPES, *SYSTEM_EVENT_TYPES})
PAGE_SIZE = 50


def login_required(view: F) -> F:
    """Send anonymous visitors to the login page; agents' keys do not open operator pages."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            principal = current_principal()
        except Unauthorized:
            session.clear()  # a stale session (deactivated user) must not loop
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        if not principal.is_user:
            raise Forbidden("The dashboard is for operators, not agents.")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _safe_next(target: str | None) -> str:
    """Only same-site paths: an open redirect after login would help phishing."""
    if not target:
        return url_for("dashboard.executions")
    parts = urlsplit(target)
    # Browsers read "/\\host" like "//host", so a backslash is refused too.
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("dashboard.executions")
    return target


@bp.record_once
def _harden_session_cookie(state: BlueprintSetupState) -> None:
    # The login cookie also authenticates the API: keep it off other sites' requests (CSRF defence in depth).
    if state.app.config.get("SESSION_COOKIE_SAMESITE") is None:
        state.app.config["SESSION_COOKIE_SAMESITE"] = "Lax"


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> ResponseReturnValue:
    return render_template("not_found.html", message=exc.message), 404


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    form = LoginForm()
    if request.method != "POST":
        return render_template("login.html", form=form, error=None)
    try:
        count_login_attempt()  # first: a refused attempt costs no password hash
    except RateLimited as exc:
        return (render_template("login.html", form=form, error="Too many attempts; wait a minute and try again."),
                429, exc.headers)
    if not form.validate_on_submit():
        if "csrf_token" in form.errors:  # a page kept open across a logout, or another site's form
            return render_template("login.html", form=form, error="The form expired; log in again."), 400
        return render_template("login.html", form=form, error="Wrong username or password."), 401
    username = form.username.data.strip()
    with current_app.extensions["db"].reading() as s:
        user = verify_login(s, username, form.password.data)
    if user is None:
        return render_template("login.html", form=form, error="Wrong username or password."), 401
    start_session(user.id, user.username)
    return redirect(_safe_next(request.args.get("next")))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    try:
        csrf.protect()  # without it any site could log our users out with a hidden form
    except CSRFError:
        return redirect(url_for("dashboard.login"))
    end_session()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
def index() -> ResponseReturnValue:
    return redirect(url_for("dashboard.executions"))


@bp.get("/executions")
@login_required
def executions() -> ResponseReturnValue:
    status = request.args.get("status") or None
    with current_app.extensions["db"].reading() as s:
        items, cursor = list_executions(s, current_principal(), status, PAGE_SIZE, request.args.get("cursor") or None)
    return render_template("executions.html", executions=items, next_cursor=cursor, status=status,
                           statuses=list(VALID_TRANSITIONS))


@bp.get("/executions/<execution_id>")
@login_required
def execution(execution_id: str) -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        detail = execution_detail(s, current_principal(), execution_id)
    return render_template("execution.html", detail=detail, event_types=EVENT_TYPES)


@bp.get("/ops")
@login_required
def ops() -> ResponseReturnValue:
    """The ops view (admins: the figures are the whole stack's); web/static/dashboard.js polls
    /api/ops/summary and draws its charts."""
    if not current_principal().is_admin:
        raise NotFound("Not found.")  # as the admin API answers anyone else
    return render_template("ops.html")


@bp.get("/agents")
@login_required
def agents() -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        items = agents_with_holdings(s, current_principal())
    return render_template("agents.html", agents=items)
