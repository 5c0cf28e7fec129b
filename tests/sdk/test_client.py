"""The agent client: polling and the loop against a fake transport, reporting against the live server."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from orchestrator_sdk import client as client_mod
from orchestrator_sdk.client import AgentClient, AgentClientError, HumanReviewNeeded, Work
from requests.adapters import BaseAdapter
from sqlalchemy import select

from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask
from tests.workers.helpers import claim, queued_execution

BASE = "http://agents.test"


class FakeServer(BaseAdapter):
    """A requests transport that answers from a list of canned (status, body) replies per route."""

    def __init__(self, routes: dict[tuple[str, str], list[tuple[int, Any]]]) -> None:
        super().__init__()
        self.routes = routes
        self.calls: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        self.calls.append(request)
        path = urlsplit(request.url).path
        replies = self.routes.get((request.method, path))
        if not replies:
            status, body = 404, {"error": {"code": "not_found", "message": path}}
        else:
            status, body = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(body, Exception):
            raise body
        resp = requests.Response()
        resp.status_code = status
        resp._content = b"" if body is None else json.dumps(body).encode()
        resp.headers["Content-Type"] = "application/json"
        resp.url = request.url
        resp.request = request
        return resp

    def close(self) -> None:
        pass

    def bodies(self, method: str = "POST") -> list[dict[str, Any]]:
        return [json.loads(c.body) for c in self.calls if c.method == method]


def fake_client(routes: dict[tuple[str, str], list[tuple[int, Any]]]) -> tuple[AgentClient, FakeServer]:
    server = FakeServer(routes)
    session = requests.Session()
    session.mount(BASE, server)
    return AgentClient(BASE, "agent_larry", "key-123", session=session), server


WORK = {
    "work_available": True, "execution_id": "exec_1", "plan_id": "plan_1",
    "next_task": {"task_id": "task_0_a", "title": "Send email", "action": "send_email",
                  "params": {"to": "carol@example.com"}, "timeout_hours": 24, "retry_policy": {}, "context": {}},
    "force_pause": False, "force_cancel": False,
}
WORK_PATH = ("GET", "/api/agents/agent_larry/work")
EVENTS_PATH = ("POST", "/api/executions/exec_1/events")


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "BACKOFF_SECONDS", 0.001)


def test_poll_returns_work_or_none() -> None:
    agent, server = fake_client({WORK_PATH: [(200, WORK), (204, None)]})
    work = agent.poll(["send_email", "make_phone_call"])
    assert isinstance(work, Work)
    assert (work.execution_id, work.plan_id, work.task_id) == ("exec_1", "plan_1", "task_0_a")
    assert work.task["params"] == {"to": "carol@example.com"} and work.raw == WORK
    assert not work.force_pause and not work.force_cancel
    query = parse_qs(urlsplit(server.calls[0].url).query)
    assert query == {"supported_actions": ["send_email,make_phone_call"]}
    assert server.calls[0].headers["Authorization"] == "Bearer key-123"
    assert agent.poll() is None
    assert urlsplit(server.calls[1].url).query == ""


def test_report_retries_5xx_with_one_idempotency_key_and_raises_on_4xx() -> None:
    ok = {"event_id": "evt_1", "status": "RUNNING"}
    agent, server = fake_client({EVENTS_PATH: [(503, {"error": {}}), (502, None), (201, ok)]})
    assert agent.report("exec_1", "heartbeat", message="alive") == ok
    bodies = server.bodies()
    assert len(bodies) == 3 and len({b["idempotency_key"] for b in bodies}) == 1
    assert bodies[0]["agent_id"] == "agent_larry" and bodies[0]["agent_timestamp"].endswith("Z")
    assert "task_id" not in bodies[0] and bodies[0]["message"] == "alive"

    agent, server = fake_client({EVENTS_PATH: [(409, {"error": {"code": "not_holder", "message": "no"}})]})
    with pytest.raises(AgentClientError) as info:
        agent.report("exec_1", "task_complete", "task_0_a")
    assert info.value.status == 409 and info.value.code == "not_holder"
    assert len(server.calls) == 1  # a refusal is not retried


def test_report_retries_connection_errors_then_gives_up() -> None:
    agent, server = fake_client({EVENTS_PATH: [(0, requests.ConnectionError("down"))]})
    with pytest.raises(requests.ConnectionError):
        agent.heartbeat("exec_1")
    assert len(server.calls) == client_mod.MAX_RETRIES + 1


def test_report_waits_for_a_202_outcome() -> None:
    agent, server = fake_client({
        EVENTS_PATH: [(202, {"event_id": "evt_9", "status": "accepted", "status_url": "/api/events/evt_9"})],
        ("GET", "/api/events/evt_9"): [(202, {"state": "pending"}),
                                       (200, {"state": "applied", "outcome": {"next_task_id": "task_0_b"}})],
    })
    assert agent.report("exec_1", "task_complete", "task_0_a") == {"next_task_id": "task_0_b"}
    receipt = agent.report("exec_1", "task_complete", "task_0_a", wait=False)
    assert receipt["status_url"] == "/api/events/evt_9"


def test_run_works_completes_and_reports_failures() -> None:
    second = {**WORK, "next_task": {**WORK["next_task"], "task_id": "task_0_b"}}
    third = {**WORK, "next_task": {**WORK["next_task"], "task_id": "task_0_c"}}
    stop = threading.Event()
    agent, server = fake_client({
        WORK_PATH: [(200, WORK), (200, second), (200, third), (204, None)],
        EVENTS_PATH: [(201, {"status": "RUNNING"})],
    })
    seen: list[str] = []

    def handler(work: Work) -> dict[str, Any]:
        seen.append(work.task_id)
        if work.task_id == "task_0_b":
            raise HumanReviewNeeded("Email bounced.", ["Call Carol"])
        if work.task_id == "task_0_c":
            raise ValueError("SMTP timed out")
        return {"email_sent_to": work.task["params"]["to"]}

    def stopper() -> None:
        # Stop once the fake queue is empty (the fourth poll on answers 204).
        while sum(1 for c in server.calls if c.method == "GET") < 4:
            threading.Event().wait(0.01)
        stop.set()

    threading.Thread(target=stopper, daemon=True).start()
    done = agent.run(handler, stop=stop, idle_sleep=0.01)
    assert done == 1 and seen == ["task_0_a", "task_0_b", "task_0_c"]
    events = [(b["event_type"], b.get("task_id")) for b in server.bodies()]
    assert events == [("task_started", "task_0_a"), ("task_complete", "task_0_a"),
                      ("task_started", "task_0_b"), ("task_error", "task_0_b"),
                      ("task_started", "task_0_c"), ("task_error", "task_0_c")]
    complete, blocked, failed = server.bodies()[1], server.bodies()[3], server.bodies()[5]
    assert complete["output_data"] == {"email_sent_to": "carol@example.com"}
    assert blocked["human_review_required"] is True and blocked["blocking"] is True
    assert blocked["suggestions"] == ["Call Carol"] and blocked["error_message"] == "Email bounced."
    assert (failed["error_type"], failed["error_message"]) == ("ValueError", "SMTP timed out")
    assert failed["human_review_required"] is False


def test_run_calls_force_callbacks_without_working() -> None:
    stop = threading.Event()
    agent, _ = fake_client({WORK_PATH: [(200, {**WORK, "force_cancel": True, "next_task": None})]})
    cancelled: list[Work] = []

    def on_cancel(work: Work) -> None:
        cancelled.append(work)
        stop.set()

    def handler(work: Work) -> dict[str, Any]:
        raise AssertionError("no work is handed out with force_cancel")

    assert agent.run(handler, stop=stop, idle_sleep=0.01, on_force_cancel=on_cancel) == 0
    assert cancelled[0].force_cancel and cancelled[0].execution_id == "exec_1"


def test_a_lost_poll_answer_is_not_resent_but_a_lost_report_answer_is() -> None:
    # Resending a poll whose answer timed out would claim a second subtask; a report carries its key.
    agent, server = fake_client({WORK_PATH: [(0, requests.ReadTimeout("slow"))]})
    with pytest.raises(requests.ReadTimeout):
        agent.poll()
    assert len(server.calls) == 1
    agent, server = fake_client({EVENTS_PATH: [(0, requests.ReadTimeout("slow")), (201, {"status": "RUNNING"})]})
    assert agent.heartbeat("exec_1") == {"status": "RUNNING"}
    bodies = server.bodies()
    assert len(bodies) == 2 and bodies[0]["idempotency_key"] == bodies[1]["idempotency_key"]


def test_two_run_loops_of_one_client_never_run_a_redelivered_subtask_twice() -> None:
    """Loop A has the subtask and is working on it; loop B's poll is answered with it again (A's
    task_started is not applied yet, as far as this fake server is concerned): B must leave it to A."""
    redelivered = {**WORK, "redelivered": True}
    stop, b_saw_it = threading.Event(), threading.Event()
    agent, server = fake_client({WORK_PATH: [(200, WORK), (200, redelivered), (204, None)],
                                 EVENTS_PATH: [(201, {"status": "RUNNING"})]})
    seen: list[str] = []

    def handler(work: Work) -> dict[str, Any]:
        seen.append(work.task_id)
        threading.Thread(target=agent.run, args=(handler,), kwargs={"stop": stop, "idle_sleep": 0.01},
                         daemon=True).start()  # loop B, while A is in here
        b_saw_it.wait(5)
        return {}

    def calls(method: str) -> int:
        return sum(1 for c in server.calls if c.method == method)

    def watch() -> None:
        while calls("GET") < 3:  # A's poll, B's (the redelivery), B's next (204)
            threading.Event().wait(0.01)
        b_saw_it.set()
        while calls("POST") < 2:  # A's task_started and task_complete
            threading.Event().wait(0.01)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    timer = threading.Timer(10, stop.set)  # a guard: never hang the suite
    timer.start()
    try:
        assert agent.run(handler, stop=stop, idle_sleep=0.01) == 1
    finally:
        timer.cancel()
    assert seen == ["task_0_a"]
    assert [b["event_type"] for b in server.bodies()] == ["task_started", "task_complete"]


def test_run_keeps_a_last_report_that_did_not_get_through_and_sends_it_before_polling_again() -> None:
    """The subtask is acknowledged (its task_started was applied): if its task_complete were dropped,
    nothing would ever finish it."""
    down = [(503, {"error": {"code": "unavailable"}})] * (client_mod.MAX_RETRIES + 1)
    stop = threading.Event()
    agent, server = fake_client({WORK_PATH: [(200, WORK), (204, None)],
                                 EVENTS_PATH: [(201, {"status": "RUNNING"}), *down, (201, {"status": "COMPLETED"})]})

    def stopper() -> None:
        while sum(1 for c in server.calls if c.method == "GET") < 2:
            threading.Event().wait(0.01)
        stop.set()

    threading.Thread(target=stopper, daemon=True).start()
    agent.run(lambda work: {"sent": True}, stop=stop, idle_sleep=0.01)
    completes = [b for b in server.bodies() if b["event_type"] == "task_complete"]
    assert len(completes) == client_mod.MAX_RETRIES + 2 and len({b["idempotency_key"] for b in completes}) == 1
    methods = [c.method for c in server.calls]
    assert methods.index("GET", 1) > len(methods) - 1 - methods[::-1].index("POST")  # sent before the next poll
    assert agent.send_unsent() is True


def test_a_start_whose_answer_is_not_known_is_sent_again_until_it_is() -> None:
    """Redis down for longer than the retries: the start may be applied later (acknowledging the
    claim), so the agent must not walk away from the subtask; it sends the same start until it knows."""
    down = [(503, {"error": {"code": "unavailable"}})] * (2 * client_mod.MAX_RETRIES + 2)
    stop = threading.Event()
    worked: list[str] = []
    agent, server = fake_client({WORK_PATH: [(200, WORK), (204, None)],
                                 EVENTS_PATH: [*down, (201, {"status": "RUNNING"}), (201, {"status": "COMPLETED"})]})

    def handler(work):
        worked.append(work.task_id)
        stop.set()
        return {"sent": True}

    threading.Timer(10, stop.set).start()  # without the fix the handler never runs: end the loop anyway
    agent.run(handler, stop=stop, idle_sleep=0.01)
    starts = [b for b in server.bodies() if b["event_type"] == "task_started"]
    assert len(starts) == len(down) + 1 and len({b["idempotency_key"] for b in starts}) == 1
    assert worked == ["task_0_a"]
    assert [b["event_type"] for b in server.bodies()][-1] == "task_complete"


def test_a_refused_start_leaves_the_work_alone() -> None:
    stop = threading.Event()
    agent, server = fake_client({WORK_PATH: [(200, WORK), (204, None)],
                                 EVENTS_PATH: [(409, {"error": {"code": "conflict", "message": "not yours"}})]})
    threading.Timer(0.3, stop.set).start()
    agent.run(lambda work: pytest.fail("the handler ran on a refused claim"), stop=stop, idle_sleep=0.01)
    assert [b["event_type"] for b in server.bodies()] == ["task_started"]


def test_force_pause_work_lists_what_is_held() -> None:
    held = [{"execution_id": "exec_1", "task_id": "task_0_a", "signal": "pause"}]
    paused = {"work_available": False, "execution_id": None, "plan_id": None, "next_task": None,
              "force_pause": True, "force_cancel": False, "held": held}
    agent, _ = fake_client({WORK_PATH: [(200, paused)]})
    work = agent.poll()
    assert work is not None and work.force_pause and work.task_id is None and work.held == held


class FlaskTransport(BaseAdapter):
    """A requests transport that hands each request to a Flask test client (no sockets, no threads)."""

    def __init__(self, flask_client: Any) -> None:
        super().__init__()
        self.flask_client = flask_client

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        parts = urlsplit(request.url)
        answer = self.flask_client.open(parts.path, method=request.method, query_string=parts.query,
                                        headers=dict(request.headers), data=request.body)
        resp = requests.Response()
        resp.status_code = answer.status_code
        resp._content = answer.data
        resp.headers.update(answer.headers)
        resp.url = request.url
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def test_poll_against_the_app(client, db) -> None:
    scene = queued_execution(db, n_subtasks=2)
    session = requests.Session()
    session.mount(BASE, FlaskTransport(client))
    agent = AgentClient(BASE, scene.agent_id, scene.agent_key, signing_secret=scene.signing_secret, session=session)
    work = agent.poll(["send_email"])
    assert work is not None and (work.execution_id, work.task_id) == (scene.execution_id, "task_0_a")
    assert work.task["action"] == "send_email" and work.task["attempt"] == 1 and not work.redelivered
    # No task_started applied yet: as far as the server knows, the first answer may have been lost.
    again = agent.poll(["send_email"])
    assert again is not None and again.redelivered and again.key == work.key == (scene.execution_id, "task_0_a", 1)
    stranger = AgentClient(BASE, "agent_someone_else", scene.agent_key, signing_secret=scene.signing_secret,
                           session=session)
    with pytest.raises(AgentClientError) as info:
        stranger.poll()
    assert info.value.status == 403 and info.value.code == "forbidden"


@pytest.mark.integration
def test_report_and_heartbeat_against_the_live_server(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    claim(db, redis, migrated, scene, "task_0_a")
    agent = AgentClient(live_server.url, scene.agent_id, scene.agent_key, signing_secret=scene.signing_secret)
    work = Work(execution_id=scene.execution_id, plan_id=None, task={"task_id": "task_0_a"})

    beat = agent.heartbeat(scene.execution_id)
    assert beat["execution_id"] == scene.execution_id and beat["status"] == "RUNNING"
    alive = agent.heartbeat()  # between executions: no execution's log
    assert alive["execution_id"] is None and alive["event_id"].startswith("evt_")
    assert agent.started(work)["status"] == "RUNNING"

    # The server answers 202 when the worker is slower than its reply wait: the client follows the URL.
    settings = live_server.app.config["SETTINGS"]
    live_server.app.config["SETTINGS"] = settings.replace(ingest_reply_wait_ms=0)
    try:
        out = agent.complete(work, {"email_sent_to": "carol@x"}, "Email sent.")
    finally:
        live_server.app.config["SETTINGS"] = settings
    assert out["next_task_id"] == "task_0_b" and out["status"] == "RUNNING"

    with pytest.raises(AgentClientError) as info:  # task_0_b is not held by the agent
        agent.complete(Work(execution_id=scene.execution_id, plan_id=None, task={"task_id": "task_0_b"}))
    assert info.value.status == 409 and info.value.code == "not_holder"

    with db.reading() as s:
        sub = s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == scene.execution_id,
                                                       ExecutionSubtask.plan_subtask_id == "task_0_a"))
        assert sub.status == "COMPLETE" and sub.result_data == {"email_sent_to": "carol@x"}
        kinds = s.scalars(select(ExecutionEvent.event_type).where(
            ExecutionEvent.execution_id == scene.execution_id, ExecutionEvent.source == "agent")).all()
        assert sorted(kinds) == ["heartbeat", "task_complete", "task_started"]


@pytest.mark.integration
def test_run_drives_an_execution_to_completion(db, redis, migrated, live_server, worker) -> None:
    scene = queued_execution(db, n_subtasks=2)
    agent = AgentClient(live_server.url, scene.agent_id, scene.agent_key, signing_secret=scene.signing_secret)
    stop = threading.Event()
    seen: list[str] = []

    def handler(work: Work) -> dict[str, Any]:
        seen.append(work.task_id)
        if len(seen) == 2:
            stop.set()  # the loop still reports this one before it looks at `stop`
        return {"done": work.task_id}

    timer = threading.Timer(30, stop.set)  # a guard: never hang the suite
    timer.start()
    try:
        done = agent.run(handler, stop=stop, supported_actions=["send_email"], idle_sleep=0.05)
    finally:
        timer.cancel()
    assert done == 2 and seen == ["task_0_a", "task_0_b"]
    with db.reading() as s:
        assert s.get(Execution, scene.execution_id).status == "COMPLETED"
