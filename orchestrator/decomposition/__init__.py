"""Task decomposition (guide section 3): one interface, a template decomposer and an LLM decomposer.

A decomposer turns one task plus its plan context and the agent's capabilities into atomic subtasks
whose actions are all capabilities of the agent, with an execution sequence and a computed confidence
(see `confidence.py`). Its subtasks load through the plan schema (`ProposedSubtaskSchema`), each refused
field repaired and counted (`normalise_subtasks`); a person's decomposition is loaded by
`DecompositionSchema` and refused instead (`operator_decomposition`). `service.py` runs a decomposer for
a stored plan and applies the result; the decomposer's settings are in `orchestrator.settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from marshmallow import ValidationError

from orchestrator.errors import ValidationFailed
from orchestrator.graph import find_cycle, topological_order
from orchestrator.ids import child_id
from orchestrator.plan_schema import ProposedSubtaskSchema


@dataclass(frozen=True)
class DecompositionRequest:
    task: dict[str, Any]  # task_id, title, description, assignee_role
    plan_context: dict[str, Any]
    capabilities: list[str]

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"])


@dataclass
class DecompositionResult:
    task_id: str
    decomposition_confidence: float
    decomposed_subtasks: list[dict[str, Any]]
    execution_sequence: list[str]
    notes: str = ""
    warnings: list[str] = field(default_factory=list)
    decomposer: str = "template"  # which decomposer answered; not part of the guide's response

    def to_response(self) -> dict[str, Any]:
        """The guide's response body, keys in the guide's order."""
        return {
            "task_id": self.task_id,
            "decomposition_confidence": self.decomposition_confidence,
            "decomposed_subtasks": [
                {k: s[k] for k in ("subtask_id", "title", "action", "params", "depends_on", "success_criteria",
                                   "failure_handling") if k in s and not (k == "failure_handling" and s[k] is None)}
                for s in self.decomposed_subtasks
            ],
            "execution_sequence": list(self.execution_sequence),
            "notes": self.notes,
            "warnings": list(self.warnings),
        }


class Decomposer(Protocol):
    name: str

    def decompose(self, request: DecompositionRequest) -> DecompositionResult: ...


def subtask_suffix(i: int) -> str:
    """0 → a, 25 → z, 26 → aa: the guide's task_1_1_a naming, beyond 26 subtasks too."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(97 + r) + out
    return out


@dataclass
class Normalised:
    subtasks: list[dict[str, Any]] = field(default_factory=list)
    execution_sequence: list[str] = field(default_factory=list)
    repairs: int = 0
    uncovered: int = 0
    warnings: list[str] = field(default_factory=list)
    strict: bool = False
    refused: dict[int, list[str]] = field(default_factory=dict)  # input position → fields the schema refused

    def repair(self, message: str, **details: Any) -> None:
        """Count a fix (it lowers confidence); with `strict`, refuse the input instead."""
        if self.strict:
            raise ValidationFailed(message, **details)
        self.repairs += 1
        self.warnings.append(message)


_proposed = ProposedSubtaskSchema()
# What the warning says of a refused field the subtask can run without (without a title or an action it
# cannot, and is dropped); a field not named here is called "not valid".
_IGNORED = {"depends_on": "depends_on must be a list of ids", "params": "params must be an object"}


def _fresh_id(task_id: str, i: int, seen: set[str]) -> str:
    suffix = subtask_suffix(i)
    while child_id(task_id, suffix) in seen:
        suffix += "x"
    return child_id(task_id, suffix)


def _coerced(s: dict[str, Any]) -> dict[str, Any]:
    """`s` in the schema's names, forgiving what decomposers write and mean no harm by: `id` and
    `prerequisite_subtask_ids` for the guide's names, an empty value for an absent one, a padded or
    overlong title, one success criterion (or numbers) for a list of texts, a failure_handling not text."""
    title, criteria, handling = s.get("title"), s.get("success_criteria") or [], s.get("failure_handling")
    return {
        "subtask_id": s.get("subtask_id") or s.get("id"),
        "title": title.strip()[:500] if isinstance(title, str) else title,
        "action": s.get("action"),
        "depends_on": s.get("depends_on", s.get("prerequisite_subtask_ids")) or [],
        "params": s.get("params") or {},
        "success_criteria": [str(c) for c in (criteria if isinstance(criteria, list) else [criteria])],
        "failure_handling": handling if isinstance(handling, str) else None,
    }


def _load(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the loaded subtask, {}) or ({}, the schema's messages by field)."""
    try:
        return _proposed.load(item), {}
    except ValidationError as exc:
        return {}, exc.normalized_messages()


def load_subtasks(task_id: str, raw: list[Any], out: Normalised) -> list[dict[str, Any]]:
    """A decomposer's subtasks, loaded by ProposedSubtaskSchema with each refused field repaired: a subtask
    without a title or an action is dropped; a missing, unusable or repeated id is replaced by a fresh one
    (dependents follow the replacement); any other refused field is left out. Each repair is counted in
    `out` (with `out.strict`, refused instead); `out.refused` records which fields the schema refused."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    renamed: dict[str, str] = {}  # unusable id → its replacement, so that dependents still find it
    for i, s in enumerate(raw):
        item = _coerced(s) if isinstance(s, dict) else {}
        loaded, refused = _load(item)
        if refused:
            out.refused[i] = sorted(refused)
        if "title" in refused or "action" in refused:
            what = "no title" if "title" in refused else "no action an agent could run"
            out.repair(f"Subtask #{i + 1} has {what}; dropped.", index=i)
            continue
        sid = item["subtask_id"]
        if "subtask_id" in refused or sid in seen:
            new = _fresh_id(task_id, i, seen)
            out.repair(f"Subtask #{i + 1} had a missing, duplicate or unusable id ({sid!r}); it is now {new}.",
                       subtask_id=sid)
            if isinstance(sid, str) and "subtask_id" in refused:  # not a duplicate's: which one would they mean?
                renamed.setdefault(sid, new)
            sid = new
        seen.add(sid)
        for name in [f for f in item if f in refused and f != "subtask_id"]:
            out.repair(f"{sid}: {_IGNORED.get(name, f'{name} is not valid')}; ignored.", subtask_id=sid)
            del item[name]
        if refused:
            loaded = _proposed.load({**item, "subtask_id": sid})
        items.append({**loaded, "subtask_id": sid})
    for it in items:
        it["depends_on"] = [renamed.get(d, d) for d in it["depends_on"]]
    return items


def _drop_uncovered(items: list[dict[str, Any]], capabilities: set[str], out: Normalised) -> list[dict[str, Any]]:
    """Drop subtasks whose action the agent lacks; their dependents inherit their prerequisites."""
    deps_of = {it["subtask_id"]: it["depends_on"] for it in items}
    dropped = {it["subtask_id"] for it in items if it["action"] not in capabilities}
    for it in items:
        if it["subtask_id"] in dropped:
            out.uncovered += 1
            out.warnings.append(f"{it['subtask_id']} ({it['title']}) needs action {it['action']!r}, "
                                "which the agent lacks; dropped.")
    if dropped and out.strict:
        raise ValidationFailed("Subtasks use actions the agent lacks.", actions=sorted(
            {str(it["action"]) for it in items if it["subtask_id"] in dropped}))

    def inherited(dep: str, trail: frozenset[str] = frozenset()) -> list[str]:
        if dep not in dropped:
            return [dep]
        if dep in trail:
            return []
        return [x for d in deps_of.get(dep, []) for x in inherited(d, trail | {dep})]

    kept = [it for it in items if it["subtask_id"] not in dropped]
    for it in kept:
        it["depends_on"] = list(dict.fromkeys(x for d in it["depends_on"] for x in inherited(d)))
    return kept


def settle_subtasks(items: list[dict[str, Any]], capabilities: set[str] | None, out: Normalised) -> Normalised:
    """Loaded subtasks made runnable: actions among `capabilities` (others dropped, their dependents
    inheriting their prerequisites), prerequisites known and acyclic, in an execution sequence. Each fix is
    a repair; with `out.strict`, any fix raises ValidationFailed instead."""
    for it in items:
        it["depends_on"] = list(dict.fromkeys(it["depends_on"]))
    if capabilities is not None:
        items = _drop_uncovered(items, capabilities, out)
    known = {it["subtask_id"] for it in items}
    for it in items:
        unknown = [d for d in it["depends_on"] if d not in known or d == it["subtask_id"]]
        if unknown:
            out.repair(f"{it['subtask_id']} depends on unknown ids {unknown}; those were removed.",
                       unknown_prerequisites={it["subtask_id"]: unknown})
            it["depends_on"] = [d for d in it["depends_on"] if d not in unknown]
    graph = {it["subtask_id"]: it["depends_on"] for it in items}
    while cycle := find_cycle(graph):
        # The cycle is [a, b, ..., a] with a depending on b: dropping that one edge breaks it.
        out.repair(f"Dependencies formed a cycle {cycle}; {cycle[0]} no longer waits for {cycle[1]}.", cycle=cycle)
        graph[cycle[0]] = [d for d in graph[cycle[0]] if d != cycle[1]]
    by_id = {it["subtask_id"]: it for it in items}
    for sid, deps in graph.items():
        by_id[sid]["depends_on"] = deps
    out.subtasks = items
    out.execution_sequence = topological_order(graph)
    return out


def normalise_subtasks(task_id: str, raw: list[Any], capabilities: set[str] | None, *,
                       strict: bool = False) -> Normalised:
    """A decomposer's subtasks loaded (`load_subtasks`) and settled (`settle_subtasks`); with `strict`,
    any repair raises ValidationFailed instead."""
    out = Normalised(strict=strict)
    return settle_subtasks(load_subtasks(task_id, raw, out), capabilities, out)


def operator_decomposition(task_id: str, data: dict[str, Any], capabilities: set[str] | None,
                           ) -> DecompositionResult:
    """A person's decomposition, as `DecompositionSchema` loaded it, checked strictly: an action the agent
    lacks (when `capabilities` are given), an unknown prerequisite or a cycle is refused, never repaired."""
    norm = settle_subtasks(data["decomposed_subtasks"], capabilities, Normalised(strict=True))
    return DecompositionResult(task_id=task_id, decomposition_confidence=data["decomposition_confidence"],
                               decomposed_subtasks=norm.subtasks, execution_sequence=norm.execution_sequence,
                               notes=data["notes"], decomposer="operator")
