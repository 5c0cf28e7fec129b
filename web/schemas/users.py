"""Bodies of the users and tokens API (`/api/admin/users`, `/api/me/tokens`).

Usernames and passwords are checked against their rules by `orchestrator/users.py`, which the CLI
shares; these schemas only bound sizes and shapes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from orchestrator.credentials import TOKEN_NAME_MAX
from orchestrator.models import utcnow
from orchestrator.users import MAX_PASSWORD
from web.schemas.fields import UTCDateTime

TEN_YEARS = 10 * 366 * 24 * 3600


class NewUserSchema(Schema):
    username = fields.String(required=True, validate=validate.Length(1, 120))
    password = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_PASSWORD))
    is_admin = fields.Boolean(load_default=False)
    display_name = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200))
    email = fields.Email(load_default=None, allow_none=True, validate=validate.Length(max=320))


class PasswordSchema(Schema):
    password = fields.String(required=True, validate=validate.Length(max=MAX_PASSWORD))


class NewTokenSchema(Schema):
    """A token's name and its expiry: `expires_at`, or `expires_in_seconds` from now; neither: never."""

    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, TOKEN_NAME_MAX))
    expires_at = UTCDateTime(load_default=None, allow_none=True)
    expires_in_seconds = fields.Integer(load_default=None, allow_none=True, strict=True,
                                        validate=validate.Range(60, TEN_YEARS))

    @validates_schema
    def _one_expiry(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("expires_at") is not None and data.get("expires_in_seconds") is not None:
            raise ValidationError("Give expires_at or expires_in_seconds, not both.", "expires_in_seconds")

    @post_load
    def _expiry(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        seconds = data.pop("expires_in_seconds", None)
        if seconds is not None:
            data["expires_at"] = utcnow() + timedelta(seconds=seconds)
        return data
