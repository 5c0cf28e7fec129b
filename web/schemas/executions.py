from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from orchestrator.executions import CONTROL_STATUSES
from orchestrator.plan_schema import ID
from orchestrator.state_machine import VALID_TRANSITIONS


class CreateExecutionSchema(Schema):
    plan_id = fields.String(required=True, validate=ID)
    agent_id = fields.String(load_default=None, allow_none=True, validate=ID)
    execution_id = fields.String(load_default=None, allow_none=True, validate=ID)


class ControlSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(CONTROL_STATUSES))


class ResolveSchema(Schema):
    option = fields.String(required=True, validate=validate.Length(1, 64))
    params = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)


class ListQuerySchema(Schema):
    status = fields.String(load_default=None, validate=validate.OneOf(list(VALID_TRANSITIONS)))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    cursor = fields.String(load_default=None)


class EventsQuerySchema(Schema):
    # Both reach a SQL comparison: their alphabets keep a NUL (a 500 from PostgreSQL) out.
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    before = fields.String(load_default=None, validate=ID)
    event_type = fields.String(load_default=None, validate=validate.Regexp(
        r"^[a-z][a-z0-9_]{0,63}$", error="Use a snake_case event type."))
    raw = fields.Boolean(load_default=False)  # unmasked payloads: the execution's owner only


class DetailQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the detail took no query before: other parameters stay ignored

    raw = fields.Boolean(load_default=False)
