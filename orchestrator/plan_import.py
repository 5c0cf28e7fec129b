"""Plan import: a PlanExe run (files, or a zip of them) or our own plan file → plan data the plan schema
has loaded.

The plans API's import endpoint and `orchestrator plans import` both read through here; nothing is
written, so a refused import leaves no trace.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.payload_limits import check_storable
from orchestrator.plan_files import format_for, load_plan_text
from orchestrator.plan_schema import MANUAL_ACTION, PlanSchema
from orchestrator.planexe import files_used, is_zip, looks_like_planexe, planexe_to_plan, unpack_zip

FORMATS = ("planexe", "plan")

_plan = PlanSchema()


@dataclass
class Imported:
    data: dict[str, Any]  # loaded by the plan schema
    source: str  # "planexe" or "file"
    files: list[str]  # the names read (a zip's members as "run.zip/member/path")
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """tasks, subtasks, dependencies (task and subtask prerequisites), and the subtasks not yet
        decomposed (placeholders, MANUAL_ACTION)."""
        tasks = self.data.get("tasks") or []
        subtasks = [s for t in tasks for s in t.get("subtasks") or []]
        return {"tasks": len(tasks), "subtasks": len(subtasks),
                "dependencies": sum(len(t.get("prerequisite_task_ids") or []) for t in tasks)
                + sum(len(s.get("prerequisite_subtask_ids") or []) for s in subtasks),
                "undecomposed_subtasks": sum(1 for s in subtasks if s.get("action") == MANUAL_ACTION)}


def _zip_bytes(name: str, content: str | bytes) -> bytes:
    """A zip's bytes; in a JSON body, which carries text only, a zip comes base64-encoded."""
    if isinstance(content, bytes):
        return content
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed(f"{name} is a zip but not base64 text (a JSON body must encode it).",
                               file=name) from exc


def expand_archives(files: Mapping[str, str | bytes]) -> dict[str, str | bytes]:
    """`files` with each zip replaced by the PlanExe files it holds (`orchestrator.planexe.unpack_zip`)."""
    out: dict[str, str | bytes] = {}
    for name, content in files.items():
        if is_zip(name, content):
            out.update(unpack_zip(name, _zip_bytes(name, content)))
        else:
            out[name] = content
    if not out:
        raise ValidationFailed("The zip holds no PlanExe files (wbs_level2.json, wbs_level3.json, ...).",
                               files=sorted(files))
    return out


def plan_data_from_files(files: Mapping[str, str | bytes], fmt: str | None) -> Imported:
    """The plan in `files` ({name: content}: a PlanExe run's files, zips of runs, or one plan file);
    `fmt` is one of FORMATS, or None to let PlanExe's file names decide.

    Raises ValidationFailed (UnstorableValue for a NUL, a 2**70, NaN... naming the file and field) or
    marshmallow's ValidationError.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}.", format=fmt)
    files = expand_archives(files)
    fmt = fmt or ("planexe" if looks_like_planexe(list(files)) else "plan")
    if fmt == "planexe":
        data, warnings = planexe_to_plan(files)
        imported = Imported(data, "planexe", files_used(files), warnings)
    else:
        if len(files) != 1:
            raise ValidationFailed("A plan file import takes exactly one file.", files=sorted(files))
        (name, content), = files.items()
        imported = Imported(load_plan_text(content, format_for(name), name), "file", [name])
    # The files were checked as parsed; this covers what the PlanExe conversion derived from them.
    check_storable(imported.data)
    imported.data = _plan.load(imported.data)
    return imported
