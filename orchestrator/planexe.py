"""Import a PlanExe run (the format: docs/planexe-format.md) as plan data for `create_plan`.

A run comes as its output folder, a zip of one (`unpack_zip`, macOS's `__MACOSX` noise skipped) or a
single WBS file. Files are matched by the name after the numeric prefix (`018-5-wbs_level2.json`,
`021-task_dependencies_raw.json`), since the prefixes change between versions.
Mapping: one phase per level-2 item, one task per entry of its `subtasks`, one subtask per level-3 item
whose `parent_id` is that task, in the file's order. A level-3 item names human work, not an agent action:
it becomes a placeholder subtask (action `MANUAL_ACTION`, so `decomposed: false`) whose params hold its
description, its resources as `assignee_role` and its estimate, until `decompose --all` replaces it by
executable subtasks. Its task stays `decomposed: false` as well, as does a task without level-3 items.
Dependencies become `prerequisite_task_ids`; those naming unknown ids or closing a cycle are dropped.
`days_realistic * 8` becomes `estimated_hours` (of the task, or of the level-3 item it names). Warnings
of one kind come as one line, with the ids concerned.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.ids import ID_RULE, invalid_ids
from orchestrator.payload_limits import check_storable
from orchestrator.plan_schema import MANUAL_ACTION

# "018-5-" in 018-5-wbs_level2.json, "021-" in 021-task_dependencies_raw.json.
_PREFIX = re.compile(r"^(?:\d+[-_])+")
LEVEL1 = "wbs_level1.json"
LEVEL2 = "wbs_level2.json"
LEVEL3 = "wbs_level3.json"
TREES = ("wbs_project_level1_and_level2_and_level3.json", "wbs_project_level1_and_level2.json")
DEPENDENCIES = "task_dependencies_raw.json"
DURATIONS = "task_durations.json"
KNOWN = (LEVEL1, LEVEL2, LEVEL3, *TREES, DEPENDENCIES, DURATIONS)
HOURS_PER_DAY = 8
# A zip is unpacked in memory: a run holds ~150 files and a few MB of JSON, so these leave room while a
# zip bomb (a few KB that inflate to GBs, or millions of entries) is refused before it costs much.
MAX_ZIP_MEMBERS = 5000
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
# Ids a grouped warning lists before "… (+n more)".
SHOWN_IDS = 8


def base_name(filename: str) -> str:
    return _PREFIX.sub("", PurePosixPath(filename.replace("\\", "/")).name)


def looks_like_planexe(names: list[str]) -> bool:
    return any(base_name(n) in KNOWN for n in names)


def is_zip(name: str, content: str | bytes) -> bool:
    return name.lower().endswith(".zip") or (isinstance(content, bytes) and content[:4] == b"PK\x03\x04")


def read_folder(path: Path) -> dict[str, str]:
    """The folder's files that the importer knows (or the one file itself); ValidationFailed when unreadable."""
    if not path.exists():
        raise ValidationFailed(f"{path} does not exist.", path=str(path))
    paths = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    try:
        return {p.name: p.read_text(encoding="utf-8") for p in paths if base_name(p.name) in KNOWN}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"Cannot read {path}: {exc}", path=str(path)) from exc


def _member_path(name: str, member: str) -> PurePosixPath:
    path = PurePosixPath(member.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ValidationFailed(f"{name} holds an unsafe path {member!r}; refused.", file=name, member=member[:200])
    return path


def _macos_noise(path: PurePosixPath) -> bool:
    return "__MACOSX" in path.parts or path.name.startswith("._") or path.name == ".DS_Store"


def unpack_zip(name: str, content: bytes) -> dict[str, bytes]:
    """The PlanExe files in zip `content`, as {"name/member path": bytes}; macOS's `__MACOSX/` and `._`
    entries are skipped. Refused (ValidationFailed): an unreadable zip, more than MAX_ZIP_MEMBERS entries,
    a path that is absolute or holds `..`, and known files inflating past MAX_UNPACKED_BYTES in all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValidationFailed(f"{name} is not a readable zip: {exc}", file=name) from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ValidationFailed(f"{name} holds {len(members)} entries; at most {MAX_ZIP_MEMBERS} are read.",
                                   file=name, max_members=MAX_ZIP_MEMBERS)
        out: dict[str, bytes] = {}
        left = MAX_UNPACKED_BYTES
        for info in members:
            path = _member_path(name, info.filename)
            if info.is_dir() or _macos_noise(path) or base_name(path.name) not in KNOWN:
                continue
            try:
                with archive.open(info) as member:
                    # Read past the limit by one byte at most: the sizes the zip declares may lie.
                    data = member.read(left + 1)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, OSError, EOFError) as exc:
                raise ValidationFailed(f"{name}: cannot read {info.filename}: {exc}", file=name) from exc
            left -= len(data)
            if left < 0:
                raise ValidationFailed(f"{name} unpacks to more than {MAX_UNPACKED_BYTES:,} bytes of PlanExe "
                                       "files; refused.", file=name, max_bytes=MAX_UNPACKED_BYTES)
            out[f"{name}/{path}"] = data
    return out


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


def files_used(files: Mapping[str, str | bytes]) -> list[str]:
    """The names in `files` that the conversion reads, in their order."""
    return [name for name in files if base_name(name) in KNOWN]


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


def _level2_from_level3(level3: list[Any]) -> list[dict[str, Any]]:
    """With only wbs_level3 at hand: one task per parent its items name, in one phase."""
    parents = list(dict.fromkeys(item["parent_id"] for item in level3))
    return [{"id": "level3-only", "major_phase_title": "Work packages",
             "subtasks": [{"id": p, "description": f"Work package {n}"} for n, p in enumerate(parents, 1)]}]


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
        level3 = parsed.get(LEVEL3) or level3
    elif isinstance(parsed.get(LEVEL3), list) and parsed[LEVEL3]:
        level1, level3 = parsed.get(LEVEL1) or {}, parsed[LEVEL3]
        level2 = _level2_from_level3(level3)
    else:
        raise ValidationFailed("No work breakdown found: the import needs wbs_level2.json, wbs_level3.json or "
                               "the WBS project tree (wbs_project_level1_and_level2*.json).",
                               files=sorted(files), missing=[LEVEL2])
    if not isinstance(level1, dict) or not isinstance(level2, list) or not isinstance(level3, list):
        raise ValidationFailed("wbs_level1 must be an object, wbs_level2 and wbs_level3 lists.")
    return level1, level2, level3


class Warnings:
    """Warnings grouped by kind: one line per kind, naming the ids concerned."""

    def __init__(self) -> None:
        self._notes: list[str] = []
        self._groups: dict[tuple[str, str], list[str]] = {}

    def note(self, text: str) -> None:
        """A warning of a kind that happens once per import."""
        self._notes.append(text)

    def add(self, singular: str, plural: str, item: Any) -> None:
        """`singular`/`plural` describe the kind ("duration for an unknown task skipped", "durations for
        unknown tasks skipped"); `item` (an id, "id → id") is listed after them."""
        self._groups.setdefault((singular, plural), []).append(str(item))

    def lines(self) -> list[str]:
        out = list(self._notes)
        for (singular, plural), items in self._groups.items():
            shown = ", ".join(items[:SHOWN_IDS]) + (f" … (+{len(items) - SHOWN_IDS} more)"
                                                    if len(items) > SHOWN_IDS else "")
            out.append(f"1 {singular}: {shown}" if len(items) == 1 else f"{len(items)} {plural}: {shown}")
        return out


@dataclass
class _Breakdown:
    """The plan's tasks as the WBS gives them, found by their id or by the id of one of their level-3 items."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    task_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    level3_parent: dict[str, str] = field(default_factory=dict)
    level3_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: Warnings = field(default_factory=Warnings)

    def as_task(self, ref: Any) -> str | None:
        return ref if ref in self.task_by_id else self.level3_parent.get(ref)


def _placeholder(item: dict[str, Any]) -> dict[str, Any]:
    """A level-3 item as a subtask no agent runs yet: its action is MANUAL_ACTION."""
    resources = item.get("resources_needed")
    resources = [str(r) for r in resources] if isinstance(resources, list) else ([resources] if resources else [])
    params: dict[str, Any] = {"description": item.get("description") or ""}
    if resources:
        params |= {"assignee_role": _title(", ".join(resources), 200), "resources_needed": resources}
    return {"id": item["id"], "title": _title(item.get("name") or item["id"], 500), "action": MANUAL_ACTION,
            "params": params, "prerequisite_subtask_ids": []}


def _breakdown(level2: list[Any], level3: list[Any]) -> _Breakdown:
    """One task per entry of a phase's `subtasks`, one placeholder subtask per level-3 item whose parent it is."""
    wbs = _Breakdown()
    for p_num, phase in enumerate(level2, 1):
        phase_id = phase["id"]
        for entry in phase.get("subtasks") or []:
            if entry["id"] in wbs.task_by_id:
                wbs.warnings.add("task listed twice in wbs_level2 (the second skipped)",
                                 "tasks listed twice in wbs_level2 (the second skipped)", entry["id"])
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
            wbs.warnings.add("level-3 item with an unknown parent skipped", "level-3 items with unknown parents "
                             "skipped", f"{item.get('id')} (parent {item.get('parent_id')})")
            continue
        if item["id"] in wbs.level3_by_id or item["id"] in wbs.task_by_id:
            wbs.warnings.add("level-3 id seen twice (the second skipped)", "level-3 ids seen twice (the second "
                             "skipped)", item["id"])
            continue
        subtask = _placeholder(item)
        parent["subtasks"].append(subtask)
        wbs.level3_parent[item["id"]] = parent["id"]
        wbs.level3_by_id[item["id"]] = subtask
    return wbs


def _add_dependency(wbs: _Breakdown, graph: dict[str, list[str]], dependent: str, ref: Any) -> None:
    pre = wbs.as_task(ref)
    if pre is None:
        wbs.warnings.add("dependency on an unknown id dropped", "dependencies on unknown ids dropped",
                         f"{dependent} → {ref}")
    elif pre == dependent or pre in graph[dependent]:
        return
    elif _reaches(graph, pre, dependent):
        wbs.warnings.add("dependency that would close a cycle dropped",
                         "dependencies that would close a cycle dropped", f"{dependent} → {pre}")
    else:
        graph[dependent].append(pre)


def _add_dependencies(wbs: _Breakdown, deps: Any) -> None:
    """task_dependencies_raw as prerequisite_task_ids; unknown ids and cycle-closing ones are dropped."""
    graph: dict[str, list[str]] = {t["id"]: t["prerequisite_task_ids"] for t in wbs.tasks}
    details = deps.get("task_dependency_details") if isinstance(deps, dict) else None
    if deps is not None and not isinstance(details, list):
        wbs.warnings.note("task_dependencies_raw has no task_dependency_details list; no dependencies imported.")
    for entry in details or []:
        if not isinstance(entry, dict):
            continue
        dependent = wbs.as_task(entry.get("dependent_task_id"))
        ids = entry.get("depends_on_task_id_list") or []
        explanations = entry.get("depends_on_task_explanation_list") or []
        if dependent is None:
            wbs.warnings.add("dependency entry of an unknown task skipped",
                             "dependency entries of unknown tasks skipped", entry.get("dependent_task_id"))
            continue
        if not isinstance(ids, list):
            ids = []
        if len(ids) != len(explanations):
            wbs.warnings.add("task whose dependency ids and explanations differ in number (ids imported, "
                             "explanations ignored)", "tasks whose dependency ids and explanations differ in "
                             "number (ids imported, explanations ignored)", dependent)
        for ref in ids:
            _add_dependency(wbs, graph, dependent, ref)


def _add_durations(wbs: _Breakdown, durations: Any) -> None:
    """`days_realistic * 8` as the estimated_hours of the task, or of the level-3 item, it names."""
    if durations is not None and not isinstance(durations, list):
        wbs.warnings.note("task_durations is not a list; no durations imported.")
        return
    for d in durations or []:
        if not isinstance(d, dict):
            continue
        ref, days = d.get("task_id"), d.get("days_realistic")
        task, item = wbs.task_by_id.get(ref), wbs.level3_by_id.get(ref)
        if task is None and item is None:
            wbs.warnings.add("duration for an unknown task skipped", "durations for unknown tasks skipped", ref)
            continue
        if not isinstance(days, int | float) or days < 0 or not math.isfinite(days * HOURS_PER_DAY):
            wbs.warnings.add("duration whose days_realistic is not a number skipped",
                             "durations whose days_realistic is not a number skipped", f"{ref} ({days!r})")
            continue
        if task is not None:
            task["estimated_hours"] = round(days * HOURS_PER_DAY)
        else:
            item["params"]["estimated_hours"] = round(days * HOURS_PER_DAY)


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
    if LEVEL2 not in parsed and not any(t in parsed for t in TREES):
        wbs.warnings.note("No wbs_level2.json or project tree: one task per parent the level-3 items name, "
                          "titled 'Work package N'.")
    for task in wbs.tasks:
        task["decomposed"] = False
        task["decomposition_notes"] = (
            "Imported from PlanExe: its level-3 items are manual placeholders; decompose them before running."
            if task["subtasks"] else "Imported from PlanExe without level-3 items: decompose before running.")
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
    return plan, wbs.warnings.lines()
