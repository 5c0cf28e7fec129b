"""create_plan checks the whole plan before writing; plan_to_dict gives back what went in; reads are scoped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from orchestrator.credentials import Principal
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.models import Plan, PlanSubtask, PlanTask, utcnow
from orchestrator.plans import create_plan, get_plan, list_plans, plan_to_dict
from tests.factories import make_user

SERVER_FIELDS = ("owner_id", "created_at", "source")


def sub(i: str, **kw) -> dict:
    return {"id": i, "title": f"Subtask {i}", "action": "send_email", **kw}


def breeder_plan() -> dict:
    return {
        "id": "plan_carol", "title": "Carol's breeder system", "goal": "Build a breeder system",
        "context": {"business_type": "Dog breeding"},
        "tasks": [
            {"id": "task_1", "title": "Interview Carol", "description": "Learn her process", "phase_id": "phase_1",
             "phase_title": "Discovery", "assignee_role": "Business Analyst", "estimated_hours": 4, "priority": 1,
             "is_blocking": True, "prerequisite_task_ids": [],
             "subtasks": [
                 sub("task_1_a", params={"to": "carol@example.com"}, timeout_hours=48,
                     retry_policy={"max_attempts": 5, "backoff": "linear", "backoff_seconds": 30},
                     success_criteria=["Email delivered"], failure_handling="Call instead"),
                 sub("task_1_b", prerequisite_subtask_ids=["task_1_a"]),
             ]},
            {"id": "task_2", "title": "Write it up", "description": "", "priority": 2,
             "prerequisite_task_ids": ["task_1"], "subtasks": [sub("task_2_a")]},
            {"id": "task_3", "title": "Not decomposed yet", "prerequisite_task_ids": ["task_2"]},
        ],
    }


def counts(s) -> tuple[int, int, int]:
    return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Plan, PlanTask, PlanSubtask))


@pytest.fixture
def owner(db):
    with db.unit_of_work() as s:
        return make_user(s, "carol_owner")


def test_create_stores_everything_in_order(db, owner) -> None:
    now = utcnow()
    with db.unit_of_work() as s:
        plan = create_plan(s, owner.id, breeder_plan(), now)
        assert plan.id == "plan_carol" and plan.source == "api" and plan.owner_id == owner.id
    with db.reading() as s:
        plan = get_plan(s, Principal("user", owner.id), "plan_carol")
        assert [(t.id, t.position, t.decomposed) for t in plan.tasks] == [
            ("task_1", 0, True), ("task_2", 1, True), ("task_3", 2, False)]
        first = plan.tasks[0]
        assert [(x.id, x.position) for x in first.subtasks] == [("task_1_a", 0), ("task_1_b", 1)]
        a = first.subtasks[0]
        assert (a.timeout_hours, a.retry_policy["max_attempts"], a.params) == (48, 5, {"to": "carol@example.com"})
        assert first.subtasks[1].prerequisite_subtask_ids == ["task_1_a"]
        assert plan.tasks[1].subtasks[0].timeout_hours == 24  # the model's default
        assert plan.created_at == now


def test_round_trip_through_plan_to_dict(db, owner) -> None:
    with db.unit_of_work() as s:
        first = plan_to_dict(create_plan(s, owner.id, breeder_plan(), utcnow()))
    again = {k: v for k, v in first.items() if k not in SERVER_FIELDS} | {"id": "plan_copy"}
    with db.unit_of_work() as s:
        second = plan_to_dict(create_plan(s, owner.id, again, utcnow(), source="file"))
    assert second["source"] == "file"
    strip = ("id", *SERVER_FIELDS)
    assert {k: v for k, v in first.items() if k not in strip} == {k: v for k, v in second.items() if k not in strip}
    assert first["created_at"].endswith("Z")


def test_generated_ids_source_and_aliases(db, owner) -> None:
    data = {"goal": "g", "source": "planexe", "tasks": [
        {"id": "t1", "title": "T1", "subtasks": [sub("a"), sub("b", prerequisites=["a"])]},
        {"id": "t2", "title": "T2", "prerequisites": ["t1"], "subtasks": [sub("c")]}]}
    with db.unit_of_work() as s:
        plan = create_plan(s, owner.id, data, utcnow())
        assert plan.id.startswith("plan_") and len(plan.id) == len("plan_") + 16
        assert plan.source == "planexe"
        assert plan.tasks[1].prerequisite_task_ids == ["t1"]
        assert plan.tasks[0].subtasks[1].prerequisite_subtask_ids == ["a"]


def test_an_existing_id_is_a_conflict(db, owner) -> None:
    with db.unit_of_work() as s:
        create_plan(s, owner.id, breeder_plan(), utcnow())
    with pytest.raises(Conflict) as exc, db.unit_of_work() as s:
        create_plan(s, owner.id, breeder_plan(), utcnow())
    assert exc.value.details == {"plan_id": "plan_carol"}


def t(i: str, pres: list[str] | None = None, subs: list[dict] | None = None) -> dict:
    return {"id": i, "title": i, "prerequisite_task_ids": pres or [], "subtasks": subs or []}


@pytest.mark.parametrize(("tasks", "details"), [
    pytest.param([t("t1", ["t9"]), t("t2", subs=[sub("a", prerequisite_subtask_ids=["zz", "t1"])])],
                 {"unknown_prerequisites": {"t1": ["t9"], "a": ["zz", "t1"]}}, id="unknown"),
    pytest.param([t("t1", ["t2"]), t("t2", ["t1"]), t("t3", ["t3"])],
                 {"cycle": ["t1", "t2", "t1"], "cycles": [["t1", "t2", "t1"], ["t3", "t3"]]}, id="task-cycles"),
    pytest.param([t("t1", subs=[sub("a", prerequisite_subtask_ids=["b"]), sub("b", prerequisite_subtask_ids=["a"])])],
                 {"cycle": ["a", "b", "a"], "cycles": [["a", "b", "a"]]}, id="subtask-cycle"),
    # Each graph alone is fine; together, a waits for c (its own prerequisite) and c for a (task order).
    pytest.param([t("t1", subs=[sub("a", prerequisite_subtask_ids=["c"])]), t("t2", ["t1"], [sub("c")])],
                 {"cycle": ["a", "c", "a"], "cycles": [["a", "c", "a"]]}, id="combined-cycle"),
    pytest.param([t("t1", subs=[sub("t1"), sub("x")]), t("t2", subs=[sub("x")])],
                 {"duplicate_ids": ["t1", "x"]}, id="duplicates"),
    pytest.param([t("t1", subs=[sub("a", retry_policy={"backoff": "sometimes"})])],
                 {"retry_policy": {"a": "backoff must be one of fixed, linear, exponential"}}, id="retry-policy"),
])
def test_bad_plans_name_the_ids_and_write_nothing(db, owner, tasks, details) -> None:
    with pytest.raises(ValidationFailed) as exc, db.unit_of_work() as s:
        create_plan(s, owner.id, {"goal": "g", "tasks": tasks}, utcnow())
    assert exc.value.details == details
    with db.reading() as s:
        assert counts(s) == (0, 0, 0)


def test_reads_are_scoped_to_the_owner(db, owner) -> None:
    with db.unit_of_work() as s:
        other = make_user(s, "eve")
        create_plan(s, owner.id, breeder_plan(), utcnow())
    with db.reading() as s:
        with pytest.raises(NotFound):
            get_plan(s, Principal("user", other.id), "plan_carol")
        assert get_plan(s, Principal("user", other.id, is_admin=True), "plan_carol").id == "plan_carol"
        assert list_plans(s, Principal("user", other.id), 10, None) == ([], None)
        with pytest.raises(NotFound):
            get_plan(s, Principal("user", owner.id), "plan_missing")


def test_list_pages_newest_first(db, owner) -> None:
    base = utcnow()
    with db.unit_of_work() as s:
        for i in range(5):
            # Two plans share a creation time: the id breaks the tie, and paging must not lose either.
            create_plan(s, owner.id, {"id": f"plan_{i}", "goal": "g"}, base + timedelta(seconds=min(i, 3)))
    me = Principal("user", owner.id)
    seen, cursor = [], None
    with db.reading() as s:
        while True:
            rows, cursor = list_plans(s, me, 2, cursor)
            seen += [p.id for p in rows]
            if cursor is None:
                break
        assert seen == ["plan_4", "plan_3", "plan_2", "plan_1", "plan_0"]
        for bad in ("%%%", "bm90LWEtY3Vyc29y", "eHx5"):  # not base64; no separator; "x|y"
            with pytest.raises(ValidationFailed):
                list_plans(s, me, 2, bad)
