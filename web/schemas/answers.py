"""What the API answers: dump-only schemas that document the bodies views build as dicts.

They are never loaded: the OpenAPI document (web/openapi.py) is their one reader, and the contract test
(schemathesis) checks the live answers against it. They name every field a body has today; more may
come (`additionalProperties` stays open), so a client ignores fields it does not know.
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields

from orchestrator.state_machine import VALID_TRANSITIONS

STATUSES = list(VALID_TRANSITIONS)


def _text(**kw: object) -> fields.String:
    return fields.String(allow_none=True, **kw)


def _when(required: bool = False) -> fields.String:
    """A UTC instant as ISO 8601 (`...Z`), or null when it has not happened."""
    return fields.String(allow_none=True, required=required, metadata={"format": "date-time"})


class Answer(Schema):
    class Meta:
        unknown = INCLUDE  # open to fields added later


class ErrorDetailSchema(Answer):
    code = fields.String(required=True, metadata={"description": "stable, snake_case: what went wrong"})
    message = fields.String(required=True, metadata={"description": "for people; may change"})
    details = fields.Raw(metadata={"description": "the fields at fault (422: field → messages), ids, limits"})


class ErrorSchema(Schema):
    """Every error, with any status: `{"error": {"code", "message", "details"}}` (web/errors.py)."""

    error = fields.Nested(ErrorDetailSchema, required=True)


# -- agents ---------------------------------------------------------------------------------------

class HoldingSchema(Answer):
    execution_id = fields.String()
    subtask_id = fields.String()


class AgentAnswerSchema(Answer):
    id = fields.String(required=True)
    name = fields.String(required=True)
    role = _text()
    capabilities = fields.List(fields.Raw(), metadata={"description": 'action names or {"action", "params"}'})
    webhook_url = _text()
    poll_endpoint = _text()
    is_active = fields.Boolean()
    last_heartbeat = _when()
    created_at = _when()
    signing = fields.String(metadata={"enum": ["required", "optional"]})
    rate_limit_per_minute = fields.Integer(allow_none=True)
    holding = fields.List(fields.Nested(HoldingSchema), metadata={"description": "subtasks it holds (listings)"})


class AgentCreatedSchema(AgentAnswerSchema):
    api_key = fields.String(required=True, metadata={"description": "shown once"})
    signing_secret = fields.String(required=True, metadata={"description": "shown once"})


class AgentListSchema(Answer):
    agents = fields.List(fields.Nested(AgentAnswerSchema), required=True)


class SigningSecretSchema(Answer):
    agent_id = fields.String(required=True)
    signing = fields.String(required=True)
    signing_secret = fields.String(required=True, metadata={"description": "shown once"})


# -- plans ----------------------------------------------------------------------------------------

class PlanSubtaskAnswerSchema(Answer):
    id = fields.String(required=True)
    title = fields.String()
    action = fields.String()
    params = fields.Dict()
    decomposed = fields.Boolean(metadata={"description": "false for a manual placeholder"})
    prerequisite_subtask_ids = fields.List(fields.String())


class PlanTaskAnswerSchema(Answer):
    id = fields.String(required=True)
    title = fields.String()
    description = _text()
    prerequisite_task_ids = fields.List(fields.String())
    subtasks = fields.List(fields.Nested(PlanSubtaskAnswerSchema))


class PlanAnswerSchema(Answer):
    id = fields.String(required=True)
    title = _text()
    goal = _text()
    context = fields.Dict()
    owner_id = fields.String()
    source = _text()
    created_at = _when()
    tasks = fields.List(fields.Nested(PlanTaskAnswerSchema), required=True)


class PlanSummarySchema(Answer):
    id = fields.String(required=True)
    title = _text()
    goal = _text()
    source = _text()
    created_at = _when()


class PlanListSchema(Answer):
    plans = fields.List(fields.Nested(PlanSummarySchema), required=True)
    next_cursor = _text(required=True, metadata={"description": "the next page's `cursor`; null on the last"})


class PlanImportedSchema(Answer):
    plan = fields.Nested(PlanAnswerSchema, required=True)
    warnings = fields.List(fields.Raw())
    files = fields.List(fields.Raw(), metadata={"description": "the files read"})
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())


# -- executions -----------------------------------------------------------------------------------

class ProgressSchema(Answer):
    tasks_completed = fields.Integer()
    tasks_total = fields.Integer()
    percent = fields.Integer()
    current_task_id = _text()
    current_task_title = _text()


class ExecutionSummarySchema(Answer):
    execution_id = fields.String(required=True)
    plan_id = fields.String(required=True)
    agent_id = _text()
    owner_id = fields.String()
    status = fields.String(required=True, metadata={"enum": STATUSES})
    status_message = _text()
    progress = fields.Nested(ProgressSchema)
    pause_requested = fields.Boolean()
    cancel_requested = fields.Boolean()
    created_at = _when()
    started_at = _when()
    completed_at = _when()
    updated_at = _when()


class SubtaskStateSchema(Answer):
    """What the execution page and its timeline both show of a subtask."""

    subtask_id = fields.String(required=True)
    title = fields.String()
    status = fields.String()
    attempt = fields.Integer()
    max_attempts = fields.Integer()
    not_before = _when()


class ExecutionSubtaskAnswerSchema(SubtaskStateSchema):
    action = fields.String()
    agent_id = _text()
    error = fields.Raw(allow_none=True)
    result_data = fields.Raw(allow_none=True, metadata={"description": "masked unless ?raw=true"})
    waiting_on = fields.Integer(allow_none=True)
    started_at = _when()
    completed_at = _when()


class ExecutionTaskAnswerSchema(Answer):
    task_id = fields.String(required=True)
    title = fields.String()
    phase_id = _text()
    phase_title = _text()
    status = fields.String()
    progress_percent = fields.Integer(allow_none=True)
    subtasks_completed = fields.Integer(allow_none=True)
    subtasks_total = fields.Integer(allow_none=True)
    error_message = _text()
    suggestions = fields.List(fields.String(), allow_none=True)
    next_step_options = fields.List(fields.String(), allow_none=True)
    started_at = _when()
    completed_at = _when()
    subtasks = fields.List(fields.Nested(ExecutionSubtaskAnswerSchema))


class ExecutionDetailSchema(ExecutionSummarySchema):
    tasks = fields.List(fields.Nested(ExecutionTaskAnswerSchema), required=True)


class ExecutionListSchema(Answer):
    executions = fields.List(fields.Nested(ExecutionSummarySchema), required=True)
    next_cursor = _text(required=True)


class EventLogSchema(Answer):
    events = fields.List(fields.Dict(), required=True, metadata={"description": "newest first; masked unless raw"})
    next_before = _text(required=True, metadata={"description": "the next page's `before`; null on the last"})
    archived = fields.Boolean()
    archived_at = _when()
    archived_events = fields.Integer(allow_none=True)
    archive_location = _text(metadata={"description": "admins only"})


class AttemptSchema(Answer):
    started_at = _when()
    ended_at = _when()
    outcome = _text()


class TimelineSubtaskSchema(SubtaskStateSchema):
    task_id = fields.String()
    attempts = fields.List(fields.Nested(AttemptSchema))


class TimelineSchema(Answer):
    execution_id = fields.String(required=True)
    created_at = _when()
    started_at = _when()
    completed_at = _when()
    subtasks = fields.List(fields.Nested(TimelineSubtaskSchema), required=True)


# -- agents' work and events ----------------------------------------------------------------------

class ClaimSchema(Answer):
    """The poll's 200: the subtask to do now (`next_task`), or only force_pause / force_cancel."""

    work_available = fields.Boolean(required=True)
    execution_id = _text(required=True)
    plan_id = _text()
    next_task = fields.Dict(allow_none=True, metadata={
        "description": "task_id, title, action, params, timeout_hours, retry_policy, attempt, max_attempts, "
                       "context {plan_goal, previous_tasks, upcoming_tasks}"})
    force_pause = fields.Boolean()
    force_cancel = fields.Boolean()
    redelivered = fields.Boolean(metadata={"description": "the claim was answered before and not yet reported on"})


class EventAppliedSchema(Answer):
    """An event the worker applied within the wait: its outcome."""

    event_id = fields.String(required=True)
    execution_id = _text()


class EventAcceptedSchema(Answer):
    event_id = fields.String(required=True)
    execution_id = _text()
    status = fields.String(required=True, metadata={"enum": ["accepted"]})
    status_url = fields.String(required=True)


class BatchAcceptedItemSchema(Answer):
    event_id = fields.String(required=True)
    execution_id = _text()
    duplicate = fields.Boolean()
    status_url = fields.String()


class BatchAcceptedSchema(Answer):
    accepted = fields.Integer(required=True)
    events = fields.List(fields.Nested(BatchAcceptedItemSchema), required=True)


class EventStateSchema(Answer):
    event_id = fields.String(required=True)
    state = fields.String(required=True, metadata={"enum": ["pending", "applied", "rejected"]})
    outcome = fields.Dict()


# -- decomposition --------------------------------------------------------------------------------

class DecompositionAnswerSchema(Answer):
    task_id = fields.String(required=True)
    decomposition_confidence = fields.Float()
    decomposed_subtasks = fields.List(fields.Dict())
    execution_sequence = fields.List(fields.String())
    notes = _text()
    warnings = fields.List(fields.String())
    applied = fields.Boolean(metadata={"description": "with apply: whether it was stored"})
    proposal = fields.Boolean()
    apply_threshold = fields.Float()


class StoredDecompositionSchema(Answer):
    plan_id = fields.String(required=True)
    task = fields.Nested(PlanTaskAnswerSchema, required=True)


class PlanDecompositionReportSchema(Answer):
    plan_id = fields.String(required=True)
    apply_threshold = fields.Float()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    applied = fields.List(fields.Raw())
    proposals = fields.List(fields.Raw())
    skipped = fields.List(fields.Raw())


# -- admins, users and tokens ---------------------------------------------------------------------

class DeadLetterSchema(Answer):
    id = fields.String(required=True)
    event_id = _text()
    execution_id = _text()
    agent_id = _text()
    shard = fields.Integer(allow_none=True)
    reason = _text()
    deliveries = fields.Integer(allow_none=True)
    failed_at = fields.Raw(allow_none=True)
    payload_bytes = fields.Integer()


class DeadLetterListSchema(Answer):
    dead_letters = fields.List(fields.Nested(DeadLetterSchema), required=True)
    total = fields.Integer(required=True)


class DeadLetterRequeuedSchema(Answer):
    requeued = fields.Nested(DeadLetterSchema, required=True)


class DeadLetterDroppedSchema(Answer):
    dropped = fields.Nested(DeadLetterSchema, required=True)


class UserAnswerSchema(Answer):
    id = fields.String(required=True)
    username = fields.String(required=True)
    display_name = _text()
    email = _text()
    is_admin = fields.Boolean()
    is_active = fields.Boolean()
    created_at = _when()
    deactivated_at = _when()


class MeSchema(UserAnswerSchema):
    token_id = _text(metadata={"description": "the token the request came with; null for the dashboard's session"})


class UserListSchema(Answer):
    users = fields.List(fields.Nested(UserAnswerSchema), required=True)


class TokenAnswerSchema(Answer):
    id = fields.String(required=True)
    name = _text()
    prefix = _text()
    status = fields.String()
    created_at = _when()
    expires_at = _when()
    revoked_at = _when()


class TokenIssuedSchema(TokenAnswerSchema):
    token = fields.String(required=True, metadata={"description": "shown once"})


class TokenListSchema(Answer):
    tokens = fields.List(fields.Nested(TokenAnswerSchema), required=True)


class StreamTokenSchema(Answer):
    token = fields.String(required=True, metadata={"description": "opens WS /api/stream and "
                                                                  "WS /api/executions/{id}/stream as ?token="})
    expires_at = _when(required=True)


class FreeFormSchema(Answer):
    """A JSON object whose fields are described in the operation's text."""
