"""The OpenAPI document: valid, complete (every /api route is in it), built from the schemas the views
load with, and browsable at /api/docs without anything from outside."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from web.openapi import DOCS_URL, DOCUMENT_URL, documented_rules, openapi_path

# Routes that are not API operations: the document itself, its browsable page, the dashboard's pages.
NOT_OPERATIONS = {"openapi.document", "swagger_ui.show"}


def _document(client) -> dict:
    resp = client.get(DOCUMENT_URL)
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    return resp.get_json()


def undocumented(app, doc: dict) -> list[str]:
    missing = []
    for rule, _view in documented_rules(app):
        if rule.endpoint in NOT_OPERATIONS or rule.endpoint.startswith("dashboard."):
            continue
        path, _ = openapi_path(rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if method.lower() not in doc["paths"].get(path, {}):
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    return sorted(missing)


def test_the_document_is_valid_openapi_3(client):
    doc = _document(client)
    assert doc["openapi"].startswith("3.")
    validate(doc)  # raises on any breach of the OpenAPI 3 specification


def test_every_route_is_documented(app, client):
    missing = undocumented(app, _document(client))
    assert not missing, "add @doc(...) (web/openapi.py) to: " + ", ".join(missing)
    assert "/healthz" in _document(client)["paths"]


def test_a_route_without_doc_is_found(app, client):
    app.add_url_rule("/api/forgotten/<thing_id>", "forgotten", lambda thing_id: "", methods=["PUT"])
    assert undocumented(app, _document(client)) == ["PUT /api/forgotten/<thing_id> (forgotten)"]


def test_websocket_streams_are_described_in_the_text(app, client):
    doc = _document(client)
    sockets = [r.rule for r in app.url_map.iter_rules() if getattr(r, "websocket", False)]
    assert sockets
    for rule in sockets:
        path, _ = openapi_path(rule)
        assert path not in doc["paths"]
        assert f"WS {path}" in doc["info"]["description"]


def test_bodies_and_answers_come_from_the_schemas(client):
    doc = _document(client)
    create = doc["paths"]["/api/executions"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"plan_id", "agent_id", "execution_id"}  # not "id"
    assert schema["required"] == ["plan_id"]
    assert schema["additionalProperties"] is False  # unknown fields are refused (422)
    assert {"201", "400", "401", "413", "422", "503"} <= set(create["responses"])
    assert create["responses"]["422"] == {"$ref": "#/components/responses/Unprocessable"}
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]


def test_security_schemes_say_who_may_call(client):
    doc = _document(client)
    schemes = doc["components"]["securitySchemes"]
    assert {"operatorToken", "agentKey", "agentSignature", "dashboardSession"} <= set(schemes)
    assert "X-Signature-Nonce" in schemes["agentSignature"]["description"]
    poll = doc["paths"]["/api/agents/{agent_id}/work"]["get"]
    assert poll["security"] == [{"agentKey": [], "agentSignature": []}]
    assert {"200", "204", "401", "403", "429"} <= set(poll["responses"])
    users = doc["paths"]["/api/admin/users"]["get"]
    assert "404" in users["responses"]  # non-admins are told admin endpoints do not exist
    assert {"operatorToken": []} in users["security"]


def test_path_ids_keep_the_id_alphabet(client):
    doc = _document(client)
    param = next(p for p in doc["paths"]["/api/plans/{plan_id}"]["get"]["parameters"] if p["name"] == "plan_id")
    pattern = re.compile(param["schema"]["pattern"])
    assert pattern.match("plan-1") and not pattern.match("a:b")
    action = doc["paths"]["/api/admin/users/{user_id}/{action}"]["post"]["parameters"]
    assert next(p for p in action if p["name"] == "action")["schema"]["enum"] == ["activate", "deactivate"]


def test_the_docs_page_is_served_from_here(client):
    resp = client.get(DOCS_URL, follow_redirects=True)
    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert DOCUMENT_URL in page
    scripts = re.findall(r'<script src="([^"]+)"', page) + re.findall(r'href="([^"]+\.css)"', page)
    assert scripts and not [s for s in scripts if "//" in s]  # nothing from a CDN
    for asset in scripts:
        assert client.get(asset).status_code == 200, asset
