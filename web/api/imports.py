"""Importing plans: PlanExe output files or our own plan file, as multipart files or JSON.

JSON: {"format": "planexe" | "plan", "files": {filename: content}}; multipart: one or more file parts
(any field name) and an optional "format" field. Without a format, PlanExe file names decide.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from orchestrator.errors import ValidationFailed
from orchestrator.models import utcnow
from orchestrator.payload_limits import check_storable
from orchestrator.plan_files import format_for, load_plan_text
from orchestrator.planexe import looks_like_planexe, planexe_to_plan
from orchestrator.plans import create_plan, plan_to_dict
from web.auth import current_principal, require_user
from web.schemas.plans import PlanSchema

bp = Blueprint("imports", __name__, url_prefix="/api")

FORMATS = ("planexe", "plan")


class ImportSchema(Schema):
    format = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(FORMATS))
    files = fields.Dict(keys=fields.String(validate=validate.Length(1, 255)), values=fields.String(),
                        required=True, validate=validate.Length(min=1))


_import = ImportSchema()
_plan = PlanSchema()


def plan_data_from_files(files: dict[str, str | bytes], fmt: str | None) -> tuple[dict[str, Any], list[str], str]:
    """(plan data validated by the plans API's schema, warnings, source). Shared with the CLI.

    Raises ValidationFailed (UnstorableValue for a NUL, a 2**70, NaN... naming the file and field) or
    marshmallow's ValidationError before anything is written.
    """
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


@bp.post("/plans/import")
@require_user
def import_plan() -> ResponseReturnValue:
    if request.files:
        files = {f.filename or f"file{i}": f.read() for i, (_, f) in enumerate(request.files.items(multi=True))}
        fmt = request.form.get("format") or None
        if fmt is not None and fmt not in FORMATS:
            raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}.", format=fmt)
    else:
        body = _import.load(request.get_json() or {})
        files, fmt = body["files"], body["format"]
    data, warnings, source = plan_data_from_files(files, fmt)
    with current_app.extensions["db"].unit_of_work() as s:
        plan = create_plan(s, current_principal().id, data, utcnow(), source=source)
        body = plan_to_dict(plan)
    return jsonify({"plan": body, "warnings": warnings}), 201, {"Location": f"/api/plans/{body['id']}"}
