"""Plan data's one validation: plans, tasks, subtasks and retry policies, as marshmallow schemas.

Every way such data comes in loads through these: the plans API's body and our plan file (the same
shape, `PlanSchema`), a PlanExe import once converted (`orchestrator.plan_import`), a decomposer's
subtasks, whether from a template or a language model's reply (`ProposedSubtaskSchema`, repaired field
by field where it is refused: `orchestrator.decomposition.load_subtasks`), and an operator's stored
decomposition (`DecompositionSchema`). A decomposition uses guide section 3's names (`subtask_id`,
`depends_on`, `task_id`), a plan its own (`id`, `prerequisite_subtask_ids`); the rules every other field
keeps are written once, in the bases both shapes share.

What needs the whole plan (ids unique, prerequisites known, no cycles) is checked by
`orchestrator.plans.validate_plan_data`.
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate

from orchestrator.ids import ID_PATTERN, ID_RULE

ID = validate.Regexp(rf"^{ID_PATTERN.pattern}\Z", error=f"Use {ID_RULE}.")
# The action of a subtask that names human work no agent action covers yet (a PlanExe level-3 item): such
# a subtask is `decomposed: false`, only an agent that declares this action may claim it
# (orchestrator/scheduling.py), and `decompose --all` replaces it by executable subtasks.
MANUAL_ACTION = "manual"


def _alias(data: Any, alias: str, canonical: str) -> Any:
    if isinstance(data, dict) and alias in data and canonical not in data:
        data = {**data, canonical: data[alias]}
        del data[alias]
    return data


class RetryPolicySchema(Schema):
    max_attempts = fields.Integer(validate=validate.Range(1, 100))
    backoff = fields.String(validate=validate.OneOf(["fixed", "linear", "exponential"]))
    backoff_seconds = fields.Float(validate=validate.Range(0, 7 * 24 * 3600))
    max_backoff_seconds = fields.Float(validate=validate.Range(0, 30 * 24 * 3600))


class _SubtaskFields(Schema):
    """A subtask's fields that both shapes name alike."""

    title = fields.String(required=True, validate=validate.Length(1, 500))
    action = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 120))
    params = fields.Dict(keys=fields.String(), load_default=dict)
    success_criteria = fields.List(fields.String(), load_default=list)
    failure_handling = fields.String(load_default=None, allow_none=True)


class SubtaskSchema(_SubtaskFields):
    id = fields.String(required=True, validate=ID)
    timeout_hours = fields.Integer(load_default=24, validate=validate.Range(1, 24 * 365))
    retry_policy = fields.Nested(RetryPolicySchema, load_default=dict)
    prerequisite_subtask_ids = fields.List(fields.String(), load_default=list)
    # Derived from the action (not MANUAL_ACTION), as plans are read back; accepted so that they load again.
    decomposed = fields.Boolean(load_default=None, allow_none=True)

    @pre_load
    def _prerequisites(self, data: Any, **_: Any) -> Any:
        # "prerequisites" is accepted as a shorter name for the prerequisite ids.
        return _alias(data, "prerequisites", "prerequisite_subtask_ids")

    @post_load
    def _placeholder(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        # `decomposed: false` without an action makes the subtask a placeholder; one that contradicts the
        # action is refused rather than guessed at.
        decomposed = data.pop("decomposed")
        if decomposed is False and data["action"] is None:
            data["action"] = MANUAL_ACTION
        elif decomposed is not None and decomposed != (data["action"] != MANUAL_ACTION):
            raise ValidationError(f"decomposed is false exactly when the action is {MANUAL_ACTION!r}.",
                                  "decomposed")
        return data


class DecomposedSubtaskSchema(_SubtaskFields):
    """A subtask of a decomposition (guide section 3): `subtask_id`, `depends_on` ids of the same task."""

    subtask_id = fields.String(required=True, validate=ID)
    depends_on = fields.List(fields.String(), load_default=list)

    @pre_load
    def _trimmed_title(self, data: Any, **_: Any) -> Any:
        # A decomposition's titles have always been stored trimmed, so a blank one is no title at all.
        if isinstance(data, dict) and isinstance(data.get("title"), str):
            data = {**data, "title": data["title"].strip()}
        return data


class ProposedSubtaskSchema(DecomposedSubtaskSchema):
    """A decomposer's subtask: unlike a person's draft, it must name the action an agent is to run."""

    action = fields.String(required=True, validate=validate.Length(1, 120))


class _TaskFields(Schema):
    """A task's fields that a plan and a decomposition request name alike."""

    title = fields.String(required=True, validate=validate.Length(1, 500))
    description = fields.String(load_default="")
    assignee_role = fields.String(load_default=None, allow_none=True)


class TaskSchema(_TaskFields):
    id = fields.String(required=True, validate=ID)
    phase_id = fields.String(load_default=None, allow_none=True)
    phase_title = fields.String(load_default=None, allow_none=True)
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
        return _alias(data, "prerequisites", "prerequisite_task_ids")


class DecompositionTaskSchema(_TaskFields):
    """The task a decomposition request describes (guide section 3)."""

    task_id = fields.String(required=True, validate=ID)


class PlanSchema(Schema):
    id = fields.String(load_default=None, allow_none=True, validate=ID)
    title = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=300))
    goal = fields.String(required=True, validate=validate.Length(1, 10_000))
    context = fields.Dict(keys=fields.String(), load_default=dict)
    tasks = fields.List(fields.Nested(TaskSchema), load_default=list, validate=validate.Length(max=2000))


class DecompositionSchema(Schema):
    """A decomposition a person stores: checked strictly, never repaired."""

    decomposed_subtasks = fields.List(fields.Nested(DecomposedSubtaskSchema), required=True,
                                      validate=validate.Length(1, 500))
    decomposition_confidence = fields.Float(load_default=1.0, validate=validate.Range(0, 1))
    notes = fields.String(load_default="")

    @pre_load
    def _subtasks(self, data: Any, **_: Any) -> Any:
        # "subtasks" is accepted for "decomposed_subtasks", the guide's name.
        return _alias(data, "subtasks", "decomposed_subtasks")
