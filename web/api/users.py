"""Admins manage users and their API tokens: `/api/admin/users[/{id}[/deactivate|/activate|/password|
/tokens[/{token_id}]]]`. Anyone else is answered 404, as for every admin endpoint."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from orchestrator.users import Accounts, NewUser, token_view, user_view
from web.auth import require_admin
from web.openapi import ERROR, doc
from web.schemas.answers import TokenAnswerSchema, TokenIssuedSchema, TokenListSchema, UserAnswerSchema, UserListSchema
from web.schemas.users import NewTokenSchema, NewUserSchema, PasswordSchema

bp = Blueprint("users", __name__, url_prefix="/api/admin/users")
_new_user = NewUserSchema()
_password = PasswordSchema()
_new_token = NewTokenSchema()


def accounts() -> Accounts:
    app = current_app
    return Accounts(app.extensions["db"], app.extensions["redis"], app.config["SETTINGS"].redis_key_prefix)


@bp.get("")
@doc("The users", security="admin", answers={200: UserListSchema})
@require_admin
def index() -> ResponseReturnValue:
    return jsonify({"users": [user_view(u) for u in accounts().list()]})


@bp.post("")
@doc("Create a user", body=NewUserSchema, security="admin", answers={201: UserAnswerSchema, 409: ERROR})
@require_admin
def create() -> ResponseReturnValue:
    user = accounts().create(NewUser(**_new_user.load(request.get_json() or {})))
    return jsonify(user_view(user)), 201, {"Location": f"/api/admin/users/{user.id}"}


@bp.get("/<user_id>")
@doc("One user", security="admin", answers={200: UserAnswerSchema})
@require_admin
def show(user_id: str) -> ResponseReturnValue:
    return jsonify(user_view(accounts().get(user_id)))


@bp.post("/<user_id>/<any(activate, deactivate):action>")
@doc("Deactivate (ends its sessions, tokens and streams) or activate a user", security="admin",
     answers={200: UserAnswerSchema, 409: ERROR})
@require_admin
def set_access(user_id: str, action: str) -> ResponseReturnValue:
    """Deactivating ends the user's sessions, tokens and streams at once; activating lets its tokens work again."""
    return jsonify(user_view(getattr(accounts(), action)(user_id)))


@bp.put("/<user_id>/password")
@doc("Set a user's password (ends its dashboard sessions)", body=PasswordSchema, security="admin",
     answers={204: None})
@require_admin
def set_password(user_id: str) -> ResponseReturnValue:
    accounts().set_password(user_id, _password.load(request.get_json() or {})["password"])
    return "", 204


@bp.get("/<user_id>/tokens")
@doc("A user's API tokens (never the tokens themselves)", security="admin", answers={200: TokenListSchema})
@require_admin
def tokens(user_id: str) -> ResponseReturnValue:
    return jsonify({"tokens": [token_view(t) for t in accounts().tokens(user_id)]})


@bp.post("/<user_id>/tokens")
@doc("Issue a token for a user; the token is in this answer only", body=NewTokenSchema, security="admin",
     answers={201: TokenIssuedSchema})
@require_admin
def issue_token(user_id: str) -> ResponseReturnValue:
    data = _new_token.load(request.get_json() or {})
    cred, token = accounts().issue_token(user_id, data["name"], data["expires_at"])
    return jsonify({**token_view(cred), "token": token}), 201


@bp.delete("/<user_id>/tokens/<token_id>")
@doc("Revoke a user's token", security="admin", answers={200: TokenAnswerSchema})
@require_admin
def revoke_token(user_id: str, token_id: str) -> ResponseReturnValue:
    return jsonify(token_view(accounts().revoke_token(user_id, token_id)))
