"""The id alphabet in the domain (importers, decomposers, creates), and duplicate keys as Conflicts, races included."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.agents import register_agent
from orchestrator.db import flush_new
from orchestrator.decomposition import DecompositionRequest, normalise_subtasks
from orchestrator.decomposition.templates import TemplateDecomposer
from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.executions import create_execution
from orchestrator.ids import ID_MAX_LENGTH, child_id, is_valid_id
from orchestrator.models import Plan, utcnow
from orchestrator.planexe import planexe_to_plan, read_folder
from orchestrator.plans import create_plan
from tests.factories import make_plan, make_user
from tests.orchestrator.test_decomposition import GUIDE_REQUEST
from tests.orchestrator.test_planexe import FIXTURE


@pytest.mark.parametrize(("value", "ok"), [
    ("task_1_1", True), ("3f2b8c1e-5d4a-4e7b-9c0d-1a2b3c4d5e6f", True), ("v1.2-x", True), ("x" * 128, True),
    ("x" * 129, False), ("a:b", False), ("-a", False), ("a\n", False), ("", False), (None, False), (7, False),
])
def test_the_alphabet(value, ok) -> None:
    assert is_valid_id(value) is ok


def test_child_ids_stay_in_the_alphabet_and_apart() -> None:
    assert child_id("task_1_1", "a") == "task_1_1_a"
    long_a, long_b = "t" * 127 + "a", "t" * 127 + "b"
    children = {child_id(long_a, "a"), child_id(long_b, "a"), child_id(long_a, "b")}
    assert len(children) == 3 and all(is_valid_id(c) and len(c) == ID_MAX_LENGTH for c in children)


def test_the_template_decomposer_mints_usable_ids_for_the_longest_task_id() -> None:
    task_id = "t" * ID_MAX_LENGTH
    request = DecompositionRequest({**GUIDE_REQUEST["task"], "task_id": task_id}, GUIDE_REQUEST["plan_context"],
                                   GUIDE_REQUEST["agent_capabilities"])
    result = TemplateDecomposer().decompose(request)
    ids = [s["subtask_id"] for s in result.decomposed_subtasks]
    assert ids and all(is_valid_id(i) for i in ids) and len(set(ids)) == len(ids)
    assert result.execution_sequence == ids


def test_unusable_ids_from_a_model_are_reminted_and_dependents_follow() -> None:
    raw = [{"subtask_id": "step:1", "title": "One", "action": "send_email"},
           {"subtask_id": "step:2", "title": "Two", "action": "send_email", "depends_on": ["step:1"]}]
    norm = normalise_subtasks("task_9", raw, {"send_email"})
    assert [(s["subtask_id"], s["depends_on"]) for s in norm.subtasks] == [("task_9_a", []),
                                                                          ("task_9_b", ["task_9_a"])]
    assert norm.repairs == 2 and "unusable" in norm.warnings[0]
    with pytest.raises(ValidationFailed):
        normalise_subtasks("task_9", raw, {"send_email"}, strict=True)


def test_planexe_uuids_pass_and_other_ids_are_refused_by_name() -> None:
    files = read_folder(FIXTURE)
    plan, _ = planexe_to_plan(files)
    assert plan["tasks"] and all(is_valid_id(t["id"]) and all(is_valid_id(s["id"]) for s in t["subtasks"])
                                 for t in plan["tasks"])
    level2 = next(name for name in files if name.endswith("wbs_level2.json"))
    first_id = plan["tasks"][0]["id"]
    broken = {**files, level2: files[level2].replace(first_id, f"{first_id}:x")}
    with pytest.raises(ValidationFailed) as exc:
        planexe_to_plan(broken)
    assert exc.value.details["invalid_ids"] == [f"{first_id}:x"]


def test_the_domain_refuses_colons_where_the_schema_is_not_in_front(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s, "ann")
        plan = make_plan(s, owner, "plan_1")
        data = {"goal": "g", "tasks": [{"id": "x:y", "title": "XY", "subtasks": []}]}
        with pytest.raises(ValidationFailed) as exc:
            create_plan(s, owner.id, data, utcnow())
        assert exc.value.details == {"invalid_ids": ["x:y"]}
        with pytest.raises(ValidationFailed) as exc:
            create_execution(s, owner.id, plan.id, utcnow(), execution_id="X:x")
        assert exc.value.details == {"execution_id": "X:x"}
        with pytest.raises(ValidationFailed):
            register_agent(s, owner.id, {"id": "a:b", "name": "Larry"}, utcnow())


def test_flush_new_turns_only_a_duplicate_key_into_the_conflict(db) -> None:
    with db.unit_of_work() as s:
        make_plan(s, make_user(s, "ann"), "plan_1")
    with db.unit_of_work() as s:
        s.add(Plan(id="plan_1", goal="g", owner_id="user_ann"))
        with pytest.raises(Conflict, match="taken"):
            flush_new(s, Conflict("taken"))
        s.rollback()
        s.add(Plan(id="plan_2", goal="g", owner_id="user_nobody"))  # a foreign key, not a duplicate
        with pytest.raises(IntegrityError):
            flush_new(s, Conflict("taken"))
        s.rollback()


CREATES: dict[str, Callable[[Session], object]] = {
    "plan": lambda s: create_plan(s, "user_ann", {"id": "same", "goal": "g"}, utcnow()),
    "execution": lambda s: create_execution(s, "user_ann", "plan_1", utcnow(), execution_id="same"),
    "agent": lambda s: register_agent(s, "user_ann", {"id": "same", "name": "Larry"}, utcnow()),
}


def _wait_until_blocked(db, timeout: float = 10.0) -> None:
    """On PostgreSQL, until the second insert waits on the first's uncommitted row; SQLite's second
    transaction waits at BEGIN IMMEDIATE, so there a short pause is all it takes."""
    if db.dialect != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    with db.engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar():
                return
            conn.rollback()
            time.sleep(0.02)
    raise AssertionError("the second create never waited for the first")


@pytest.mark.parametrize("what", sorted(CREATES))
def test_two_creates_racing_on_one_id_give_one_conflict(db, what) -> None:
    with db.unit_of_work() as s:
        make_plan(s, make_user(s, "ann"), "plan_1")
    outcome: list[BaseException | None] = []

    def second() -> None:
        try:
            with db.unit_of_work() as s:
                CREATES[what](s)
            outcome.append(None)
        except BaseException as exc:  # reported to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=second)
    with db.unit_of_work() as s:
        CREATES[what](s)  # inserted, not yet committed: the second create cannot see it
        thread.start()
        _wait_until_blocked(db)
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    if db.dialect == "postgresql":  # both passed the existence check: the insert itself collided
        assert isinstance(outcome[0].__cause__, IntegrityError)
