"""Dashboard pages: login, executions (list and detail), agents.

Pages are rendered here with the logged-in user's Principal and the same orchestrator functions the
JSON API uses, so a page never shows more than the API would. Everything that changes afterwards
(live updates, event paging, controls) is done by web/static/dashboard.js against the JSON API and
the WebSocket stream, authenticated by the same session (see web/auth.py).
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from orchestrator.agents import agents_with_holdings
from orchestrator.credentials import check_password
from orchestrator.errors import Forbidden, NotFound, Unauthorized
from orchestrator.event_log import SYSTEM_EVENT_TYPES
from orchestrator.execution_views import execution_detail, list_executions
from orchestrator.models import User
from orchestrator.state_machine import AGENT_EVENT_TYPES, VALID_TRANSITIONS
from web.auth import current_principal

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
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        with current_app.extensions["db"].reading() as s:
            user = s.scalar(select(User).where(User.username == username)) if username else None
            ok = user is not None and user.is_active and check_password(user, password)
            user_id = user.id if ok and user is not None else None
        if user_id is not None:
            session.clear()
            session["user_id"] = user_id
            session["username"] = username
            # The page sends this back in X-CSRF-Token on every write it makes with the session.
            session["csrf"] = secrets.token_urlsafe(32)
            return redirect(_safe_next(request.args.get("next")))
        error = "Wrong username or password."
    return render_template("login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    sent = request.form.get("csrf", "")
    # Without the check any site could log our users out with a hidden form.
    if session.get("csrf") and hmac.compare_digest(sent, session["csrf"]):
        session.clear()
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


@bp.get("/agents")
@login_required
def agents() -> ResponseReturnValue:
    with current_app.extensions["db"].reading() as s:
        items = agents_with_holdings(s, current_principal())
    return render_template("agents.html", agents=items)
