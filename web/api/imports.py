"""Importing plans: PlanExe output files or our own plan file, as multipart files or JSON.

JSON: {"format": "planexe" | "plan", "files": {filename: content}}; multipart: one or more file parts
(any field name) and an optional "format" field. Without a format, PlanExe file names decide. A PlanExe
run may come as a zip of its folder: a multipart part, or in JSON a "*.zip" file whose content is base64
(a JSON string holds at most 1 MiB, so larger zips go as multipart). The answer names the files read and
counts tasks, subtasks and dependencies.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate

from orchestrator.models import utcnow
from orchestrator.plan_import import FORMATS, plan_data_from_files
from orchestrator.plans import create_plan, plan_to_dict
from web.auth import current_principal, require_user
from web.openapi import doc
from web.schemas.answers import PlanImportedSchema

bp = Blueprint("imports", __name__, url_prefix="/api")


class ImportSchema(Schema):
    format = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(FORMATS))
    files = fields.Dict(keys=fields.String(validate=validate.Length(1, 255)), values=fields.String(),
                        required=True, validate=validate.Length(min=1))


_import = ImportSchema()
# The multipart form, for the OpenAPI document: any file parts, and an optional format field.
_MULTIPART = {"type": "object", "properties": {"format": {"type": "string", "enum": list(FORMATS)}},
              "additionalProperties": {"type": "string", "format": "binary"}}


@bp.post("/plans/import")
@doc("Import a PlanExe run or a plan file as a new plan", body=ImportSchema, answers={201: PlanImportedSchema},
     extra_body={"multipart/form-data": {"schema": _MULTIPART}})
@require_user
def import_plan() -> ResponseReturnValue:
    if request.files:
        files = {f.filename or f"file{i}": f.read() for i, (_, f) in enumerate(request.files.items(multi=True))}
        fmt = request.form.get("format") or None
    else:
        body = _import.load(request.get_json() or {})
        files, fmt = body["files"], body["format"]
    imported = plan_data_from_files(files, fmt)
    with current_app.extensions["db"].unit_of_work() as s:
        plan = create_plan(s, current_principal().id, imported.data, utcnow(), source=imported.source)
        body = plan_to_dict(plan)
    return jsonify({"plan": body, "warnings": imported.warnings, "files": imported.files,
                    "counts": imported.counts()}), 201, {"Location": f"/api/plans/{body['id']}"}
