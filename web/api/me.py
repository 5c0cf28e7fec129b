"""The caller's own account: `GET /api/me`, and its API tokens at `/api/me/tokens[/{token_id}]`.

With the dashboard's session or a token. A token cannot issue a token that outlives it (a
short-lived token cannot become a lasting one); the dashboard session can issue any.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.sessions import is_session_id
from orchestrator.users import token_view, user_view
from web.api.users import accounts
from web.auth import current_principal, require_user
from web.openapi import doc
from web.schemas.answers import MeSchema, TokenAnswerSchema, TokenIssuedSchema, TokenListSchema
from web.schemas.users import NewTokenSchema

bp = Blueprint("me", __name__, url_prefix="/api/me")
_new_token = NewTokenSchema()


@bp.get("")
@doc("One's own account", answers={200: MeSchema})
@require_user
def show() -> ResponseReturnValue:
    principal = current_principal()
    return jsonify({**user_view(accounts().get(principal.id)), "token_id": _token_id()})


@bp.get("/tokens")
@doc("One's own API tokens (never the tokens themselves)", answers={200: TokenListSchema})
@require_user
def tokens() -> ResponseReturnValue:
    return jsonify({"tokens": [token_view(t) for t in accounts().tokens(current_principal().id)]})


@bp.post("/tokens")
@doc("Issue oneself a token (with a token: none that outlives it); the token is in this answer only",
     body=NewTokenSchema, answers={201: TokenIssuedSchema})
@require_user
def issue_token() -> ResponseReturnValue:
    data = _new_token.load(request.get_json() or {})
    principal = current_principal()
    not_after = principal.until if _token_id() is not None else None
    cred, token = accounts().issue_token(principal.id, data["name"], data["expires_at"], not_after=not_after)
    return jsonify({**token_view(cred), "token": token}), 201


@bp.delete("/tokens/<token_id>")
@doc("Revoke one of one's own tokens", answers={200: TokenAnswerSchema})
@require_user
def revoke_token(token_id: str) -> ResponseReturnValue:
    return jsonify(token_view(accounts().revoke_token(current_principal().id, token_id)))


def _token_id() -> str | None:
    """The id of the token the request came with; None for the dashboard's session."""
    via = current_principal().via
    return None if via is None or is_session_id(via) else via
