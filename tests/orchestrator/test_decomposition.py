"""The template decomposer, the confidence formula, normalisation and applying a decomposition."""

from __future__ import annotations

import pytest

from orchestrator.credentials import Principal
from orchestrator.decomposition import (
    DecompositionRequest,
    DecompositionResult,
    normalise_subtasks,
    subtask_suffix,
)
from orchestrator.decomposition.confidence import (
    ConfidenceInputs,
    agreement_base,
    compute_confidence,
    template_match_base,
)
from orchestrator.decomposition.llm import LLMDecomposer
from orchestrator.decomposition.service import ApplyTo, apply_decomposition, decompose_task, decomposer_for
from orchestrator.decomposition.templates import TemplateDecomposer, extract_context, load_templates, topics_from
from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.models import PlanTask, utcnow
from orchestrator.settings import Settings
from tests.factories import make_plan, make_user

# Guide section 3, verbatim.
GUIDE_REQUEST = {
    "task": {
        "task_id": "task_1_1",
        "title": "Interview Carol about current workflow",
        "description": "Understand her breeding records, customer management, puppy tracking workflows",
        "assignee_role": "Business Analyst",
    },
    "plan_context": {
        "goal": "Build custom dog breeder management system",
        "business_type": "Dog breeding",
        "industry": "Animal husbandry",
        "target_customer": "Carol Campion (Bittersweet Farm, border collie breeder, 25+ years experience)",
    },
    "agent_capabilities": [
        "send_email",
        "make_phone_call",
        "schedule_calendar_event",
        "conduct_interview",
        "document_findings",
        "analyze_feedback",
    ],
}
GUIDE_KEYS = ["task_id", "decomposition_confidence", "decomposed_subtasks", "execution_sequence", "notes", "warnings"]


def guide_request(**task: str) -> DecompositionRequest:
    return DecompositionRequest({**GUIDE_REQUEST["task"], **task}, GUIDE_REQUEST["plan_context"],
                                GUIDE_REQUEST["agent_capabilities"])


def assert_valid(body: dict, capabilities: list[str]) -> None:
    assert sorted(body) == sorted(GUIDE_KEYS)  # the order is the guide's in Python; Flask sorts keys on the wire
    ids = [s["subtask_id"] for s in body["decomposed_subtasks"]]
    assert len(ids) == len(set(ids))
    assert sorted(body["execution_sequence"]) == sorted(ids)
    position = {sid: i for i, sid in enumerate(body["execution_sequence"])}
    for s in body["decomposed_subtasks"]:
        assert s["action"] in capabilities
        assert all(position[d] < position[s["subtask_id"]] for d in s["depends_on"])
        assert set(s) >= {"subtask_id", "title", "action", "params", "depends_on", "success_criteria"}


def test_guide_example_gives_a_valid_confident_decomposition() -> None:
    result = TemplateDecomposer().decompose(guide_request())
    body = result.to_response()
    assert list(body) == GUIDE_KEYS
    assert_valid(body, GUIDE_REQUEST["agent_capabilities"])
    assert body["task_id"] == "task_1_1"
    assert body["decomposition_confidence"] >= 0.9
    actions = [s["action"] for s in body["decomposed_subtasks"]]
    assert {"send_email", "conduct_interview", "document_findings"} <= set(actions)
    assert body["execution_sequence"][0] == "task_1_1_a"
    interview = next(s for s in body["decomposed_subtasks"] if s["action"] == "conduct_interview")
    assert interview["params"]["required_topics"] == ["Breeding records", "Customer management",
                                                      "Puppy tracking workflows"]
    assert interview["params"]["interviewee"] == "Carol Campion"
    # No e-mail address is in the context: it is not invented, and the gap is reported.
    email = next(s for s in body["decomposed_subtasks"] if s["action"] == "send_email")
    assert email["params"]["to"] is None
    assert any("contact_email" in w for w in body["warnings"])


def test_task_outside_capabilities_gets_low_confidence_and_a_warning() -> None:
    req = DecompositionRequest({"task_id": "t9", "title": "Write the final report", "description": ""},
                               {}, ["make_phone_call"])
    body = TemplateDecomposer().decompose(req).to_response()
    assert body["decomposition_confidence"] < 0.3
    assert body["decomposed_subtasks"] == []
    assert any("write_document" in w for w in body["warnings"])

    nothing = DecompositionRequest({"task_id": "t8", "title": "Operate on the puppy"}, {}, ["send_email"])
    body = TemplateDecomposer().decompose(nothing).to_response()
    assert body["decomposition_confidence"] == 0.0 and body["warnings"]


def test_partly_covered_task_loses_confidence_and_never_emits_missing_actions() -> None:
    caps = ["conduct_interview", "document_findings"]
    req = DecompositionRequest(GUIDE_REQUEST["task"], GUIDE_REQUEST["plan_context"], caps)
    body = TemplateDecomposer().decompose(req).to_response()
    assert_valid(body, caps)
    full = TemplateDecomposer().decompose(guide_request()).decomposition_confidence
    assert body["decomposition_confidence"] < full
    assert body["decomposition_confidence"] < 0.75
    assert any("send_email" in w for w in body["warnings"])
    # The interview no longer waits for the dropped e-mail step.
    assert body["decomposed_subtasks"][0]["depends_on"] == []


def test_fallback_action_replaces_a_missing_one() -> None:
    caps = ["make_phone_call", "conduct_interview", "document_findings"]
    req = DecompositionRequest(GUIDE_REQUEST["task"], {**GUIDE_REQUEST["plan_context"], "contact_phone": "+1 555 0100"},
                               caps)
    body = TemplateDecomposer().decompose(req).to_response()
    assert_valid(body, caps)
    assert body["decomposed_subtasks"][0]["action"] == "make_phone_call"
    assert body["decomposed_subtasks"][0]["params"]["to"] == "+1 555 0100"


@pytest.mark.parametrize(("title", "template"), [
    ("Interview Carol about current workflow", "outreach_interview"),
    ("Write the requirements document", "document_report"),
    ("Research competitor breeder software", "research"),
    ("Schedule a kickoff meeting", "scheduling"),
    ("Email the prospects in leads.csv", "csv_prospecting"),
])
def test_each_kind_of_work_has_a_template(title: str, template: str) -> None:
    caps = sorted({s["action"] for t in load_templates() for s in t["steps"]})
    req = DecompositionRequest({"task_id": "t", "title": title}, {"goal": "g"}, caps)
    result = TemplateDecomposer().decompose(req)
    assert result.decomposer == f"template:{template}"
    assert_valid(result.to_response(), caps)


def test_context_extraction() -> None:
    values = extract_context(DecompositionRequest(
        {"task_id": "t", "title": "Call", "description": "Reach carol@example.com at +44 1234 567890"},
        {"target_customer": "Carol Campion (Bittersweet Farm, breeder)", "address": "1 Farm Lane"}, []))
    assert values["contact_name"] == "Carol Campion" and values["contact_first_name"] == "Carol"
    assert values["organisation"] == "Bittersweet Farm"
    assert values["contact_email"] == "carol@example.com"
    assert values["contact_phone"] == "+44 1234 567890"
    assert values["address"] == "1 Farm Lane"
    assert topics_from("Discuss pricing, delivery and support") == ["Pricing", "Delivery", "Support"]


def test_confidence_formula() -> None:
    assert compute_confidence(ConfidenceInputs(base=1.0)) == 1.0
    # 1.0 - 0.9 * 1/3 - 0.05 * 2 - 0.1 * 1 = 0.5
    assert compute_confidence(ConfidenceInputs(base=1.0, planned=3, uncovered=1, missing_params=2, repairs=1)) == 0.5
    assert compute_confidence(ConfidenceInputs(base=0.5, planned=2, uncovered=2, repairs=3)) == 0.0  # clamped
    assert compute_confidence(ConfidenceInputs(base=1.5)) == 1.0
    assert compute_confidence(ConfidenceInputs(base=1.0, kept=0)) == 0.0
    assert template_match_base(0) == 0.0
    assert template_match_base(1) == pytest.approx(0.6)
    assert template_match_base(3) == 1.0 and template_match_base(10) == 1.0
    assert agreement_base(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert agreement_base(["a"], ["b"]) == pytest.approx(0.6)
    assert agreement_base(["a", "b"], ["a", "c"]) == pytest.approx(0.6 + 0.4 / 3)
    assert agreement_base(["a"], None) == 0.7


def test_normalise_repairs_or_refuses() -> None:
    raw = [{"subtask_id": "x", "title": "A", "action": "send_email", "depends_on": ["b", "ghost"]},
           {"subtask_id": "b", "title": "B", "action": "send_email", "depends_on": ["x"]},
           {"subtask_id": "b", "title": "C", "action": "send_email"},
           {"title": "", "action": "send_email"}]
    norm = normalise_subtasks("t", raw, {"send_email"})
    assert [s["subtask_id"] for s in norm.subtasks] == ["x", "b", "t_c"]
    assert norm.repairs == 4  # unknown id, cycle, duplicate id, no title
    assert norm.execution_sequence.index("x") < norm.execution_sequence.index("b")
    with pytest.raises(ValidationFailed) as exc:
        normalise_subtasks("t", raw[:2], {"send_email"}, strict=True)
    assert exc.value.details["unknown_prerequisites"] == {"x": ["ghost"]}
    with pytest.raises(ValidationFailed):
        normalise_subtasks("t", [{"subtask_id": "a", "title": "A", "action": "fly"}], {"send_email"}, strict=True)
    assert [subtask_suffix(i) for i in (0, 25, 26, 27)] == ["a", "z", "aa", "ab"]


def test_decomposer_for_reads_the_settings() -> None:
    def settings(**env: str) -> Settings:
        return Settings.from_env({"SECRET_KEY": "k", **env})

    assert isinstance(decomposer_for(settings()), TemplateDecomposer)
    assert isinstance(decomposer_for(settings(LLM_BASE_URL="http://127.0.0.1:9/v1")), LLMDecomposer)
    assert isinstance(decomposer_for(settings(LLM_BASE_URL="http://x/v1", DECOMPOSER="template")),
                      TemplateDecomposer)


def test_decompose_task_applies_only_at_the_settings_threshold(db, migrated: Settings) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        plan = make_plan(s, owner, "plan_t", n_tasks=0)
        plan.tasks.append(PlanTask(id="task_1_1", title="Interview Carol", position=0))
        me = Principal("user", owner.id)
    template = migrated.replace(decomposer="template", llm_base_url=None)
    strict = template.replace(decomposition_apply_threshold=1.0)
    proposal = decompose_task(db, strict, guide_request(), apply_to=ApplyTo(me, "plan_t"), warnings=["first"])
    body = proposal.to_response()
    assert (body["applied"], body["proposal"], body["apply_threshold"]) == (False, True, 1.0)
    assert body["warnings"][0] == "first"
    with db.reading() as s:
        assert not s.get(PlanTask, ("plan_t", "task_1_1")).subtasks
    applied = decompose_task(db, template, guide_request(), apply_to=ApplyTo(me, "plan_t"))
    assert applied.applied and applied.apply_threshold == 0.75
    with db.reading() as s:
        assert [x.id for x in s.get(PlanTask, ("plan_t", "task_1_1")).subtasks] == applied.result.execution_sequence
    assert "applied" not in decompose_task(db, template, guide_request()).to_response()


def test_apply_decomposition_writes_subtasks_and_refuses_a_second_time(db) -> None:
    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        plan = make_plan(s, owner, "plan_d", n_tasks=2, n_subtasks=1)
        plan.tasks.append(PlanTask(id="task_1_1", title="Interview Carol", position=2))
        owner_id = owner.id
    me = Principal("user", owner_id)
    result = TemplateDecomposer().decompose(guide_request())
    with db.unit_of_work() as s:
        apply_decomposition(s, me, "plan_d", "task_1_1", result, utcnow())
    with db.reading() as s:
        task = s.get(PlanTask, ("plan_d", "task_1_1"))
        assert task.decomposed and task.decomposition_confidence == result.decomposition_confidence
        assert [x.id for x in task.subtasks] == result.execution_sequence
        assert task.subtasks[1].prerequisite_subtask_ids == ["task_1_1_a"]
        assert task.subtasks[0].success_criteria and task.subtasks[0].failure_handling
        assert "contact_email" in task.decomposition_notes
    with db.unit_of_work() as s, pytest.raises(Conflict):
        apply_decomposition(s, me, "plan_d", "task_1_1", result, utcnow())
    smaller = DecompositionResult("task_1_1", 0.8, [
        {"subtask_id": "task_1_1_z", "title": "Only", "action": "send_email", "params": {}, "depends_on": []}],
        ["task_1_1_z"])
    with db.unit_of_work() as s:
        apply_decomposition(s, me, "plan_d", "task_1_1", smaller, utcnow(), replace=True)
    with db.reading() as s:
        assert [x.id for x in s.get(PlanTask, ("plan_d", "task_1_1")).subtasks] == ["task_1_1_z"]
    # An id another task already uses is refused, and nothing changes.
    clash = DecompositionResult("task_1_1", 0.8, [
        {"subtask_id": "task_0_a", "title": "Clash", "action": "send_email", "params": {}, "depends_on": []}],
        ["task_0_a"])
    with db.unit_of_work() as s, pytest.raises(ValidationFailed):
        apply_decomposition(s, me, "plan_d", "task_1_1", clash, utcnow(), replace=True)
    with db.reading() as s:
        assert [x.id for x in s.get(PlanTask, ("plan_d", "task_1_1")).subtasks] == ["task_1_1_z"]


def test_executions_created_after_applying_run_the_new_subtasks(db) -> None:
    from orchestrator.executions import create_execution
    from orchestrator.scheduling import claim_work
    from tests.factories import make_agent

    with db.unit_of_work() as s:
        owner = make_user(s, "mark")
        caps = [{"action": a, "params": []} for a in GUIDE_REQUEST["agent_capabilities"]]
        make_agent(s, "agent_ba", capabilities=caps)
        plan = make_plan(s, owner, "plan_run", n_tasks=0)
        plan.tasks.append(PlanTask(id="task_1_1", title="Interview Carol", position=0))
        owner_id = owner.id
    result = TemplateDecomposer().decompose(guide_request())
    with db.unit_of_work() as s:
        apply_decomposition(s, Principal("user", owner_id), "plan_run", "task_1_1", result, utcnow())
    with db.unit_of_work() as s:
        create_execution(s, owner_id, "plan_run", utcnow(), execution_id="exec_run").status = "QUEUED"
    with db.unit_of_work() as s:
        work = claim_work(s, "agent_ba", None, utcnow()).payload
    assert work["execution_id"] == "exec_run"
    assert work["next_task"]["task_id"] == result.execution_sequence[0]
    assert work["next_task"]["action"] in GUIDE_REQUEST["agent_capabilities"]
