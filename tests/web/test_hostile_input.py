"""Hostile bodies on every JSON endpoint: refused at the edge (400 / 413 / 422, our error shape), nothing written.

Each poison is raw JSON text put where an endpoint takes free-form data (plan context, subtask params,
resolve params, event output_data...), so that values orjson cannot even parse (NaN, a lone surrogate)
are tested as a client would send them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from orchestrator.credentials import issue_credential
from orchestrator.errors import UnstorableValue
from orchestrator.models import Base
from orchestrator.payload_limits import MAX_STRING_CHARS
from tests.factories import block_subtask, make_agent, make_execution, make_plan, make_user_with_token
from tests.web.helpers import assert_error
from tests.workers.helpers import Scene, claim
from web.json_body import parse_body
from web.schemas.events import EventSchema

MAX_BODY = 2 * 1024 * 1024  # the test app's MAX_BODY_BYTES: room for a string past MAX_STRING_CHARS
AGENT = "agent_mark"


@pytest.fixture
def app(migrated, db, redis):
    """The conftest app with a small body limit, and no wait for a worker (none runs here)."""
    from web.app import create_app

    flask_app = create_app(migrated.replace(max_body_bytes=MAX_BODY, ingest_reply_wait_ms=0))
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["db"].dispose()


@pytest.fixture
def auth(db, redis, migrated) -> dict[str, dict[str, str]]:
    """Mark (operator), his agent holding task_0_a of exec_q (so its events reach the queue), a blocked execution."""
    with db.unit_of_work() as s:
        mark, token = make_user_with_token(s, "mark")
        make_agent(s, AGENT, owner_id=mark.id, capabilities=[{"action": "send_email", "params": []}])
        _, agent_key = issue_credential(s, agent_id=AGENT)
        plan = make_plan(s, mark, "plan_mark", n_tasks=1, n_subtasks=2)
        make_execution(s, mark, plan, status="QUEUED", execution_id="exec_q")
        make_execution(s, mark, plan, status="RUNNING", execution_id="exec_blocked")
        make_plan(s, mark, "plan_free", n_tasks=1, n_subtasks=1)  # no execution: its subtasks may be replaced
        block_subtask(s, "exec_blocked", "task_0_a")
    claim(db, redis, migrated, Scene(mark.id, AGENT, agent_key, "exec_q"), "task_0_a")
    return {"mark": {"Authorization": f"Bearer {token}"}, "agent": {"Authorization": f"Bearer {agent_key}"}}


@dataclass(frozen=True)
class Endpoint:
    method: str
    url: str
    who: str
    template: str  # a body with "@" where the poison goes
    field: str  # the path of "@" in the body
    plain: str = '"plain"'  # a harmless value for "@", with which the request succeeds

    def body(self, raw: str) -> str:
        return self.template.replace("@", raw)


ENDPOINTS = {
    "plans.context": Endpoint("POST", "/api/plans", "mark", '{"goal": "g", "context": {"k": @}}', "context.k"),
    "plans.params": Endpoint(
        "POST", "/api/plans", "mark",
        '{"goal": "g", "tasks": [{"id": "t", "title": "T", "subtasks": [{"id": "a", "title": "A", '
        '"params": {"k": @}}]}]}',
        "tasks[0].subtasks[0].params.k"),
    "resolve.params": Endpoint("POST", "/api/executions/exec_blocked/tasks/task_0/resolve", "mark",
                               '{"option": "retry_task", "params": {"k": @}}', "params.k"),
    "decompose.plan_context": Endpoint("POST", f"/api/agents/{AGENT}/decompose", "mark",
                                       '{"task": {"task_id": "t9", "title": "T"}, "plan_context": {"k": @}}',
                                       "plan_context.k"),
    "decomposition.params": Endpoint(
        "POST", "/api/plans/plan_free/tasks/task_0/decomposition", "mark",
        '{"decomposed_subtasks": [{"subtask_id": "task_0_x", "title": "X", "params": {"k": @}}], "replace": true}',
        "decomposed_subtasks[0].params.k"),
    "import.json": Endpoint("POST", "/api/plans/import", "mark", '{"format": "plan", "files": {"p.yaml": @}}',
                            "files.p.yaml", plain='"goal: plain"'),
    "agents.create": Endpoint("POST", "/api/agents", "mark",
                              '{"name": "x", "capabilities": [{"action": "a", "params": [@]}]}',
                              "capabilities[0].params[0]"),
    "executions.create": Endpoint("POST", "/api/executions", "mark", '{"plan_id": "plan_mark", "execution_id": @}',
                                  "execution_id"),
    "executions.patch": Endpoint("PATCH", "/api/executions/exec_q", "mark", '{"status": @}', "status",
                                 plain='"PAUSED"'),
    "events.one": Endpoint("POST", "/api/executions/exec_q/events", "agent",
                           f'{{"agent_id": "{AGENT}", "event_type": "heartbeat", "output_data": {{"k": @}}}}',
                           "output_data.k"),
    "events.batch": Endpoint(
        "POST", "/api/events/batch", "agent",
        f'{{"events": [{{"execution_id": "exec_q", "agent_id": "{AGENT}", "event_type": "heartbeat", '
        f'"output_data": {{"k": @}}}}]}}',
        "events[0].output_data.k"),
}

# (raw JSON text, status, what the field path ends with after the endpoint's own path; None: not parsed)
POISONS = {
    "nul_in_string": ('"poison\\u0000"', 422, ""),
    "nul_in_key": ('{"poison\\u0000": 1}', 422, ".poison\\u0000"),
    "lone_surrogate": ('"\\ud800"', 400, None),
    "nan": ("NaN", 400, None),
    "infinity": ("Infinity", 400, None),
    "minus_infinity": ("-Infinity", 400, None),
    "int_2_70": (str(2**70), 422, ""),
    "int_minus_2_70": (str(-(2**70)), 422, ""),
    "int_2_64": (str(2**64), 422, ""),
    "float_1e400": ("1e400", 400, None),
    "depth_40": ("[" * 40 + "]" * 40, 422, "[0]"),
    "depth_10000": ("[" * 10_000 + "]" * 10_000, 400, None),
    "long_string": ('"' + "x" * (MAX_STRING_CHARS + 1) + '"', 422, ""),
    "long_key": ('{"' + "k" * 300 + '": 1}', 422, "." + "k" * 40 + "…"),
}


def snapshot_rows(db) -> tuple[int, ...]:
    with db.reading() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables)


def snapshot(db, redis, prefix: str) -> tuple[tuple[int, ...], int]:
    """Rows in every table, and entries in every Redis stream of this run (the event queue's shards)."""
    entries = sum(redis.xlen(k) for k in redis.scan_iter(f"{prefix}*") if redis.type(k) == b"stream")
    return snapshot_rows(db), entries


def send(client, auth, endpoint: Endpoint, body: str | bytes):
    return client.open(endpoint.url, method=endpoint.method, data=body, content_type="application/json",
                       headers=auth[endpoint.who])


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("name", ENDPOINTS)
def test_poison_is_refused_at_the_edge(client, auth, db, redis, migrated, name: str, poison: str) -> None:
    endpoint = ENDPOINTS[name]
    raw, status, suffix = POISONS[poison]
    before = snapshot(db, redis, migrated.redis_key_prefix)
    resp = send(client, auth, endpoint, endpoint.body(raw))
    if status == 400:
        err = assert_error(resp, 400, "bad_request")
        assert "Failed to decode JSON" in err["message"]
    else:
        err = assert_error(resp, 422, "unstorable_value")
        assert err["details"]["field"].startswith(endpoint.field + suffix), err
        assert err["details"]["field"] in err["message"]
    assert snapshot(db, redis, migrated.redis_key_prefix) == before


@pytest.mark.parametrize("name", ENDPOINTS)
def test_the_same_bodies_without_poison_succeed(client, auth, name: str) -> None:
    """Control: with a plain value each body is accepted, so the refusals above are the poison's doing."""
    endpoint = ENDPOINTS[name]
    resp = send(client, auth, endpoint, endpoint.body(endpoint.plain))
    assert 200 <= resp.status_code < 300, resp.get_json()


@pytest.mark.parametrize("name", ENDPOINTS)
def test_a_body_past_the_limit_is_413(client, auth, db, redis, migrated, name: str) -> None:
    endpoint = ENDPOINTS[name]
    before = snapshot(db, redis, migrated.redis_key_prefix)
    resp = send(client, auth, endpoint, endpoint.body('"' + "x" * MAX_BODY + '"'))
    err = assert_error(resp, 413, "request_entity_too_large")
    assert err["details"] == {"max_bytes": MAX_BODY}
    assert snapshot(db, redis, migrated.redis_key_prefix) == before


@pytest.mark.parametrize("name", ["events.one", "events.batch"])
@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_a_timestamp_without_a_utc_instant_is_422(client, auth, db, redis, migrated, name: str, stamp: str) -> None:
    endpoint = ENDPOINTS[name]
    before = snapshot(db, redis, migrated.redis_key_prefix)
    body = endpoint.body("1").replace('"event_type"', f'"agent_timestamp": "{stamp}", "event_type"')
    err = assert_error(send(client, auth, endpoint, body), 422, "invalid_request")
    details = err["details"] if name == "events.one" else err["details"]["events"]["0"]
    assert "outside years 1-9999" in details["agent_timestamp"][0]
    assert snapshot(db, redis, migrated.redis_key_prefix) == before


@pytest.mark.parametrize("query", ["event_type=a%00b", "before=evt%00x", "event_type=%ED%A0%80"])
def test_query_strings_that_reach_sql_are_checked(client, auth, query: str) -> None:
    err = assert_error(client.get(f"/api/executions/exec_q/events?{query}", headers=auth["mark"]), 422,
                       "invalid_request")
    assert query.split("=")[0] in err["details"]


def _cursor(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("url", [
    f"/api/executions?cursor={_cursor('2026-01-01T00:00:00+00:00|exec' + chr(0))}",
    f"/api/plans?cursor={_cursor('0001-01-01T00:00:00+01:00|plan_x')}",
    f"/api/plans?cursor={_cursor('2026-01-01T00:00:00|plan_x')}",
])
def test_cursors_that_were_not_made_here_are_422(client, auth, url: str) -> None:
    assert_error(client.get(url, headers=auth["mark"]), 422, "validation_failed")


@pytest.mark.parametrize("actions", ["a%00b", "send_email,a%01b", "x" * 121])
def test_poll_actions_are_checked(client, auth, actions: str) -> None:
    err = assert_error(client.get(f"/api/agents/{AGENT}/work?supported_actions={actions}", headers=auth["agent"]),
                       422, "invalid_request")
    assert "supported_actions" in err["details"]


@pytest.mark.parametrize("data", [b'{"n": 9223372036854775807, "s": "12345678901234567890", "f": 1e21}',
                                  '{"n": 9223372036854775807, "s": "12345678901234567890", "f": 1e21}'])
def test_long_digit_runs_that_fit_are_kept_exactly(data: str | bytes) -> None:
    value = parse_body(data)
    assert value == {"n": 2**63 - 1, "s": "12345678901234567890", "f": 1e21}
    assert type(value["n"]) is int and type(value["f"]) is float


@pytest.mark.parametrize("data", [b'{"a": [1, 1180591620717411303424]}', '{"a": [1, -9223372036854775809]}'])
def test_integers_orjson_would_round_are_refused(data: str | bytes) -> None:
    with pytest.raises(UnstorableValue) as info:
        parse_body(data)
    assert info.value.details["field"] == "a[1]"


def test_agent_timestamps_load_as_utc() -> None:
    body = EventSchema().load({"agent_id": AGENT, "event_type": "heartbeat",
                               "agent_timestamp": "2024-05-01T12:00:00+02:00"})
    assert body["agent_timestamp"].isoformat() == "2024-05-01T10:00:00+00:00"


# -- plan files: JSON bodies carrying files, and multipart uploads ------------------------------------------------

PARAMS_FIELD = "tasks[0].subtasks[0].params.k"
JSON_PLAN = ENDPOINTS["plans.params"].template
YAML_PLAN = ("goal: g\ntasks:\n  - id: t\n    title: T\n    subtasks:\n      - id: a\n        title: A\n"
             "        params:\n          k: @\n")

# (file name, file text, what the error message says); the field, when named, is PARAMS_FIELD.
FILE_POISONS = {
    "json_nul": ("p.json", JSON_PLAN.replace("@", '"x\\u0000"'), "NUL"),
    "json_surrogate": ("p.json", JSON_PLAN.replace("@", '"\\ud800"'), "lone surrogate"),
    "json_nan": ("p.json", JSON_PLAN.replace("@", "NaN"), "finite"),
    "json_1e400": ("p.json", JSON_PLAN.replace("@", "1e400"), "finite"),
    "json_2_70": ("p.json", JSON_PLAN.replace("@", str(2**70)), "64-bit"),
    "json_depth_40": ("p.json", JSON_PLAN.replace("@", "[" * 40 + "]" * 40), "deeper than 32"),
    "json_depth_10000": ("p.json", JSON_PLAN.replace("@", "[" * 10_000 + "]" * 10_000), "nests too deeply"),
    "yaml_nul": ("p.yaml", YAML_PLAN.replace("@", '"x\\0"'), "NUL"),
    "yaml_surrogate": ("p.yaml", YAML_PLAN.replace("@", '"\\ud800"'), "lone surrogate"),
    "yaml_nan": ("p.yaml", YAML_PLAN.replace("@", ".nan"), "finite"),
    "yaml_2_70": ("p.yaml", YAML_PLAN.replace("@", str(2**70)), "64-bit"),
    "yaml_binary": ("p.yaml", YAML_PLAN.replace("@", "!!binary aGVsbG8="), "type bytes"),
    "yaml_timestamp": ("p.yaml", YAML_PLAN.replace("@", "!!timestamp 2024-05-01"), "type date"),
    "yaml_depth_10000": ("p.yaml", YAML_PLAN.replace("@", "[" * 10_000 + "]" * 10_000), "nests too deeply"),
    "yaml_long_string": ("p.yaml", YAML_PLAN.replace("@", "x" * (MAX_STRING_CHARS + 1)), "longer than"),
}


def upload(client, auth, name: str, content: bytes):
    return client.post("/api/plans/import", data={"file": (io.BytesIO(content), name)},
                       content_type="multipart/form-data", headers=auth["mark"])


@pytest.mark.parametrize("how", ["json", "multipart"])
@pytest.mark.parametrize("poison", FILE_POISONS)
def test_poisoned_plan_files_are_422_naming_file_and_field(client, auth, db, redis, migrated, how: str,
                                                            poison: str) -> None:
    name, text, says = FILE_POISONS[poison]
    before = snapshot(db, redis, migrated.redis_key_prefix)
    if how == "json":
        resp = client.post("/api/plans/import", json={"format": "plan", "files": {name: text}}, headers=auth["mark"])
    else:
        resp = upload(client, auth, name, text.encode("utf-8", "surrogatepass"))
    err = assert_error(resp, 422)
    assert snapshot(db, redis, migrated.redis_key_prefix) == before
    assert says in err["message"] and name in err["message"], err
    if how == "json" and len(text) > MAX_STRING_CHARS:  # the file is itself a string past the limit: upload it
        assert err["details"]["field"] == f"files.{name}"
        return
    assert err["details"]["file"] == name
    if "nests too deeply" not in says:
        assert err["details"]["field"].startswith(PARAMS_FIELD)


def test_file_content_with_a_nul_in_the_body_is_refused_as_a_body_field(client, auth) -> None:
    resp = client.post("/api/plans/import", json={"format": "plan", "files": {"p.json": "\x00"}}, headers=auth["mark"])
    assert assert_error(resp, 422, "unstorable_value")["details"]["field"] == "files.p.json"


def test_uploaded_surrogate_bytes_and_oversized_uploads(client, auth, db, redis, migrated) -> None:
    before = snapshot(db, redis, migrated.redis_key_prefix)
    assert "not UTF-8" in assert_error(upload(client, auth, "p.yaml", b'goal: "\xed\xa0\x80"'), 422)["message"]
    assert_error(upload(client, auth, "p.yaml", b"goal: " + b"x" * MAX_BODY), 413, "request_entity_too_large")
    assert snapshot(db, redis, migrated.redis_key_prefix) == before


def test_yaml_dates_are_kept_as_written(client, auth) -> None:
    resp = upload(client, auth, "p.yaml", YAML_PLAN.replace("@", "2024-05-01").encode())
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["plan"]["tasks"][0]["subtasks"][0]["params"] == {"k": "2024-05-01"}


@pytest.mark.parametrize("poison", ["yaml_nul", "yaml_2_70", "json_nan", "json_depth_10000"])
def test_the_cli_refuses_poisoned_plan_files_in_one_line(db, migrated, tmp_path, poison: str) -> None:
    from click.testing import CliRunner

    from cli.main import main

    name, text, says = FILE_POISONS[poison]
    with db.unit_of_work() as s:
        make_user_with_token(s, "mark")
    (tmp_path / name).write_text(text)
    before = snapshot_rows(db)
    env = {"DATABASE_URL": migrated.database_url, "ORCHESTRATOR_DATA_DIR": str(migrated.data_dir),
           "SECRET_KEY": migrated.secret_key}
    result = CliRunner().invoke(main, ["plans", "import", str(tmp_path / name), "--owner", "mark"], env=env)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert says in result.output and name in result.output and "Traceback" not in result.output
    assert snapshot_rows(db) == before


# -- properties: nothing a client sends answers 5xx ----------------------------------------------------------------

TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["\x00", "poison\x00", "\ud800", "x" * 300])
SCALARS = (st.none() | st.booleans() | st.integers() | st.sampled_from([2**63, -(2**63) - 1, 2**70, -(2**70)])
           | st.floats(allow_nan=True, allow_infinity=True) | TEXT)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=30)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_never_5xx(resp) -> None:
    assert resp.status_code < 500, resp.get_data(as_text=True)[:500]
    if resp.status_code >= 400:
        err = resp.get_json()["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str)


def shaped(value: object) -> dict[str, str]:
    """`value` alone as a body, and inside each endpoint's free-form field, as JSON text (NaN kept as a literal)."""
    text = json.dumps(value, allow_nan=True)
    return {"events.one": ENDPOINTS["events.one"].body(text), "events.batch": ENDPOINTS["events.batch"].body(text),
            "plans.context": ENDPOINTS["plans.context"].body(text), "bare": text}


@PROPERTY
@given(value=JSON_VALUES)
def test_any_json_value_never_answers_5xx(client, auth, value) -> None:
    for name, body in shaped(value).items():
        targets = [ENDPOINTS[name]] if name != "bare" else [ENDPOINTS[n] for n in ("events.one", "events.batch",
                                                                                    "plans.context")]
        for endpoint in targets:
            assert_never_5xx(send(client, auth, endpoint, body.encode("utf-8", "surrogatepass")))


@PROPERTY
@given(raw=st.binary(max_size=200) | st.builds(lambda v, cut: json.dumps(v, allow_nan=True).encode(
    "utf-8", "surrogatepass")[:cut], JSON_VALUES, st.integers(0, 200)))
def test_any_bytes_never_answer_5xx(client, auth, raw: bytes) -> None:
    for name in ("events.one", "events.batch", "plans.context"):
        assert_never_5xx(send(client, auth, ENDPOINTS[name], raw))
