"""`decompose_plan` (decompose --all): every placeholder and every task without subtasks through the decomposer,
the confident results applied in place with dependencies kept coherent, the rest left as proposals."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.credentials import Principal
from orchestrator.decomposition.service import decompose_plan
from orchestrator.executions import create_execution
from orchestrator.ids import child_id
from orchestrator.models import utcnow
from orchestrator.plan_import import plan_data_from_files
from orchestrator.plan_schema import MANUAL_ACTION, PlanSchema
from orchestrator.planexe import read_folder
from orchestrator.plans import create_plan, get_plan, plan_to_dict, validate_plan_data
from orchestrator.settings import Settings
from tests.factories import make_user
from tests.fixtures.make_planexe_run import build_run
from tests.orchestrator.test_planexe_runs import REALISTIC

# What an office agent can do: every template's actions, but no hands for ovens and paint.
CAPS = ["send_email", "make_phone_call", "schedule_calendar_event", "conduct_interview", "document_findings",
        "analyze_feedback", "web_search", "write_document", "read_csv", "update_crm", "check_calendar",
        "collect_information", "review_document", "analyze_data"]
ADMIN = Principal("user", "cli", is_admin=True)


@pytest.fixture
def settings(migrated: Settings) -> Settings:
    return dataclasses.replace(migrated, decomposer="template", llm_base_url=None,
                               decomposition_apply_threshold=0.75)


def store(db, data: dict) -> str:
    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        return create_plan(s, owner.id, PlanSchema().load(data), utcnow(), source="planexe").id


def read(db, plan_id: str) -> dict:
    with db.reading() as s:
        return plan_to_dict(get_plan(s, ADMIN, plan_id))


def test_the_realistic_run_becomes_executable_where_templates_match(db, settings: Settings) -> None:
    plan_id = store(db, {**plan_data_from_files(read_folder(REALISTIC), None).data, "id": "plan_bakery"})
    report = decompose_plan(db, settings, ADMIN, plan_id, CAPS)
    assert (len(report.applied), len(report.proposals), report.skipped) == (15, 20, [])
    assert all(p["decomposition_confidence"] < 0.75 and p["kind"] == "subtask" for p in report.proposals)
    plan = read(db, plan_id)
    validate_plan_data(plan)
    subtasks = [s for t in plan["tasks"] for s in t["subtasks"]]
    placeholders = [s for s in subtasks if s["action"] == MANUAL_ACTION]
    assert len(placeholders) == 20 and not any(s["decomposed"] for s in placeholders)
    assert {p["task_id"] for p in report.proposals} == {s["id"] for s in placeholders}
    executable = [s for s in subtasks if s["action"] != MANUAL_ACTION]
    assert executable and all(s["action"] in CAPS and s["decomposed"] for s in executable)
    for applied in report.applied:  # each in its placeholder's place, the placeholder gone
        assert applied["subtask_ids"][0] == child_id(applied["id"], "a")
        assert applied["id"] not in {s["id"] for s in subtasks}
    level3 = build_run()["023-2-wbs_level3.json"]
    first_task = plan["tasks"][0]  # its five items are research and a report: all matched
    assert first_task["decomposed"] and first_task["decomposition_confidence"] == 0.85
    assert [s["id"] for s in first_task["subtasks"]][:3] == [child_id(level3[0]["id"], x) for x in "abc"]
    assert not plan["tasks"][3]["decomposed"]  # the fit-out is work for hands

    again = decompose_plan(db, settings, ADMIN, plan_id, CAPS)
    assert (len(again.applied), len(again.proposals)) == (0, 20)


def test_dependencies_stay_coherent(db, settings: Settings) -> None:
    def manual(i: str, title: str, pres: list[str] | None = None) -> dict:
        return {"id": i, "title": title, "decomposed": False, "prerequisites": pres or []}
    plan_id = store(db, {"id": "plan_deps", "goal": "Open a café", "tasks": [
        {"id": "t1", "title": "Prepare", "subtasks": [
            manual("a", "Research competitor pricing"),
            manual("b", "Paint the walls", ["a"]),
            {"id": "c", "title": "Tell the landlord", "action": "send_email", "prerequisites": ["a"]},
            manual("e", "Compare supplier options", ["c"])]},
        {"id": "t2", "title": "Research the coffee market", "prerequisites": ["t1"]}]})
    report = decompose_plan(db, settings, ADMIN, plan_id, CAPS)
    assert sorted((a["kind"], a["id"]) for a in report.applied) == [("subtask", "a"), ("subtask", "e"),
                                                                   ("task", "t2")]
    plan = read(db, plan_id)
    validate_plan_data(plan)
    subs = {s["id"]: s for s in plan["tasks"][0]["subtasks"]}
    assert list(subs) == ["a_a", "a_b", "a_c", "b", "c", "e_a", "e_b", "e_c"]
    assert subs["a_a"]["prerequisite_subtask_ids"] == []
    assert subs["b"]["prerequisite_subtask_ids"] == ["a_c"] == subs["c"]["prerequisite_subtask_ids"]
    assert subs["e_a"]["prerequisite_subtask_ids"] == ["c"]  # the placeholder's own prerequisites
    assert subs["e_b"]["prerequisite_subtask_ids"] == ["e_a"]
    assert [p["task_id"] for p in report.proposals] == ["b"] and subs["b"]["action"] == MANUAL_ACTION
    assert not plan["tasks"][0]["decomposed"] and plan["tasks"][1]["decomposed"]


def test_a_placeholder_an_execution_uses_is_skipped(db, settings: Settings) -> None:
    plan_id = store(db, {"id": "plan_run", "goal": "g", "tasks": [{"id": "t1", "title": "T", "subtasks": [
        {"id": "a", "title": "Research competitor pricing", "decomposed": False}]}]})
    with db.unit_of_work() as s:
        owner_id = get_plan(s, ADMIN, plan_id).owner_id
        create_execution(s, owner_id, plan_id, utcnow())
    report = decompose_plan(db, settings, ADMIN, plan_id, CAPS)
    assert report.applied == [] and report.skipped[0]["id"] == "a"
    assert "used by an execution" in report.skipped[0]["reason"]
    assert read(db, plan_id)["tasks"][0]["subtasks"][0]["action"] == MANUAL_ACTION
