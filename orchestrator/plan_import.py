"""Plan import: PlanExe output files or our own plan file → plan data the plan schema has loaded.

The plans API's import endpoint and `orchestrator plans import` both read through here; nothing is
written, so a refused import leaves no trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.payload_limits import check_storable
from orchestrator.plan_files import format_for, load_plan_text
from orchestrator.plan_schema import PlanSchema
from orchestrator.planexe import looks_like_planexe, planexe_to_plan

FORMATS = ("planexe", "plan")

_plan = PlanSchema()


def plan_data_from_files(files: Mapping[str, str | bytes], fmt: str | None,
                         ) -> tuple[dict[str, Any], list[str], str]:
    """(plan data, warnings, source) from `files` ({name: content}); `fmt` is one of FORMATS, or None
    to let PlanExe's file names decide.

    Raises ValidationFailed (UnstorableValue for a NUL, a 2**70, NaN... naming the file and field) or
    marshmallow's ValidationError.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}.", format=fmt)
    fmt = fmt or ("planexe" if looks_like_planexe(list(files)) else "plan")
    if fmt == "planexe":
        data, warnings = planexe_to_plan(files)
        source = "planexe"
    else:
        if len(files) != 1:
            raise ValidationFailed("A plan file import takes exactly one file.", files=sorted(files))
        (name, content), = files.items()
        data, warnings, source = load_plan_text(content, format_for(name), name), [], "file"
    # The files were checked as parsed; this covers what the PlanExe conversion derived from them.
    check_storable(data)
    return _plan.load(data), warnings, source
