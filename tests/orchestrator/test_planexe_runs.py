"""A PlanExe run imported whole: the realistic fixture run (written by tests/fixtures/make_planexe_run.py in
PlanExe's file layout) as a folder, a zip, a macOS zip and single files; runs missing optional files; and
zips that are refused."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from pathlib import Path

import pytest
from marshmallow import ValidationError
from sqlalchemy import func, select

from orchestrator import planexe
from orchestrator.errors import ValidationFailed
from orchestrator.models import PlanSubtask, utcnow
from orchestrator.plan_import import plan_data_from_files
from orchestrator.plan_schema import MANUAL_ACTION
from orchestrator.planexe import read_folder
from orchestrator.plans import create_plan, plan_to_dict
from tests.factories import make_user
from tests.fixtures.make_planexe_run import DEPENDENCIES, FOLDER, UNKNOWN_IDS, build_run

REALISTIC = FOLDER
USED = ["018-2-wbs_level1.json", "018-5-wbs_level2.json", "019-wbs_project_level1_and_level2.json",
        "021-task_dependencies_raw.json", "022-2-task_durations.json", "023-2-wbs_level3.json"]
RUN = build_run()
LEVEL3 = RUN["023-2-wbs_level3.json"]


def zipped(files: dict[str, str | bytes], *, folder: str = "run/", macos: bool = False) -> bytes:
    """A zip of `files` in `folder`; with `macos`, the AppleDouble and .DS_Store entries Finder adds."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(folder + name, content)
            if macos:
                zf.writestr(f"__MACOSX/{folder}._{name}", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
        if macos:
            zf.writestr(f"{folder}.DS_Store", b"\x00\x00\x00\x01Bud1\x00")
    return buf.getvalue()


def run_files() -> dict[str, str | bytes]:
    """Every file of the fixture run, the ones the importer ignores too."""
    return {p.name: p.read_bytes() for p in sorted(REALISTIC.iterdir())}


def test_the_fixture_is_the_generators_output() -> None:
    assert sorted(p.name for p in REALISTIC.iterdir()) == sorted(RUN)
    for name, value in RUN.items():
        if value is not None:
            assert json.loads((REALISTIC / name).read_text()) == value, name


def test_every_level3_item_arrives_as_a_subtask_of_its_task_in_order() -> None:
    imported = plan_data_from_files(read_folder(REALISTIC), None)
    assert imported.files == USED and imported.source == "planexe"
    assert imported.counts() == {"tasks": 7, "subtasks": 35, "dependencies": 8, "undecomposed_subtasks": 35}
    tasks = imported.data["tasks"]
    for task in tasks:
        items = [i for i in LEVEL3 if i["parent_id"] == task["id"]]
        assert [s["id"] for s in task["subtasks"]] == [i["id"] for i in items] and len(items) == 5
        for sub, item in zip(task["subtasks"], items, strict=True):
            assert (sub["title"], sub["action"], sub["params"]["description"], sub["params"]["assignee_role"]) == (
                item["name"], MANUAL_ACTION, item["description"], ", ".join(item["resources_needed"]))
        assert task["decomposed"] is False
    durations = {d["task_id"]: d["days_realistic"] for d in RUN["022-2-task_durations.json"]}
    assert [t["estimated_hours"] for t in tasks] == [round(durations[t["id"]] * 8) for t in tasks]
    estimated = {s["id"]: s["params"]["estimated_hours"] for t in tasks for s in t["subtasks"]
                 if "estimated_hours" in s["params"]}
    assert estimated == {LEVEL3[0]["id"]: 16, LEVEL3[12]["id"]: 4}
    assert [[tasks.index(next(t for t in tasks if t["id"] == p)) for p in t["prerequisite_task_ids"]]
            for t in tasks] == [[]] + [pres for _, pres in DEPENDENCIES]


def test_warnings_come_one_line_per_kind() -> None:
    warnings = plan_data_from_files(read_folder(REALISTIC), None).warnings
    assert len(warnings) == 3, warnings
    durations = next(w for w in warnings if "durations" in w)
    assert durations.startswith("6 durations for unknown tasks skipped: ")
    assert all(u in durations for u in UNKNOWN_IDS)
    assert any(w.startswith("1 dependency on an unknown id dropped: ") for w in warnings)
    assert any("explanations" in w for w in warnings)


@pytest.mark.parametrize("form", ["zip", "macos-zip", "flat-zip", "json-base64"])
def test_a_zipped_run_imports_as_the_folder_does(form: str) -> None:
    folder = plan_data_from_files(read_folder(REALISTIC), None)
    content = zipped(run_files(), macos=form == "macos-zip", folder="" if form == "flat-zip" else "run/")
    sent: str | bytes = base64.b64encode(content).decode() if form == "json-base64" else content
    imported = plan_data_from_files({"PlanExe_run.zip": sent}, None)
    assert imported.data == folder.data and imported.warnings == folder.warnings
    inside = "" if form == "flat-zip" else "run/"
    assert imported.files == [f"PlanExe_run.zip/{inside}{name}" for name in USED]


@pytest.mark.parametrize(("single", "tasks", "subtasks"), [
    ("023-2-wbs_level3.json", 7, 35), ("018-5-wbs_level2.json", 7, 0),
    ("019-wbs_project_level1_and_level2.json", 7, 0)])
def test_a_single_wbs_file_imports(single: str, tasks: int, subtasks: int) -> None:
    imported = plan_data_from_files({single: (REALISTIC / single).read_bytes()}, None)
    assert imported.files == [single]
    assert (imported.counts()["tasks"], imported.counts()["subtasks"]) == (tasks, subtasks)
    if single.endswith("wbs_level3.json"):
        assert imported.data["tasks"][0]["title"] == "Work package 1"
        assert any("Work package" in w for w in imported.warnings)


@pytest.mark.parametrize("missing", ["018-2-wbs_level1.json", "019-wbs_project_level1_and_level2.json",
                                     "021-task_dependencies_raw.json", "022-2-task_durations.json",
                                     "023-2-wbs_level3.json"])
def test_a_run_without_an_optional_file_still_imports(missing: str) -> None:
    files = {n: c for n, c in run_files().items() if n != missing}
    imported = plan_data_from_files({"run.zip": zipped(files)}, None)
    counts = imported.counts()
    assert counts["tasks"] == 7
    assert counts["subtasks"] == (0 if missing.endswith("wbs_level3.json") else 35)
    assert counts["dependencies"] == (0 if missing.startswith("021") else 8)
    assert imported.data["title"] == RUN["018-2-wbs_level1.json"]["project_title"]  # the tree has it too
    has_hours = any(t.get("estimated_hours") for t in imported.data["tasks"])
    assert has_hours is not missing.startswith("022")


def test_zips_that_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    level2 = (REALISTIC / "018-5-wbs_level2.json").read_bytes()
    cases = [
        ({"a.zip": zipped({"../018-5-wbs_level2.json": level2}, folder="")}, "unsafe path"),
        ({"a.zip": zipped({"/etc/018-5-wbs_level2.json": level2}, folder="")}, "unsafe path"),
        ({"a.zip": b"PK\x03\x04 not really a zip"}, "not a readable zip"),
        ({"a.zip": zipped({"notes.txt": "hello"})}, "holds no PlanExe files"),
        ({"a.zip": zipped({"018-5-wbs_level2.json": level2, "b/018-5-wbs_level2.json": level2})}, "Two files"),
        ({"a.zip": "not base64!"}, "base64"),
    ]
    for files, message in cases:
        with pytest.raises(ValidationFailed, match=message):
            plan_data_from_files(files, None)
    monkeypatch.setattr(planexe, "MAX_ZIP_MEMBERS", 3)
    with pytest.raises(ValidationFailed, match="entries"):
        plan_data_from_files({"a.zip": zipped(run_files())}, None)
    monkeypatch.setattr(planexe, "MAX_ZIP_MEMBERS", 5000)
    # A bomb: far more bytes inflated than compressed; the limit counts what is actually read.
    monkeypatch.setattr(planexe, "MAX_UNPACKED_BYTES", 100_000)
    bomb = zipped({"023-2-wbs_level3.json": b"[" + b" " * 10_000_000 + b"]"})
    assert len(bomb) < 100_000
    with pytest.raises(ValidationFailed, match="more than 100,000 bytes"):
        plan_data_from_files({"a.zip": bomb}, None)


def test_the_run_is_stored_with_its_placeholders(db) -> None:
    imported = plan_data_from_files({"run.zip": zipped(run_files(), macos=True)}, None)
    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        stored = plan_to_dict(create_plan(s, owner.id, imported.data, utcnow(), source=imported.source))
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(PlanSubtask).where(
            PlanSubtask.action == MANUAL_ACTION)) == 35
    assert [s["decomposed"] for t in stored["tasks"] for s in t["subtasks"]] == [False] * 35
    assert sum(len(t["prerequisite_task_ids"]) for t in stored["tasks"]) == 8


def test_decomposed_false_round_trips_through_our_plan_file(tmp_path: Path) -> None:
    plan = {"goal": "g", "tasks": [{"id": "t", "title": "T", "subtasks": [
        {"id": "a", "title": "Paint the walls", "decomposed": False},
        {"id": "b", "title": "Email", "action": "send_email", "decomposed": True}]}]}
    loaded = plan_data_from_files({"p.json": json.dumps(plan)}, None).data
    assert [s["action"] for s in loaded["tasks"][0]["subtasks"]] == [MANUAL_ACTION, "send_email"]
    plan["tasks"][0]["subtasks"][1]["decomposed"] = False
    with pytest.raises(ValidationError, match="decomposed"):
        plan_data_from_files({"p.json": json.dumps(plan)}, None)
