"""Our own plan file format: the plans API's body as YAML or JSON (documented in docs/plan-format.md).

`dump_plan` writes what `plan_to_dict` returns minus the fields the server owns (owner, creation time,
source) and minus nulls, so that `load_plan_text(dump_plan(p))` can be imported again unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import ValidationFailed
from orchestrator.payload_limits import check_storable

SERVER_FIELDS = ("owner_id", "created_at", "source")
FORMATS = ("yaml", "json")


class _PlanLoader(yaml.SafeLoader):
    """YAML's safe loader, except that an unquoted date (`due: 2024-05-01`) stays the text written.

    A plan is JSON data: a date object could not be stored as it is, and turning it back into text
    could change how it reads (`2024-05-01 10:00` would come back as `2024-05-01 10:00:00`). An explicit
    `!!timestamp`, `!!binary` or `!!set` is refused by `check_storable`, naming the field.
    """


_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def format_for(filename: str | None) -> str | None:
    suffix = Path(filename or "").suffix.lower()
    return {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)


def load_plan_text(text: str | bytes, fmt: str | None = None, name: str = "plan file") -> dict[str, Any]:
    """The plan data in `text`; ValidationFailed (naming the file) when it is not a YAML/JSON object.

    Anything that parses but could not be stored (a NUL, an integer past 64 bits, NaN, a YAML date
    tagged !!timestamp...) is refused here, naming the file and the field: see `check_storable`.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationFailed(f"{name} is not UTF-8 text.", file=name) from exc
    what = "JSON" if fmt == "json" else "YAML or JSON"
    try:
        # yaml.load with a SafeLoader subclass is as safe as yaml.safe_load: no Python objects are built.
        data = json.loads(text) if fmt == "json" else yaml.load(text, Loader=_PlanLoader)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValidationFailed(f"{name} is not valid {what}: {str(exc).splitlines()[0]}", file=name) from exc
    except RecursionError as exc:  # both parsers recurse per level of nesting
        raise ValidationFailed(f"{name} is not valid {what}: it nests too deeply.", file=name) from exc
    check_storable(data, origin=name)
    if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "goal" not in data:
        data = data["plan"]  # a file may wrap the plan as {"plan": {...}}
    if not isinstance(data, dict):
        raise ValidationFailed(f"{name} must hold one plan object (goal, tasks...).", file=name)
    for key in SERVER_FIELDS:
        data.pop(key, None)
    return data


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def exportable(plan_dict: dict[str, Any]) -> dict[str, Any]:
    return _without_nulls({k: v for k, v in plan_dict.items() if k not in SERVER_FIELDS})


def dump_plan(plan_dict: dict[str, Any], fmt: str = "yaml") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    data = exportable(plan_dict)
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
