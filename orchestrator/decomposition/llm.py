"""The LLM decomposer: an OpenAI-compatible chat-completions endpoint, constrained by a JSON schema.

The reply's subtasks load through the plan schema and are repaired like any decomposer's (actions
outside the agent's capabilities are dropped, unknown or cyclic dependencies removed); confidence comes
from how far the model agrees with the matching template and from those repairs, never from the number
the model states. On a timeout, an HTTP error or a reply that is not the schema's JSON (a subtask
without a usable title or action included), the template decomposer answers instead and the
response's warnings say so.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests

from orchestrator.decomposition import DecompositionRequest, DecompositionResult, normalise_subtasks
from orchestrator.decomposition.confidence import ConfidenceInputs, agreement_base, compute_confidence
from orchestrator.decomposition.templates import TemplateDecomposer, match_template
from orchestrator.errors import UnstorableValue
from orchestrator.payload_limits import check_storable

log = logging.getLogger(__name__)

SUBTASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subtask_id": {"type": "string"},
        "title": {"type": "string"},
        "action": {"type": "string"},
        "params": {"type": "object"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "success_criteria": {"type": "array", "items": {"type": "string"}},
        "failure_handling": {"type": "string"},
    },
    "required": ["subtask_id", "title", "action", "params", "depends_on", "success_criteria"],
}
RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decomposed_subtasks": {"type": "array", "items": SUBTASK_SCHEMA, "minItems": 1},
        "notes": {"type": "string"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["decomposed_subtasks"],
}

SYSTEM_PROMPT = """You decompose one task of a project plan into atomic subtasks an automated agent can execute.
Rules:
- Every subtask's "action" must be exactly one of the agent capabilities given; never invent another.
- Subtask ids are the task id followed by _a, _b, _c ... in execution order.
- "params" holds concrete values taken from the task and the plan context; do not invent e-mail addresses
  or phone numbers: leave such a value null when the context does not give it.
- "depends_on" lists ids of earlier subtasks of this task only.
- Give 2 to 4 "success_criteria" per subtask and a one-line "failure_handling".
Answer with JSON only, matching the schema."""


class InvalidReply(ValueError):
    pass


def parse_reply(body: Any) -> dict[str, Any]:
    """The decomposition inside a chat-completions response body, or InvalidReply. Only its envelope is
    checked here: its subtasks load through the plan schema in `normalise_subtasks`."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidReply("the response has no choices[0].message.content") from exc
    if not isinstance(content, str):
        raise InvalidReply("the message content is not text")
    text = content.strip()
    if text.startswith("```"):  # some servers wrap JSON in a code fence despite response_format
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidReply(f"the message content is not JSON ({exc})") from exc
    try:
        # The reply's params become stored plan data, so a model's NUL or 2**70 is refused like a client's.
        check_storable(data)
    except UnstorableValue as exc:
        raise InvalidReply(f"the JSON cannot be stored: {exc.message}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("decomposed_subtasks"), list):
        raise InvalidReply("the JSON has no decomposed_subtasks list")
    if not data["decomposed_subtasks"]:
        raise InvalidReply("the model returned no subtasks")
    for i, s in enumerate(data["decomposed_subtasks"]):
        if not isinstance(s, dict):
            raise InvalidReply(f"subtask #{i + 1} is not an object")
    return data


class LLMDecomposer:
    name = "llm"

    def __init__(self, base_url: str, api_key: str | None, model: str, *, timeout: float = 30.0,
                 fallback: TemplateDecomposer | None = None, session: requests.Session | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout = timeout
        self.fallback = fallback or TemplateDecomposer()
        self.http = session or requests.Session()

    def _ask(self, request: DecompositionRequest) -> dict[str, Any]:
        user = {"task": request.task, "plan_context": request.plan_context,
                "agent_capabilities": request.capabilities}
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": json.dumps(user, ensure_ascii=False)}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "task_decomposition", "schema": RESPONSE_SCHEMA}},
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        resp = self.http.post(self.url, json=payload, headers=headers, timeout=self.timeout)
        resp.raise_for_status()
        try:
            body = resp.json()
        except (ValueError, RecursionError) as exc:
            raise InvalidReply("the response is not JSON") from exc
        return parse_reply(body)

    def _fall_back(self, request: DecompositionRequest, why: str) -> DecompositionResult:
        log.warning("LLM decomposition of %s failed (%s); using templates", request.task_id, why)
        result = self.fallback.decompose(request)
        result.warnings.insert(0, f"The language model could not be used ({why}); the template decomposer answered.")
        return result

    def decompose(self, request: DecompositionRequest) -> DecompositionResult:
        try:
            data = self._ask(request)
        except requests.Timeout:
            return self._fall_back(request, f"no answer within {self.timeout:g} s")
        except requests.RequestException as exc:
            return self._fall_back(request, f"HTTP error: {type(exc).__name__}: {exc}"[:300])
        except InvalidReply as exc:
            return self._fall_back(request, f"invalid reply: {exc}")

        caps = set(request.capabilities)
        norm = normalise_subtasks(request.task_id, data["decomposed_subtasks"], caps)
        # Other refused fields are repaired; a subtask the schema refuses a title or an action cannot be.
        unusable = [i for i, fields in norm.refused.items() if {"title", "action"} & set(fields)]
        if unusable:
            return self._fall_back(request, f"invalid reply: subtask #{unusable[0] + 1} lacks a title or an action")
        if not norm.subtasks:
            return self._fall_back(request, "none of the model's subtasks uses an action the agent has")
        template, hits = match_template(request.task, self.fallback.templates)
        template_actions = ([s["action"] for s in template["steps"] if s["action"] in caps]
                            if template is not None else None)
        missing = sum(1 for s in norm.subtasks for v in s["params"].values() if v is None)
        confidence = compute_confidence(ConfidenceInputs(
            base=agreement_base([s["action"] for s in norm.subtasks], template_actions),
            planned=len(data["decomposed_subtasks"]), uncovered=norm.uncovered, missing_params=missing,
            repairs=norm.repairs, kept=len(norm.subtasks)))
        model_warnings = [str(w) for w in data.get("warnings") or [] if isinstance(w, str | int | float)]
        return DecompositionResult(
            task_id=request.task_id, decomposition_confidence=confidence, decomposed_subtasks=norm.subtasks,
            execution_sequence=norm.execution_sequence, notes=str(data.get("notes") or ""),
            warnings=model_warnings + norm.warnings, decomposer=f"llm:{self.model}")
