"""The API's OpenAPI 3 document, built from the marshmallow schemas the views validate with.

Each view says what it takes and answers with `@doc(...)` (kept on the view, next to its `.load`);
`build_document` walks the app's URL map, so the document has exactly the app's routes, and adds the
errors every view may answer from what it takes: a body (400, 413, 415, 422), a query (422), ids in the
path (404), a principal (401, 403 or 404 for admins' endpoints, 429 rate limits), Redis and the
database (503). Served at `/api/openapi.json`, browsable at `/api/docs` (Swagger UI's assets come with
the flask-swagger-ui package: nothing is fetched from elsewhere).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from flask_swagger_ui import get_swaggerui_blueprint
from marshmallow import Schema

from orchestrator.ids import ID_PATTERN
from web.schemas.answers import ErrorSchema

F = TypeVar("F", bound=Callable[..., Any])

DOCUMENT_URL = "/api/openapi.json"
DOCS_URL = "/api/docs"
ERROR = "error"  # an answer whose body is the error shape
_DOC_ATTR = "openapi_doc"

SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "operator": [{"operatorToken": []}, {"dashboardSession": []}],
    "admin": [{"operatorToken": []}, {"dashboardSession": []}],
    "agent": [{"agentKey": [], "agentSignature": []}],
}
SECURITY["agent_or_operator"] = SECURITY["agent"] + SECURITY["operator"]

_SECURITY_ERRORS = {"operator": (401, 403, 429), "admin": (401, 404, 429), "agent": (401, 403, 429),
                    "agent_or_operator": (401, 403, 429)}

_ERROR_RESPONSES = {
    400: ("BadRequest", "The body does not parse as JSON (`bad_request`), or a dashboard write lacks its CSRF "
                        "token."),
    401: ("Unauthorized", "No valid token or session (`unauthorized`); for agents also `signature_required`, "
                          "`signature_invalid`, `signature_expired`, `nonce_reused`."),
    403: ("Forbidden", "The principal may not do this: an agent's key on an operator's endpoint, an agent "
                       "acting for another, raw data of someone else's execution."),
    404: ("NotFound", "No such resource, or not one this principal may see (admins' endpoints answer 404 to "
                      "anyone else; an id outside the id alphabet matches no route)."),
    409: ("Conflict", "The request conflicts with the current state (a transition not allowed, an id taken, "
                      "`not_holder`)."),
    413: ("PayloadTooLarge", "The body is larger than MAX_BODY_BYTES (`request_entity_too_large`, "
                            "`details.max_bytes`)."),
    415: ("UnsupportedMediaType", "The body is not `application/json` (nor, where the operation takes it, a "
                                  "multipart form with files)."),
    422: ("Unprocessable", "The request parses but breaks a schema (`invalid_request`, `details` maps fields to "
                          "messages), a storage limit (`unstorable_value`) or a domain rule "
                          "(`validation_failed`)."),
    429: ("RateLimited", "Over the rate limit (`rate_limited`); nothing was done. See `Retry-After`."),
    503: ("Unavailable", "Redis or the database is out of reach (`unavailable`); retry after `Retry-After`."),
}

_SECURITY_SCHEMES = {
    "operatorToken": {"type": "http", "scheme": "bearer", "description":
                      "An operator's API token: `Authorization: Bearer <token>` (`orchestrator tokens issue`, "
                      "`POST /api/me/tokens`)."},
    "dashboardSession": {"type": "apiKey", "in": "cookie", "name": "session", "description":
                         "The dashboard's login session; a write must also carry the page's CSRF token in "
                         "`X-CSRF-Token`."},
    "agentKey": {"type": "http", "scheme": "bearer", "description":
                 "An agent's API key (issued once at registration): `Authorization: Bearer <api key>`."},
    "agentSignature": {"type": "apiKey", "in": "header", "name": "X-Signature", "description":
                       "Agents also sign each request with their signing secret (unless their `signing` is "
                       "`optional`): `Content-Digest: sha-256=:<base64 SHA-256 of the body>:`, "
                       "`X-Signature-Timestamp: <Unix seconds>`, `X-Signature-Nonce: <16-128 of A-Za-z0-9_->` "
                       "(fresh each request) and `X-Signature: sha256=<hex HMAC-SHA256(secret, canonical)>`, "
                       "where canonical is METHOD, path (and `?query` as sent), timestamp, nonce and the "
                       "Content-Digest value joined by newlines (orchestrator/signing.py; "
                       "`orchestrator_sdk.client.AgentClient` does it)."},
}

_DESCRIPTION = """The Agent Execution System's API. Errors always have the shape
`{"error": {"code", "message", "details"}}`.

Two live streams are WebSockets, outside what OpenAPI describes: `WS /api/executions/{execution_id}/stream`
and `WS /api/stream` (every execution the operator may see). Open them with `?token=` from
`POST /api/tokens/stream`, and `&since=<event id>` to replay what was missed; they send JSON text frames
(`execution_update`, `event` with its `seq`); a revoked grant closes them with 1008, a reader that cannot
keep up with 1013."""

# A rule's variable: <name>, <converter:name> or <converter(args):name>.
_VARIABLE = re.compile(r"<(?:(?P<conv>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Doc:
    summary: str
    answers: dict[int, Any]
    body: Schema | type[Schema] | None = None
    body_required: bool = True
    query: Schema | type[Schema] | None = None
    security: str | None = "operator"
    description: str | None = None  # else the view's docstring
    extra_body: dict[str, Any] = field(default_factory=dict)
    parameters: tuple[dict[str, Any], ...] = ()


def doc(summary: str, *, answers: dict[int, Any], body: Schema | type[Schema] | None = None,
        body_required: bool = True, query: Schema | type[Schema] | None = None, security: str | None = "operator",
        description: str | None = None, extra_body: dict[str, Any] | None = None,
        parameters: Iterable[dict[str, Any]] = ()) -> Callable[[F], F]:
    """Describe a view for the OpenAPI document. `answers` maps each status to its body: a schema,
    `ERROR` (the error shape), None (no body) or an OpenAPI response object; `security` is "operator", "admin", "agent",
    "agent_or_operator" or None; `extra_body` adds content types to the JSON body (multipart)."""
    if security is not None and security not in SECURITY:
        raise ValueError(f"unknown security {security!r}")
    spec = Doc(summary, answers, body, body_required, query, security, description, extra_body or {},
               tuple(parameters))

    def mark(view: F) -> F:
        setattr(view, _DOC_ATTR, spec)
        return view

    return mark


def view_doc(view: Callable[..., Any]) -> Doc | None:
    return getattr(view, _DOC_ATTR, None)


def openapi_path(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """A Flask rule as an OpenAPI path, with its path parameters."""
    params: list[dict[str, Any]] = []

    def replace(m: re.Match[str]) -> str:
        schema: dict[str, Any] = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}
        if m["conv"] == "any":
            schema = {"type": "string", "enum": [a.strip().strip("'\"") for a in m["args"].split(",")]}
        params.append({"in": "path", "name": m["name"], "required": True, "schema": schema})
        return "{" + m["name"] + "}"

    return _VARIABLE.sub(replace, rule), params


def _responses(d: Doc, has_path_params: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, answer in sorted(d.answers.items()):
        if answer is ERROR:
            out[str(status)] = _error_ref(status)
        elif answer is None:
            out[str(status)] = {"description": "No body."}
        elif isinstance(answer, dict):  # a response object as OpenAPI has it (another content type)
            out[str(status)] = answer
        else:
            out[str(status)] = {"description": (answer.__doc__ or "").strip().split("\n")[0] or "OK",
                                "content": {"application/json": {"schema": answer}}}
    implied: set[int] = {503} if d.security is not None else set()
    if d.body is not None:
        implied |= {400, 413, 415, 422}
    if d.query is not None:
        implied.add(422)
    if has_path_params:
        implied.add(404)
    if d.security is not None:
        implied |= set(_SECURITY_ERRORS[d.security])
    for status in sorted(implied):
        out.setdefault(str(status), _error_ref(status))
    if d.query is not None or d.parameters:
        # Refused by the HTTP server before the app (gunicorn: 400 or 414), in its own format.
        out.setdefault("414", {"description": "The request line (the query) is longer than the HTTP server takes."})
    return out


def _error_ref(status: int) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}


def _operation(endpoint: str, d: Doc, view: Callable[..., Any], path_params: list[dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": endpoint, "tags": [endpoint.split(".")[0]], "summary": d.summary,
                          "responses": _responses(d, bool(path_params))}
    description = d.description or (inspect.cleandoc(view.__doc__) if view.__doc__ else None)
    if description:
        op["description"] = description
    params = list(path_params) + list(d.parameters)
    if d.query is not None:
        params.append({"in": "query", "schema": d.query})
    if params:
        op["parameters"] = params
    if d.body is not None:
        op["requestBody"] = {"required": d.body_required,
                             "content": {"application/json": {"schema": d.body}, **d.extra_body}}
    op["security"] = SECURITY[d.security] if d.security else []
    return op


def documented_rules(app: Flask) -> Iterable[tuple[Any, Callable[..., Any]]]:
    """The app's HTTP rules (WebSockets are not OpenAPI's) with their view functions."""
    for rule in app.url_map.iter_rules():
        if getattr(rule, "websocket", False) or rule.endpoint == "static":
            continue
        yield rule, app.view_functions[rule.endpoint]


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every view that has a `@doc`."""
    spec = APISpec(title="Agent Execution System API", version="1", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()], info={"description": _DESCRIPTION})
    spec.components.schema("Error", schema=ErrorSchema)
    for status, (name, text) in _ERROR_RESPONSES.items():
        headers = {"Retry-After": {"schema": {"type": "integer"}}} if status in (429, 503) else None
        spec.components.response(name, {"description": text, "headers": headers or {},
                                         "content": {"application/json": {"schema": ErrorSchema}}})
    for name, scheme in _SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    paths: dict[str, dict[str, Any]] = {}
    for rule, view in sorted(documented_rules(app), key=lambda rv: rv[0].rule):
        d = view_doc(view)
        if d is None:
            continue
        path, path_params = openapi_path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, d, view, path_params)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return _ecma_patterns(spec.to_dict())


def _ecma_patterns(node: Any) -> Any:
    """Patterns in the dialect JSON Schema reads (ECMA 262): our validators end with Python's `\\Z`."""
    if isinstance(node, dict):
        return {k: (re.sub(r"\\Z$", "$", v) if k == "pattern" and isinstance(v, str) else _ecma_patterns(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ecma_patterns(v) for v in node]
    return node


bp = Blueprint("openapi", __name__)


@bp.get(DOCUMENT_URL)
def document() -> ResponseReturnValue:
    ext = current_app.extensions
    if "openapi_document" not in ext:  # built on first use: the URL map is complete by then
        ext["openapi_document"] = build_document(current_app._get_current_object())  # type: ignore[attr-defined]
    return jsonify(ext["openapi_document"])


def init_openapi(app: Flask) -> None:
    """Serve the document and Swagger UI (its assets from the flask-swagger-ui package)."""
    app.register_blueprint(bp)
    app.register_blueprint(get_swaggerui_blueprint(DOCS_URL, DOCUMENT_URL, config={
        "app_name": "Agent Execution System API", "layout": "BaseLayout", "deepLinking": True}))
