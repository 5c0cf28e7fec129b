"""What an agent's event may carry (guide section 2)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from orchestrator.state_machine import AGENT_EVENT_TYPES
from web.schemas.fields import UTCDateTime

MAX_BATCH = 1000


class EventSchema(Schema):
    agent_id = fields.String(required=True, validate=validate.Length(1, 128))
    agent_timestamp = UTCDateTime(load_default=None, allow_none=True)
    event_type = fields.String(required=True, validate=validate.OneOf(sorted(AGENT_EVENT_TYPES)))
    task_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 128))
    subtask_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 128))
    status = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(
        ["running", "success", "error", "blocked", "paused"]))
    message = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=10_000))
    output_data = fields.Dict(keys=fields.String(), load_default=None, allow_none=True)
    error_type = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=120))
    error_message = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=10_000))
    human_review_required = fields.Boolean(load_default=False)
    blocking = fields.Boolean(load_default=False)
    suggestions = fields.List(fields.String(validate=validate.Length(max=2_000)), load_default=None,
                              allow_none=True, validate=validate.Length(max=50))
    next_step_options = fields.List(
        fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9_]{0,63}$", error="Use snake_case option names.")),
        load_default=None, allow_none=True, validate=validate.Length(max=20))
    idempotency_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200))

    @validates_schema
    def _names_its_work(self, data: dict[str, Any], **_: Any) -> None:
        if data["event_type"] != "heartbeat" and not (data.get("task_id") or data.get("subtask_id")):
            raise ValidationError("Name the subtask the event is about.", "task_id")
        if data["event_type"] == "task_error" and not (data.get("error_message") or data.get("message")):
            raise ValidationError("Say what went wrong.", "error_message")


class BatchItemSchema(EventSchema):
    # Only an agent's liveness heartbeat may leave it out: every other event is about an execution.
    execution_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 128))

    @validates_schema
    def _names_its_execution(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("execution_id") is None and data["event_type"] != "heartbeat":
            raise ValidationError("Name the execution the event is about.", "execution_id")


class HeartbeatSchema(Schema):
    """`POST /api/agents/{id}/heartbeat`: the agent is alive, between executions too."""

    agent_timestamp = UTCDateTime(load_default=None, allow_none=True)
    message = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=10_000))
    idempotency_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 200))


class BatchSchema(Schema):
    events = fields.List(fields.Nested(BatchItemSchema), required=True, validate=validate.Length(1, MAX_BATCH))
