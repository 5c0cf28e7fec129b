"""How sure a decomposition is, computed from what happened while making it (never the model's say-so).

    confidence = clamp(base
                       - UNCOVERED_WEIGHT * uncovered / planned
                       - MISSING_PARAM_PENALTY * missing_params
                       - REPAIR_PENALTY * repairs, 0, 1)

    base      template decomposer: the template's match score, min(1, 0.4 + 0.2 * weighted keyword hits)
                                   (a title hit weighs 2, a description or role hit 1);
              LLM decomposer:      0.6 + 0.4 * agreement, agreement being the Jaccard overlap of the
                                   model's actions with the matching template's; 0.7 when no template matches.
    uncovered steps the work needs whose action the agent lacks (dropped); planned = all steps planned.
    missing   parameters that could not be filled from the task or the plan context.
    repairs   fixes made to make the result valid: unknown or duplicate ids, dependency cycles, bad fields.

A decomposition with no subtask left has confidence 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

UNCOVERED_WEIGHT = 0.9
MISSING_PARAM_PENALTY = 0.05
REPAIR_PENALTY = 0.1
NO_TEMPLATE_LLM_BASE = 0.7


def template_match_base(weighted_hits: float) -> float:
    """A template matched by one title keyword and one role keyword (3 weighted hits) is a full match."""
    return min(1.0, 0.4 + 0.2 * weighted_hits) if weighted_hits > 0 else 0.0


def agreement_base(model_actions: Iterable[str], template_actions: Iterable[str] | None) -> float:
    if template_actions is None:
        return NO_TEMPLATE_LLM_BASE
    a, b = set(model_actions), set(template_actions)
    if not a and not b:
        return NO_TEMPLATE_LLM_BASE
    return 0.6 + 0.4 * len(a & b) / len(a | b)


@dataclass
class ConfidenceInputs:
    base: float
    planned: int = 0  # steps the work needs (kept + dropped)
    uncovered: int = 0  # of those, steps dropped because the agent lacks the action
    missing_params: int = 0
    repairs: int = 0
    kept: int | None = None  # subtasks in the result; 0 forces confidence 0


def compute_confidence(inputs: ConfidenceInputs) -> float:
    if inputs.kept == 0:
        return 0.0
    value = inputs.base
    if inputs.planned:
        value -= UNCOVERED_WEIGHT * inputs.uncovered / inputs.planned
    value -= MISSING_PARAM_PENALTY * inputs.missing_params
    value -= REPAIR_PENALTY * inputs.repairs
    return round(max(0.0, min(1.0, value)), 2)
