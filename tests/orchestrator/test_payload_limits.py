"""check_storable: what a JSON value from outside may hold, and the parsers that feed it (plan files, PlanExe, LLM)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import time
from pathlib import Path

import pytest

from orchestrator.decomposition.llm import InvalidReply, parse_reply
from orchestrator.errors import UnstorableValue, ValidationFailed
from orchestrator.payload_limits import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_KEY_CHARS,
    MAX_STRING_CHARS,
    MAX_VALUES,
    check_storable,
)
from orchestrator.plan_files import load_plan_text
from orchestrator.planexe import planexe_to_plan
from tests.orchestrator.test_planexe import FIXTURE

EVENT = {"agent_id": "agent_larry", "agent_timestamp": "2024-05-01T10:00:00+00:00", "event_type": "task_complete",
         "task_id": "task_3", "subtask_id": "task_3_b", "status": "success", "message": "Sent. " * 30,
         "output_data": {"email_id": "msg_8f2a9c", "recipients": ["carol@example.com"], "attempts": 2,
                         "latency_ms": 812.5, "crm": {"record": {"id": 12345, "tags": ["lead", "vip"], "ok": True,
                                                                 "note": None, "name": "Zoë Ångström ✓"}}},
         "suggestions": ["Follow up"], "idempotency_key": "task_3_b-complete-1"}


def nested(depth: int) -> list:
    """`depth` arrays, one inside the other."""
    root: list = []
    inner = root
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return root


def refusal(value: object, **kw: str) -> UnstorableValue:
    with pytest.raises(UnstorableValue) as info:
        check_storable(value, **kw)
    err = info.value
    assert err.code == "unstorable_value" and isinstance(err, ValidationFailed)  # so the API answers 422
    assert err.details["field"] in err.message
    return err


def test_ordinary_values_pass() -> None:
    for value in (EVENT, {}, [], None, True, 0, -1.5, "", "tab\tnewline\n", {"a": [1, 2.5, None, False, "é"]},
                  INT_MAX, INT_MIN, "x" * MAX_STRING_CHARS, {"k" * MAX_KEY_CHARS: 1}, nested(MAX_DEPTH),
                  (1, 2), {"emoji": "\U0001F600"}):
        check_storable(value)


@pytest.mark.parametrize(("value", "field", "problem"), [
    ({"output_data": {"a": {"b": [0, 1, 2, "poison\x00"]}}}, "output_data.a.b[3]", "NUL"),
    ({"params": {"poison\x00": 1}}, "params.poison\\u0000", "(an object key) contains the NUL"),
    ({"s": "lone \ud800 surrogate"}, "s", "lone surrogate"),
    ({"s": ["ok", "\udfff"]}, "s[1]", "lone surrogate"),
    ({"k\udc80": 1}, "k\\udc80", "lone surrogate"),
    ({"n": 2**70}, "n", "64-bit"),
    ({"n": -(2**70)}, "n", "64-bit"),
    ({"n": INT_MAX + 1}, "n", "64-bit"),
    ({"n": INT_MIN - 1}, "n", "64-bit"),
    ({"f": float("nan")}, "f", "finite"),
    ({"f": [float("inf")]}, "f[0]", "finite"),
    ({"f": float("-inf")}, "f", "finite"),
    ({"deep": nested(MAX_DEPTH)}, "deep" + "[0]" * (MAX_DEPTH - 1), "deeper than 32"),
    ({"s": "x" * (MAX_STRING_CHARS + 1)}, "s", "longer than 1,048,576"),
    ({"k" * (MAX_KEY_CHARS + 1): 1}, "k" * 40 + "…", "longer than 256"),
    ({"d": dt.date(2024, 5, 1)}, "d", "type date"),
    ({"d": dt.datetime(2024, 5, 1, tzinfo=dt.UTC)}, "d", "type datetime"),
    ({"b": b"bytes"}, "b", "type bytes"),
    ({"s": {1, 2}}, "s", "type set"),
    ({"o": object()}, "o", "type object"),
    ({1: "x"}, "1", "key of type int"),
    ({"m": {True: "on"}}, "m.True", "key of type bool"),
    ("\x00", "(top level)", "NUL"),
    (2**64, "(top level)", "64-bit"),
])
def test_poison_is_refused_naming_the_field(value: object, field: str, problem: str) -> None:
    err = refusal(value)
    assert err.details["field"] == field
    assert problem in err.details["problem"]


def test_subclasses_are_judged_by_their_value() -> None:
    class Big(enum.IntEnum):
        SMALL = 1
        HUGE = 2**70

    check_storable({"e": Big.SMALL})
    assert refusal({"e": Big.HUGE}).details["field"] == "e"


def test_where_and_origin_frame_the_path() -> None:
    err = refusal({"a": [1, "\x00"]}, where="context", origin="plan.yaml")
    assert err.details == {"field": "context.a[1]", "problem": "contains the NUL character (U+0000)",
                           "file": "plan.yaml"}
    assert err.message.startswith("plan.yaml: context.a[1] contains the NUL")
    assert refusal([[1, 2**70]], where="events").details["field"] == "events[0][1]"


def test_hostile_shapes_end_quickly_without_recursion() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    assert "deeper" in refusal({"loop": cyclic}).details["problem"]
    assert "deeper" in refusal(nested(100_000)).details["problem"]  # far past Python's recursion limit
    wide = [0] * (MAX_VALUES + 1)
    assert "more than 1,000,000 values" in refusal({"wide": wide}).details["problem"]
    # An alias bomb: nine levels of nine references to the level below, 9**9 values if expanded.
    level: list = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    started = time.perf_counter()
    assert "values in all" in refusal({"bomb": level}).details["problem"]
    assert time.perf_counter() - started < 5


def test_a_typical_event_is_checked_in_microseconds() -> None:
    rounds = 2000
    best = min(_timed(rounds) for _ in range(3))
    assert best / rounds < 100e-6  # ~5 µs on a laptop; generous so that a loaded CI machine passes


def _timed(rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        check_storable(EVENT)
    return time.perf_counter() - started


# -- the parsers that feed it ---------------------------------------------------------------------------------

PLAN_YAML = ("goal: g\ntasks:\n  - id: t\n    title: T\n    subtasks:\n      - id: a\n        title: A\n"
             "        params:\n")


@pytest.mark.parametrize(("params", "field", "problem"), [
    ('          k: "x\\0y"', "tasks[0].subtasks[0].params.k", "NUL"),
    ('          k: "\\ud800"', "tasks[0].subtasks[0].params.k", "surrogate"),
    ("          k: .nan", "tasks[0].subtasks[0].params.k", "finite"),
    ("          k: -.inf", "tasks[0].subtasks[0].params.k", "finite"),
    (f"          k: {2**70}", "tasks[0].subtasks[0].params.k", "64-bit"),
    ("          k: !!binary aGVsbG8=", "tasks[0].subtasks[0].params.k", "type bytes"),
    ("          k: !!set {a, b}", "tasks[0].subtasks[0].params.k", "type set"),
    ("          k: !!timestamp 2024-05-01", "tasks[0].subtasks[0].params.k", "type date"),
    ("          200: ok", "tasks[0].subtasks[0].params.200", "key of type int"),
    ("          on: push", "tasks[0].subtasks[0].params.True", "key of type bool"),
])
def test_yaml_plan_files_are_checked(params: str, field: str, problem: str) -> None:
    with pytest.raises(UnstorableValue) as info:
        load_plan_text(PLAN_YAML + params + "\n", "yaml", "plan.yaml")
    assert info.value.details["field"] == field and info.value.details["file"] == "plan.yaml"
    assert problem in info.value.details["problem"]


def test_yaml_dates_stay_the_text_written() -> None:
    data = load_plan_text(PLAN_YAML + "          due: 2024-05-01\n          at: 2024-05-01 10:00\n", "yaml", "p.yaml")
    assert data["tasks"][0]["subtasks"][0]["params"] == {"due": "2024-05-01", "at": "2024-05-01 10:00"}


def test_yaml_bombs_and_deep_files_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)) + "goal: g\n"
    with pytest.raises(UnstorableValue, match="values in all"):
        load_plan_text(bomb, "yaml", "bomb.yaml")
    with pytest.raises(ValidationFailed, match="nests too deeply"):
        load_plan_text("goal: " + "[" * 10_000 + "]" * 10_000, "yaml", "deep.yaml")


@pytest.mark.parametrize(("text", "expected"), [
    ('{"goal": "g", "context": {"k": "\\u0000"}}', "context.k contains the NUL"),
    ('{"goal": "g", "context": {"k": "\\ud800"}}', "context.k contains a lone surrogate"),
    ('{"goal": "g", "context": {"k": NaN}}', "context.k must be a finite number"),
    ('{"goal": "g", "context": {"k": 1e400}}', "context.k must be a finite number"),
    ('{"goal": "g", "context": {"k": -1180591620717411303424}}', "context.k is outside the 64-bit"),
    ('{"goal": "g", "context": ' + "[" * 10_000 + "]" * 10_000 + "}", "nests too deeply"),
    ('{"goal": "g", "context": ' + "[" * 40 + "]" * 40 + "}", "nests deeper than 32"),
])
def test_json_plan_files_are_checked(text: str, expected: str) -> None:
    with pytest.raises(ValidationFailed, match="p.json") as info:
        load_plan_text(text, "json", "p.json")
    assert expected in info.value.message


def planexe_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in Path(FIXTURE).iterdir() if p.suffix == ".json"}


@pytest.mark.parametrize(("poison", "field"), [("poison\u0000", "[0].resources_needed[0]"),
                                               (2**70, "[0].resources_needed[0]")])
def test_planexe_files_are_checked(poison: object, field: str) -> None:
    files = planexe_files()
    level3 = json.loads(files["003-wbs_level3.json"])
    level3[0]["resources_needed"] = [poison]
    files["003-wbs_level3.json"] = json.dumps(level3)
    with pytest.raises(UnstorableValue) as info:
        planexe_to_plan(files)
    assert info.value.details["file"] == "003-wbs_level3.json"
    assert info.value.details["field"] == field


def llm_body(content: str) -> dict:
    return {"choices": [{"message": {"content": content}}]}


@pytest.mark.parametrize(("content", "why"), [
    (json.dumps({"decomposed_subtasks": [{"title": "T", "action": "a", "params": {"to": "x\x00"}}]}), "NUL"),
    (json.dumps({"decomposed_subtasks": [{"title": "T", "action": "a", "params": {"n": 2**70}}]}), "64-bit"),
    ('{"decomposed_subtasks": [{"title": "T", "action": "a", "params": {"n": NaN}}]}', "finite"),
    ("[" * 10_000 + "]" * 10_000, "not JSON"),
])
def test_llm_replies_that_cannot_be_stored_are_invalid(content: str, why: str) -> None:
    with pytest.raises(InvalidReply, match=why):
        parse_reply(llm_body(content))
