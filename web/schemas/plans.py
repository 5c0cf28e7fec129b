"""The plans API's body: a plan with tasks and subtasks (also the plan file format)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, pre_load, validate

from orchestrator.ids import ID_PATTERN, ID_RULE

ID = validate.Regexp(rf"^{ID_PATTERN.pattern}\Z", error=f"Use {ID_RULE}.")


def _alias(data: Any, canonical: str) -> Any:
    # "prerequisites" is accepted as a shorter name for the prerequisite ids.
    if isinstance(data, dict) and "prerequisites" in data and canonical not in data:
        data = {**data, canonical: data["prerequisites"]}
        del data["prerequisites"]
    return data


class RetryPolicySchema(Schema):
    max_attempts = fields.Integer(validate=validate.Range(1, 100))
    backoff = fields.String(validate=validate.OneOf(["fixed", "linear", "exponential"]))
    backoff_seconds = fields.Float(validate=validate.Range(0, 7 * 24 * 3600))
    max_backoff_seconds = fields.Float(validate=validate.Range(0, 30 * 24 * 3600))


class SubtaskSchema(Schema):
    id = fields.String(required=True, validate=ID)
    title = fields.String(required=True, validate=validate.Length(1, 500))
    action = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 120))
    params = fields.Dict(keys=fields.String(), load_default=dict)
    timeout_hours = fields.Integer(load_default=24, validate=validate.Range(1, 24 * 365))
    retry_policy = fields.Nested(RetryPolicySchema, load_default=dict)
    prerequisite_subtask_ids = fields.List(fields.String(), load_default=list)
    success_criteria = fields.List(fields.String(), load_default=list)
    failure_handling = fields.String(load_default=None, allow_none=True)

    @pre_load
    def _prerequisites(self, data: Any, **_: Any) -> Any:
        return _alias(data, "prerequisite_subtask_ids")


class TaskSchema(Schema):
    id = fields.String(required=True, validate=ID)
    title = fields.String(required=True, validate=validate.Length(1, 500))
    description = fields.String(load_default="")
    phase_id = fields.String(load_default=None, allow_none=True)
    phase_title = fields.String(load_default=None, allow_none=True)
    assignee_role = fields.String(load_default=None, allow_none=True)
    estimated_hours = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(0, 100_000))
    priority = fields.Integer(load_default=1, validate=validate.Range(1, 1000))
    is_blocking = fields.Boolean(load_default=False)
    decomposed = fields.Boolean()
    decomposition_confidence = fields.Float(allow_none=True, validate=validate.Range(0, 1))
    decomposition_notes = fields.String(allow_none=True)
    prerequisite_task_ids = fields.List(fields.String(), load_default=list)
    subtasks = fields.List(fields.Nested(SubtaskSchema), load_default=list, validate=validate.Length(max=500))

    @pre_load
    def _prerequisites(self, data: Any, **_: Any) -> Any:
        return _alias(data, "prerequisite_task_ids")


class PlanSchema(Schema):
    id = fields.String(load_default=None, allow_none=True, validate=ID)
    title = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=300))
    goal = fields.String(required=True, validate=validate.Length(1, 10_000))
    context = fields.Dict(keys=fields.String(), load_default=dict)
    tasks = fields.List(fields.Nested(TaskSchema), load_default=list, validate=validate.Length(max=2000))
