"""The built-in decomposer: a library of YAML templates, one per kind of work, in `templates/`.

A template has `keywords` (matched in the task's title, weight 2, and description, weight 1), `roles`
(matched in assignee_role, weight 1) and `steps`. A step's params may hold `{placeholders}` filled from
the task and the plan context (names, emails, phones, addresses, topics...); a param whose value cannot
be found is left null and counted as missing. `{{x}}` stays as a literal `{x}` for the agent to resolve.
A step whose action the agent lacks is replaced by its `fallback` when the agent has that action, else
dropped; dropping a required step lowers confidence, an `optional: true` one does not.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from orchestrator.decomposition import DecompositionRequest, DecompositionResult, normalise_subtasks, subtask_suffix
from orchestrator.decomposition.confidence import ConfidenceInputs, compute_confidence, template_match_base
from orchestrator.ids import child_id

TEMPLATE_DIR = Path(__file__).with_name("templates")
_PLACEHOLDER = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"\+?\d[\d ().-]{7,}\d")
_CSV = re.compile(r"[\w./-]+\.csv\b")
_LEADING_WORDS = {"understand", "her", "his", "their", "the", "a", "an", "about", "discuss", "review", "cover",
                  "learn", "explore", "including", "our", "your", "its", "current", "on", "of", "and", "research",
                  "investigate", "document", "write", "describe"}


@cache
def load_templates(directory: Path = TEMPLATE_DIR) -> tuple[dict[str, Any], ...]:
    out = []
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data.setdefault("name", path.stem)
        out.append(data)
    return tuple(out)


def _words_hit(text: str, keywords: list[str]) -> int:
    text = text.lower()
    return sum(1 for kw in keywords if re.search(r"\b" + re.escape(kw.lower()), text))


def match_template(task: dict[str, Any], templates: tuple[dict[str, Any], ...] | None = None,
                   ) -> tuple[dict[str, Any] | None, float]:
    """The best-matching template and its weighted keyword hits (0 and None when nothing matches)."""
    best: tuple[dict[str, Any] | None, float] = (None, 0.0)
    for tpl in templates or load_templates():
        hits = (2 * _words_hit(task.get("title") or "", tpl.get("keywords") or [])
                + _words_hit(task.get("description") or "", tpl.get("keywords") or [])
                + min(1, _words_hit(task.get("assignee_role") or "", tpl.get("roles") or [])))
        if hits > best[1]:
            best = (tpl, float(hits))
    return best


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _first(ctx: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if ctx.get(k) not in (None, "", []):
            return ctx[k]
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def topics_from(description: str) -> list[str]:
    """'Understand her breeding records, customer management, puppy tracking workflows' → the three topics."""
    parts = [p.strip(" .") for p in re.split(r",|;|\band\b|\n", description) if p.strip(" .")]
    topics = []
    for part in parts:
        words = part.split()
        while words and words[0].lower() in _LEADING_WORDS:
            words.pop(0)
        if words:
            topic = " ".join(words)
            topics.append(topic[0].upper() + topic[1:])
    return topics[:10]


def extract_context(request: DecompositionRequest) -> dict[str, Any]:
    """Values the placeholders may use; a key is absent when nothing in the request supplies it."""
    task, ctx = request.task, request.plan_context or {}
    text = _strings(ctx) + [task.get("description") or "", task.get("title") or ""]
    values: dict[str, Any] = {
        "goal": ctx.get("goal"), "goal_lower": (ctx.get("goal") or "").lower() or None,
        "industry": ctx.get("industry"), "business_type": ctx.get("business_type"),
        "target_customer": ctx.get("target_customer"), "task_title": task.get("title"),
        "task_slug": _slug(task.get("title") or task.get("task_id") or "task"),
        "today": datetime.now(UTC).strftime("%Y%m%d"),
    }
    person = _first(ctx, "contact_name", "contact", "customer_name", "client", "target_customer", "stakeholder", "name")
    if isinstance(person, str):
        name = re.split(r"[(,;]", person)[0].strip()
        values["contact_name"] = name or None
        values["contact_first_name"] = name.split()[0] if name else None
        values["contact_slug"] = _slug(name.split()[0]) if name else None
        if (paren := re.search(r"\(([^),]+)", person)) and not ctx.get("organisation"):
            values["organisation"] = paren.group(1).strip()
    values["organisation"] = _first(ctx, "organisation", "organization", "company", "business_name") or values.get(
        "organisation")
    emails = [m for s in text for m in _EMAIL.findall(s)]
    values["contact_email"] = _first(ctx, "contact_email", "email") or (emails[0] if emails else None)
    phones = [m for s in text for m in _PHONE.findall(s)]
    values["contact_phone"] = _first(ctx, "contact_phone", "phone") or (phones[0] if phones else None)
    values["address"] = _first(ctx, "address", "location", "venue")
    csvs = [m for s in text for m in _CSV.findall(s)]
    values["csv_path"] = _first(ctx, "csv_path", "csv", "file") or (csvs[0] if csvs else None)
    topics = _first(ctx, "topics", "required_topics")
    if isinstance(topics, str):
        topics = topics_from(topics)
    topics = topics or topics_from(task.get("description") or "")
    values["topics"] = topics or None
    values["topic"] = ", ".join(topics) if topics else task.get("title")
    values["sources"] = _first(ctx, "sources")
    return {k: v for k, v in values.items() if v not in (None, "", [])}


def fill(value: Any, values: dict[str, Any], missing: list[str]) -> Any:
    """Substitute placeholders; a string that is one placeholder takes the raw value (a list stays a list)."""
    if isinstance(value, dict):
        return {k: fill(v, values, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values, missing) for v in value]
    if not isinstance(value, str):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        name = whole.group(1)
        if name not in values:
            missing.append(name)
            return None
        return values[name]
    absent = [m for m in _PLACEHOLDER.findall(value) if m not in values]
    if absent:
        missing.extend(absent)
    out = _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), f"<{m.group(1)}>")), value)
    return out.replace("{{", "{").replace("}}", "}")


class TemplateDecomposer:
    name = "template"

    def __init__(self, templates: tuple[dict[str, Any], ...] | None = None) -> None:
        self.templates = templates or load_templates()

    def decompose(self, request: DecompositionRequest) -> DecompositionResult:
        template, hits = match_template(request.task, self.templates)
        task_id = request.task_id
        if template is None:
            return DecompositionResult(
                task_id=task_id, decomposition_confidence=0.0, decomposed_subtasks=[], execution_sequence=[],
                notes="No decomposition template matches this task.",
                warnings=["No template matches this task's title, description or role; decompose it by hand."],
                decomposer="template")
        result, _ = self.decompose_with(template, hits, request)
        return result

    def decompose_with(self, template: dict[str, Any], hits: float, request: DecompositionRequest,
                       ) -> tuple[DecompositionResult, list[str]]:
        """The result, and the actions the template plans before capabilities are applied (for agreement)."""
        caps, task_id = set(request.capabilities), request.task_id
        values = extract_context(request)
        warnings: list[str] = []
        raw: list[dict[str, Any]] = []
        required_missing = 0
        planned = sum(1 for s in template["steps"] if not s.get("optional"))
        step_missing: dict[str, list[str]] = {}
        for step in template["steps"]:
            chosen = step
            if step["action"] not in caps and (fb := step.get("fallback")) and fb.get("action") in caps:
                chosen = {**step, **fb}
                warnings.append(f"Step '{step['title']}' uses {fb['action']} instead of {step['action']}, "
                                "which the agent lacks.")
            elif step["action"] not in caps and not step.get("optional"):
                required_missing += 1
            missing: list[str] = []
            raw.append({"subtask_id": step["key"], "title": fill(chosen["title"], values, []),
                        "action": chosen["action"], "params": fill(chosen.get("params") or {}, values, missing),
                        "depends_on": list(step.get("depends_on") or []),
                        "success_criteria": list(step.get("success_criteria") or []),
                        "failure_handling": step.get("failure_handling")})
            step_missing[step["key"]] = missing
        norm = normalise_subtasks(task_id, raw, caps)
        # Optional steps the agent cannot do are dropped quietly; required ones were counted above.
        warnings += [w for w in norm.warnings if not any(
            w.startswith(f"{s['key']} ") and s.get("optional") for s in template["steps"])]
        rename = {s["subtask_id"]: child_id(task_id, subtask_suffix(i)) for i, s in enumerate(norm.subtasks)}
        for s in norm.subtasks:
            s["subtask_id"] = rename[s["subtask_id"]]
            s["depends_on"] = [rename[d] for d in s["depends_on"]]
        warnings = [re.sub(r"^(\w+) \(", lambda m: f"{rename.get(m.group(1), 'Step')} (", w) for w in warnings]
        missing_total = 0
        for key, names in step_missing.items():
            if key in rename and names:
                missing_total += len(names)
                warnings.append(f"{rename[key]}: no value in the plan context for {', '.join(sorted(set(names)))}.")
        confidence = compute_confidence(ConfidenceInputs(
            base=template_match_base(hits), planned=planned, uncovered=required_missing,
            missing_params=missing_total, repairs=norm.repairs, kept=len(norm.subtasks)))
        if not norm.subtasks:
            warnings.append("The agent has none of the actions this kind of work needs.")
        result = DecompositionResult(
            task_id=task_id, decomposition_confidence=confidence, decomposed_subtasks=norm.subtasks,
            execution_sequence=[rename[s] for s in norm.execution_sequence],
            notes=f"{template.get('notes', '')} (template: {template['name']})".strip(), warnings=warnings,
            decomposer=f"template:{template['name']}")
        return result, [s["action"] for s in template["steps"]]
