"""Import a PlanExe output folder (the format: docs/planexe-format.md) as plan data for `create_plan`.

Files are matched by the name after the numeric prefix (`019-task_dependencies_raw.json` and
`021-task_dependencies_raw.json` are the same file), since the prefixes change between versions.
Mapping: one phase per level-2 item, one task per entry of its `subtasks`, one subtask per level-3 item
whose `parent_id` is that task. Tasks without level-3 children are marked `decomposed: false` so that
someone decomposes them. Dependencies become `prerequisite_task_ids`; those naming unknown ids or closing
a cycle are dropped with a warning. `days_realistic * 8` becomes `estimated_hours`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.ids import ID_RULE, invalid_ids
from orchestrator.payload_limits import check_storable

_PREFIX = re.compile(r"^\d+[-_]")
LEVEL1 = "wbs_level1.json"
LEVEL2 = "wbs_level2.json"
LEVEL3 = "wbs_level3.json"
TREES = ("wbs_project_level1_and_level2_and_level3.json", "wbs_project_level1_and_level2.json")
DEPENDENCIES = "task_dependencies_raw.json"
DURATIONS = "task_durations.json"
KNOWN = (LEVEL1, LEVEL2, LEVEL3, *TREES, DEPENDENCIES, DURATIONS)
HOURS_PER_DAY = 8


def base_name(filename: str) -> str:
    return _PREFIX.sub("", Path(filename).name)


def looks_like_planexe(names: list[str]) -> bool:
    return any(base_name(n) in KNOWN for n in names)


def read_folder(path: Path) -> dict[str, str]:
    """The folder's files that the importer knows (or the one file itself); ValidationFailed when unreadable."""
    if not path.exists():
        raise ValidationFailed(f"{path} does not exist.", path=str(path))
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    try:
        return {p.name: p.read_text(encoding="utf-8") for p in paths if base_name(p.name) in KNOWN}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"Cannot read {path}: {exc}", path=str(path)) from exc


def _parse(files: Mapping[str, str | bytes]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for name, content in files.items():
        key = base_name(name)
        if key not in KNOWN:
            continue
        if key in parsed:
            raise ValidationFailed(f"Two files are {key}: keep one PlanExe run per import.", file=name)
        try:
            parsed[key] = json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ValidationFailed(f"{name} is not valid JSON: {exc}", file=name) from exc
        check_storable(parsed[key], origin=name)
    return parsed


def _tree_levels(tree: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """level1, level2 and level3 in the flat files' shapes, from the merged project tree."""
    root = tree.get("wbs_project") if isinstance(tree, dict) else None
    if not isinstance(root, dict) or "id" not in root:
        raise ValidationFailed("The WBS project tree has no wbs_project object with an id.")
    level1 = {"id": root["id"], "project_title": root.get("description"),
              "final_deliverable": (root.get("extra_fields") or {}).get("final_deliverable")}
    level2, level3 = [], []
    for phase in root.get("task_children") or []:
        subtasks = []
        for task in phase.get("task_children") or []:
            subtasks.append({"id": task["id"], "description": task.get("description") or ""})
            for item in task.get("task_children") or []:
                level3.append({"id": item["id"], "parent_id": task["id"], "name": item.get("description") or "",
                               "description": (item.get("extra_fields") or {}).get("detailed_description", ""),
                               "resources_needed": (item.get("extra_fields") or {}).get("resources_needed", [])})
        level2.append({"id": phase["id"], "major_phase_title": phase.get("description") or "", "subtasks": subtasks})
    return level1, level2, level3


def _title(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _reaches(graph: dict[str, list[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, []))
    return False


def _levels(parsed: dict[str, Any], files: Mapping[str, str | bytes]) -> tuple[Any, Any, Any]:
    """level1, level2 and level3 from the flat files, or from the project tree where they are missing."""
    tree = next((parsed[t] for t in TREES if t in parsed), None)
    if LEVEL2 in parsed:
        level1 = parsed.get(LEVEL1) or (_tree_levels(tree)[0] if tree is not None else {})
        level2 = parsed[LEVEL2]
        level3 = parsed.get(LEVEL3) or (_tree_levels(tree)[2] if tree is not None else [])
    elif tree is not None:
        level1, level2, level3 = _tree_levels(tree)
        level1 = parsed.get(LEVEL1) or level1
    else:
        raise ValidationFailed("No work breakdown found: the import needs wbs_level2.json or the WBS project "
                               "tree (wbs_project_level1_and_level2*.json).", files=sorted(files), missing=[LEVEL2])
    if not isinstance(level1, dict) or not isinstance(level2, list) or not isinstance(level3, list):
        raise ValidationFailed("wbs_level1 must be an object, wbs_level2 and wbs_level3 lists.")
    return level1, level2, level3


@dataclass
class _Breakdown:
    """The plan's tasks as the WBS gives them, found by their id or by the id of one of their level-3 items."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    task_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    level3_parent: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_task(self, ref: Any) -> str | None:
        return ref if ref in self.task_by_id else self.level3_parent.get(ref)


def _breakdown(level2: list[Any], level3: list[Any]) -> _Breakdown:
    """One task per entry of a phase's `subtasks`, one subtask per level-3 item whose parent it is."""
    wbs = _Breakdown()
    for p_num, phase in enumerate(level2, 1):
        phase_id = phase["id"]
        for entry in phase.get("subtasks") or []:
            if entry["id"] in wbs.task_by_id:
                wbs.warnings.append(f"Task {entry['id']} appears twice in wbs_level2; the second was skipped.")
                continue
            description = entry.get("description") or ""
            phase_title = _title(phase.get("major_phase_title") or f"Phase {p_num}", 300)
            task = {"id": entry["id"], "title": _title(description or entry["id"]), "description": description,
                    "phase_id": phase_id, "phase_title": phase_title, "prerequisite_task_ids": [], "subtasks": []}
            wbs.tasks.append(task)
            wbs.task_by_id[task["id"]] = task
    for item in level3:
        parent = wbs.task_by_id.get(item.get("parent_id"))
        if parent is None:
            wbs.warnings.append(f"Level-3 item {item.get('id')} names an unknown parent {item.get('parent_id')}; "
                                "skipped.")
            continue
        params = {k: item[k] for k in ("description", "resources_needed") if item.get(k)}
        parent["subtasks"].append({"id": item["id"], "title": _title(item.get("name") or item["id"], 500),
                                   "action": None, "params": params, "prerequisite_subtask_ids": []})
        wbs.level3_parent[item["id"]] = parent["id"]
    return wbs


def _add_dependencies(wbs: _Breakdown, deps: Any) -> None:
    """task_dependencies_raw as prerequisite_task_ids; unknown ids and cycle-closing ones are dropped."""
    graph: dict[str, list[str]] = {t["id"]: t["prerequisite_task_ids"] for t in wbs.tasks}
    details = deps.get("task_dependency_details") if isinstance(deps, dict) else None
    if deps is not None and not isinstance(details, list):
        wbs.warnings.append("task_dependencies_raw has no task_dependency_details list; no dependencies imported.")
    for entry in details or []:
        if not isinstance(entry, dict):
            continue
        dependent = wbs.as_task(entry.get("dependent_task_id"))
        ids = entry.get("depends_on_task_id_list") or []
        explanations = entry.get("depends_on_task_explanation_list") or []
        if dependent is None:
            wbs.warnings.append(f"Dependency of unknown task {entry.get('dependent_task_id')} skipped.")
            continue
        if len(ids) != len(explanations):
            wbs.warnings.append(f"Task {dependent}: {len(ids)} dependency ids but {len(explanations)} explanations; "
                                "the ids were imported, the explanations ignored.")
        for ref in ids:
            pre = wbs.as_task(ref)
            if pre is None:
                wbs.warnings.append(f"Task {dependent} depends on unknown id {ref}; dropped.")
            elif pre == dependent or pre in graph[dependent]:
                continue
            elif _reaches(graph, pre, dependent):
                wbs.warnings.append(f"Task {dependent} depending on {pre} would close a cycle; dropped.")
            else:
                graph[dependent].append(pre)


def _add_durations(wbs: _Breakdown, durations: Any) -> None:
    """`days_realistic * 8` as each task's estimated_hours."""
    if durations is not None and not isinstance(durations, list):
        wbs.warnings.append("task_durations is not a list; no durations imported.")
        return
    for d in durations or []:
        if not isinstance(d, dict):
            continue
        task = wbs.task_by_id.get(d.get("task_id"))
        days = d.get("days_realistic")
        if task is None:
            if d.get("task_id") not in wbs.level3_parent:
                wbs.warnings.append(f"Duration for unknown task {d.get('task_id')} skipped.")
            continue
        if not isinstance(days, int | float) or days < 0 or not math.isfinite(days * HOURS_PER_DAY):
            wbs.warnings.append(f"Task {task['id']}: days_realistic {days!r} is not a number; skipped.")
            continue
        task["estimated_hours"] = round(days * HOURS_PER_DAY)


def planexe_to_plan(files: Mapping[str, str | bytes]) -> tuple[dict[str, Any], list[str]]:
    """(plan data in the plans API shape, warnings). Raises ValidationFailed when the WBS is unusable."""
    parsed = _parse(files)
    try:
        level1, level2, level3 = _levels(parsed, files)
        wbs = _breakdown(level2, level3)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValidationFailed(f"The WBS files do not have PlanExe's shape (missing or wrong {exc}).") from exc
    # PlanExe's ids are UUIDs, inside our id alphabet (orchestrator/ids.py); refuse any that are not.
    if bad := invalid_ids([*wbs.task_by_id, *wbs.level3_parent]):
        raise ValidationFailed(f"PlanExe task ids must use only {ID_RULE}.", invalid_ids=bad)
    for task in wbs.tasks:
        task["decomposed"] = bool(task["subtasks"])
        if not task["subtasks"]:
            task["decomposition_notes"] = "Imported from PlanExe without level-3 items: decompose before running."
    _add_dependencies(wbs, parsed.get(DEPENDENCIES))
    _add_durations(wbs, parsed.get(DURATIONS))

    title = level1.get("project_title") or "PlanExe plan"
    plan = {
        "title": _title(title, 300),
        "goal": level1.get("final_deliverable") or title,
        "context": {k: v for k, v in {"planexe_project_id": level1.get("id"),
                                      "final_deliverable": level1.get("final_deliverable")}.items() if v},
        "tasks": wbs.tasks,
    }
    return plan, wbs.warnings
