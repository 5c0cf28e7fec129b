"""Importing a PlanExe output folder (tests/fixtures/planexe, written in PlanExe's documented format)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from orchestrator.errors import ValidationFailed
from orchestrator.models import utcnow
from orchestrator.plan_schema import MANUAL_ACTION, PlanSchema
from orchestrator.planexe import base_name, planexe_to_plan, read_folder
from orchestrator.plans import create_plan, plan_to_dict
from tests.factories import make_user

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "planexe"
T11, T12, T21, T22 = (f"a1b2c3d4-0000-4000-8000-0000000000{n}" for n in ("11", "12", "21", "22"))


def test_fixture_is_in_planexe_shape() -> None:
    files = read_folder(FIXTURE)
    assert "030-report.html" not in files  # only the files the importer knows are read
    for item in json.loads(files["003-wbs_level3.json"]):
        uuid.UUID(item["id"])
        assert "parent_id" in item


def test_folder_import_maps_phases_tasks_subtasks_dependencies_and_durations() -> None:
    data, warnings = planexe_to_plan(read_folder(FIXTURE))
    assert data["title"] == "Dog breeder management system"
    assert data["goal"].startswith("A working breeder management system")
    tasks = {t["id"]: t for t in data["tasks"]}
    assert list(tasks) == [T11, T12, T21, T22]
    assert {t["phase_title"] for t in data["tasks"]} == {"Discovery", "Build"}
    assert [s["title"] for s in tasks[T11]["subtasks"]] == ["Send the interview invitation", "Hold the interview"]
    # Level-3 items are placeholders for human work: nothing imported is decomposed yet.
    assert not any(t["decomposed"] for t in tasks.values())
    first = tasks[T11]["subtasks"][0]
    assert first["action"] == MANUAL_ACTION and first["params"] == {
        "description": "Email Carol to book a slot", "assignee_role": "email", "resources_needed": ["email"]}
    assert "placeholders" in tasks[T11]["decomposition_notes"]
    assert "without level-3" in tasks[T12]["decomposition_notes"]
    assert tasks[T12]["prerequisite_task_ids"] == [T11]
    assert tasks[T21]["prerequisite_task_ids"] == [T12]  # the unknown id is dropped
    assert tasks[T11]["prerequisite_task_ids"] == []  # would close the cycle T11 → T21 → T12 → T11
    assert tasks[T22]["prerequisite_task_ids"] == [T21]  # a level-3 id stands for its task
    assert tasks[T11]["estimated_hours"] == 24 and tasks[T12]["estimated_hours"] == 12
    text = "\n".join(warnings)
    assert "99999999-0000-4000-8000-000000000000" in text  # unknown dependency
    assert "cycle" in text
    assert "explanations" in text  # mismatched id/explanation arrays
    assert "deadbeef" in text  # level-3 item with an unknown parent
    assert "77777777" in text  # duration of an unknown task
    PlanSchema().load(data)


def test_imported_plan_is_stored(db) -> None:
    data, _ = planexe_to_plan(read_folder(FIXTURE))
    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        plan = create_plan(s, owner.id, PlanSchema().load(data), utcnow(), source="planexe")
        stored = plan_to_dict(plan)
    assert stored["source"] == "planexe" and len(stored["tasks"]) == 4
    assert [t["decomposed"] for t in stored["tasks"]] == [False] * 4
    assert [s["decomposed"] for s in stored["tasks"][0]["subtasks"]] == [False, False]


def test_prefixes_do_not_matter() -> None:
    files = {f"9{name}": content for name, content in read_folder(FIXTURE).items()}
    assert base_name("021-task_dependencies_raw.json") == "task_dependencies_raw.json"
    assert base_name("run/018-5-wbs_level2.json") == "wbs_level2.json"  # PlanExe's two-part prefixes
    assert base_name("018-3-wbs_level1_project_title.json") == "wbs_level1_project_title.json"
    assert planexe_to_plan(files)[0]["tasks"][1]["prerequisite_task_ids"] == [T11]


def test_project_tree_alone_is_enough() -> None:
    tree = {"wbs_project": {"id": str(uuid.uuid4()), "description": "Tree plan", "extra_fields": {},
                            "task_children": [{"id": "p1", "description": "Phase", "task_children": [
                                {"id": "t1", "description": "Do it", "task_children": [
                                    {"id": "s1", "description": "Step"}]}]}]}}
    data, _ = planexe_to_plan({"012-wbs_project_level1_and_level2_and_level3.json": json.dumps(tree)})
    assert data["title"] == "Tree plan"
    assert data["tasks"][0]["subtasks"][0]["id"] == "s1"


def test_bad_input_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="not valid JSON"):
        planexe_to_plan({"002-wbs_level2.json": "{not json"})
    with pytest.raises(ValidationFailed, match="No work breakdown"):
        planexe_to_plan({"019-task_dependencies_raw.json": "{}"})
    with pytest.raises(ValidationFailed, match="shape"):
        planexe_to_plan({"002-wbs_level2.json": json.dumps([{"major_phase_title": "no id"}])})
    with pytest.raises(ValidationFailed, match="does not exist"):
        read_folder(tmp_path / "missing")


def test_a_duration_too_large_for_hours_is_skipped_with_a_warning() -> None:
    files = read_folder(FIXTURE)
    durations = json.loads(files["021-task_durations.json"])
    durations[0]["days_realistic"] = 1e308  # times 8 hours is infinite
    files["021-task_durations.json"] = json.dumps(durations)
    data, warnings = planexe_to_plan(files)
    task = next(t for t in data["tasks"] if t["id"] == durations[0]["task_id"])
    assert task.get("estimated_hours") is None and any("1e+308" in w for w in warnings)
