"""A PlanExe run through the API: a zip upload (multipart or base64 JSON), then POST /api/plans/<id>/decomposition
with all=true; bad input is a 4xx that writes nothing."""

from __future__ import annotations

import base64
import io

import pytest

from tests.orchestrator.test_planexe_runs import REALISTIC, USED, run_files, zipped
from tests.web.helpers import assert_error
from tests.web.test_decompose_api import auth, n_plans  # noqa: F401 (auth is a fixture)


def upload(client, headers: dict, content: bytes, name: str = "PlanExe_run.zip"):
    return client.post("/api/plans/import", data={"files": [(io.BytesIO(content), name)]}, headers=headers,
                       content_type="multipart/form-data")


@pytest.mark.parametrize("macos", [False, True])
def test_a_zip_upload_imports_the_whole_run(client, auth, db, macos: bool) -> None:  # noqa: F811
    resp = upload(client, auth["mark"], zipped(run_files(), macos=macos))
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["counts"] == {"tasks": 7, "subtasks": 35, "dependencies": 8, "undecomposed_subtasks": 35}
    assert body["files"] == [f"PlanExe_run.zip/run/{name}" for name in USED]
    assert any(w.startswith("6 durations for unknown tasks skipped") for w in body["warnings"])
    subtasks = [s for t in body["plan"]["tasks"] for s in t["subtasks"]]
    assert all(s["action"] == "manual" and s["decomposed"] is False for s in subtasks)


def test_a_zip_as_base64_json(client, auth) -> None:  # noqa: F811
    content = base64.b64encode(zipped(run_files())).decode()
    resp = client.post("/api/plans/import", json={"files": {"run.zip": content}}, headers=auth["mark"])
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["counts"]["subtasks"] == 35


def test_bad_zips_are_422_and_write_nothing(client, auth, db) -> None:  # noqa: F811
    level2 = (REALISTIC / "018-5-wbs_level2.json").read_bytes()
    before = n_plans(db)
    for content in (zipped({"../018-5-wbs_level2.json": level2}, folder=""), b"PK\x03\x04broken",
                    zipped({"readme.txt": "nothing here"})):
        assert_error(upload(client, auth["mark"], content), 422, "validation_failed")
    assert_error(client.post("/api/plans/import", json={"files": {"run.zip": "%%%"}}, headers=auth["mark"]),
                 422, "validation_failed")
    assert n_plans(db) == before


def test_decompose_all_applies_the_confident_and_proposes_the_rest(client, auth) -> None:  # noqa: F811
    plan_id = upload(client, auth["mark"], zipped(run_files())).get_json()["plan"]["id"]
    url = f"/api/plans/{plan_id}/decomposition"
    resp = client.post(url, json={"all": True, "agent_id": "agent_larry"}, headers=auth["mark"])
    assert resp.status_code == 200, resp.get_json()
    report = resp.get_json()
    applied, proposals = report["counts"]["applied"], report["counts"]["proposals"]
    assert applied > 0 and proposals > 0 and applied + proposals == 35 and report["apply_threshold"] == 0.75
    plan = client.get(f"/api/plans/{plan_id}", headers=auth["mark"]).get_json()
    subtasks = [s for t in plan["tasks"] for s in t["subtasks"]]
    assert sum(not s["decomposed"] for s in subtasks) == proposals
    assert {p["task_id"] for p in report["proposals"]} == {s["id"] for s in subtasks if not s["decomposed"]}

    assert_error(client.post(url, json={"all": False, "agent_id": "agent_larry"}, headers=auth["mark"]), 422)
    assert_error(client.post(url, json={"all": True}, headers=auth["mark"]), 422)
    assert_error(client.post(url, json={"all": True, "agent_id": "agent_other"}, headers=auth["mark"]), 422)
    assert_error(client.post(url, json={"all": True, "agent_id": "agent_larry"}, headers=auth["eve"]), 404)
    assert_error(client.post(url, json={"all": True, "agent_id": "agent_larry"}, headers=auth["agent"]), 403)
    assert_error(client.post("/api/plans/plan_nope/decomposition", json={"all": True, "agent_id": "agent_larry"},
                             headers=auth["mark"]), 404)
