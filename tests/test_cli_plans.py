"""`orchestrator plans import|export|decompose`: round-trips, and bad input is a one-line error that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select

from cli.main import main
from orchestrator.models import Plan, PlanSubtask, PlanTask
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.settings import Settings
from tests.factories import make_agent, make_user
from tests.orchestrator.test_decomposition import GUIDE_REQUEST
from tests.orchestrator.test_planexe import FIXTURE
from tests.orchestrator.test_planexe_runs import REALISTIC, run_files, zipped


@pytest.fixture
def run(db, migrated: Settings):
    with db.unit_of_work() as s:
        mark = make_user(s, "mark")
        make_agent(s, "agent_larry", owner_id=mark.id,
                   capabilities=[{"action": a, "params": []} for a in GUIDE_REQUEST["agent_capabilities"]])
    env = {"DATABASE_URL": migrated.database_url, "ORCHESTRATOR_DATA_DIR": str(migrated.data_dir),
           "SECRET_KEY": migrated.secret_key, "ORCHESTRATOR_ADMIN_USER": "mark", "LLM_BASE_URL": "",
           "DECOMPOSER": "template"}

    def invoke(*args: str):
        return CliRunner().invoke(main, ["plans", *args], env=env)

    return invoke


def n_plans(db) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(Plan))


def assert_clean_error(result, text: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert text in result.output
    assert "Traceback" not in result.output


def test_import_planexe_folder(run, db) -> None:
    result = run("import", str(FIXTURE), "--owner", "mark")
    assert result.exit_code == 0, result.output
    assert "imported plan_" in result.output and "(4 tasks, 3 subtasks, 3 dependencies)" in result.output
    assert "warning:" in result.output and "cycle" in result.output
    with db.reading() as s:
        assert s.scalar(select(Plan.source)) == "planexe"


def test_export_import_round_trip(run, db, tmp_path: Path) -> None:
    assert run("import", str(FIXTURE)).exit_code == 0
    with db.reading() as s:
        plan_id = s.scalar(select(Plan.id))
    for fmt in ("yaml", "json"):
        exported = run("export", plan_id, "--format", fmt)
        assert exported.exit_code == 0, exported.output
        data = yaml.safe_load(exported.output) if fmt == "yaml" else json.loads(exported.output)
        assert "owner_id" not in data and len(data["tasks"]) == 4
        data["id"] = f"copy_{fmt}"
        path = tmp_path / f"plan.{fmt}"
        path.write_text(yaml.safe_dump(data) if fmt == "yaml" else json.dumps(data))
        assert run("import", str(path)).exit_code == 0
        again = run("export", f"copy_{fmt}", "--format", fmt)
        copy = yaml.safe_load(again.output)
        assert {**copy, "id": plan_id} == {**data, "id": plan_id}


@pytest.mark.parametrize(("content", "name", "message"), [
    (json.dumps({"goal": "g", "tasks": [{"id": "a", "title": "A", "prerequisites": ["b"]},
                                        {"id": "b", "title": "B", "prerequisites": ["a"]}]}), "p.json", "cycle"),
    (json.dumps({"goal": "g", "tasks": [{"id": "a", "title": "A", "prerequisites": ["zzz"]}]}), "p.json",
     "not in the plan"),
    ("{not json", "p.json", "not valid JSON"),
    ("goal: [unclosed", "p.yaml", "not valid YAML"),
    (json.dumps({"tasks": []}), "p.json", "not valid"),
    ("[oops", "002-wbs_level2.json", "not valid JSON"),
])
def test_bad_files_are_clean_errors(run, db, tmp_path: Path, content: str, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert_clean_error(run("import", str(path)), message)
    assert n_plans(db) == 0


def test_missing_things_are_clean_errors(run, db, tmp_path: Path) -> None:
    assert_clean_error(run("import", str(tmp_path / "nope")), "does not exist")
    assert_clean_error(run("import", str(tmp_path)), "holds no PlanExe files")
    assert_clean_error(run("import", str(FIXTURE), "--owner", "ghost"), "No user named 'ghost'")
    assert_clean_error(run("export", "plan_nope"), "not found")
    assert n_plans(db) == 0


def test_decompose_prints_and_applies(run, db, tmp_path: Path) -> None:
    plan = {"id": "plan_c", "goal": GUIDE_REQUEST["plan_context"]["goal"],
            "context": {k: v for k, v in GUIDE_REQUEST["plan_context"].items() if k != "goal"},
            "tasks": [{"id": "task_1_1", "title": GUIDE_REQUEST["task"]["title"],
                       "description": GUIDE_REQUEST["task"]["description"], "assignee_role": "Business Analyst"}]}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run("import", str(path)).exit_code == 0
    shown = run("decompose", "plan_c", "task_1_1", "--agent", "agent_larry")
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.output)
    assert body["decomposition_confidence"] >= 0.9 and body["execution_sequence"][0] == "task_1_1_a"
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(PlanSubtask)) == 0
    applied = run("decompose", "plan_c", "task_1_1", "--agent", "agent_larry", "--apply")
    assert applied.exit_code == 0 and json.loads(applied.output)["applied"] is True
    with db.reading() as s:
        assert s.get(PlanTask, ("plan_c", "task_1_1")).decomposed
    assert_clean_error(run("decompose", "plan_c", "task_1_1", "--agent", "agent_larry", "--apply"),
                       "already has subtasks")
    assert_clean_error(run("decompose", "plan_c", "task_9", "--agent", "agent_larry"), "not found")
    assert_clean_error(run("decompose", "plan_c", "task_1_1", "--agent", "agent_nope"), "not found")


@pytest.mark.parametrize("form", ["folder", "zip", "macos-zip", "single-file"])
def test_import_a_realistic_run(run, db, tmp_path: Path, form: str) -> None:
    target = {"folder": REALISTIC, "single-file": REALISTIC / "023-2-wbs_level3.json"}.get(form)
    if target is None:
        target = tmp_path / "PlanExe_20250101.zip"
        target.write_bytes(zipped(run_files(), macos=form == "macos-zip"))
    result = run("import", str(target))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    subtasks = "35 subtasks"
    assert any(line.startswith("imported plan_") and f"(7 tasks, {subtasks}" in line for line in lines), lines
    assert "35 subtasks are manual placeholders" in result.output
    read = next(line for line in lines if line.startswith("read: "))
    assert "023-2-wbs_level3.json" in read and "030-report" not in read and "__MACOSX" not in read
    if form != "single-file":
        assert "8 dependencies" in result.output
        assert "warning: 6 durations for unknown tasks skipped: " in result.output
        assert sum(line.startswith("warning:") for line in lines) == 3


def test_decompose_all(run, db) -> None:
    assert run("import", str(REALISTIC)).exit_code == 0
    with db.reading() as s:
        plan_id = s.scalar(select(Plan.id))
    result = run("decompose", plan_id, "--all", "--agent", "agent_larry")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[:result.output.rindex("}") + 1])
    assert report["counts"]["applied"] > 0 and report["counts"]["proposals"] > 0
    assert report["counts"]["applied"] + report["counts"]["proposals"] == 35
    assert f"applied {report['counts']['applied']}, left {report['counts']['proposals']} as proposals" in result.output
    with db.reading() as s:
        left = s.scalar(select(func.count()).select_from(PlanSubtask).where(PlanSubtask.action == MANUAL_ACTION))
    assert left == report["counts"]["proposals"]
    assert_clean_error(run("decompose", plan_id, "--agent", "agent_larry"), "Give either TASK_ID or --all")
    assert_clean_error(run("decompose", plan_id, "task_1", "--all", "--agent", "agent_larry"), "Give either")
    assert_clean_error(run("decompose", "plan_nope", "--all", "--agent", "agent_larry"), "not found")
