from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from orchestrator.plan_schema import ID
from orchestrator.signing import SIGNING_MODES


class Capability(fields.Field):
    """An action name, or {"action": name, "params": [names]}."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and set(value) <= {"action", "params"}:
            params = value.get("params") or []
            # A bare string is a sequence too: "to" would become ["t", "o"].
            if isinstance(value.get("action"), str) and value["action"] and isinstance(params, list) and all(
                    isinstance(p, str) for p in params):
                return value
        raise ValidationError('A capability is an action name or {"action": ..., "params": [...]}.')


# An agent's own limit (requests per minute; web/rate_limits.py); above it, a limit protects nothing.
RATE_LIMIT = validate.Range(min=1, max=1_000_000)


class AgentSchema(Schema):
    id = fields.String(load_default=None, allow_none=True, validate=ID)
    name = fields.String(required=True, validate=validate.Length(1, 200))
    role = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    capabilities = fields.List(Capability(), load_default=list, validate=validate.Length(max=500))
    webhook_url = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"http", "https"})
    poll_endpoint = fields.String(load_default=None, allow_none=True)
    signing = fields.String(load_default="required", validate=validate.OneOf(SIGNING_MODES))
    rate_limit_per_minute = fields.Integer(load_default=None, allow_none=True, strict=True, validate=RATE_LIMIT)


class AgentUpdateSchema(Schema):
    """`PATCH /api/agents/{id}`: what an operator may change on a registered agent (one field at least;
    a `rate_limit_per_minute` of null goes back to the settings' AGENT_RATE_LIMIT)."""

    signing = fields.String(validate=validate.OneOf(SIGNING_MODES))
    rate_limit_per_minute = fields.Integer(allow_none=True, strict=True, validate=RATE_LIMIT)

    @validates_schema
    def _not_empty(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("Send signing or rate_limit_per_minute.")


ACTION = validate.Regexp(r"^[^\x00-\x1f,]{1,120}$", error="An action name: 1 to 120 characters, no commas or controls.")


class PollQuerySchema(Schema):
    """`GET /api/agents/{id}/work?supported_actions=send_email,make_phone_call`."""

    supported_actions = fields.String(load_default=None, validate=validate.Length(max=10_000))

    @post_load
    def _split(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        raw = data["supported_actions"]
        actions = {a.strip() for a in raw.split(",") if a.strip()} if raw else None
        try:
            for action in actions or ():
                ACTION(action)
        except ValidationError as exc:
            raise ValidationError(exc.messages, "supported_actions") from exc
        return {"supported_actions": actions}
