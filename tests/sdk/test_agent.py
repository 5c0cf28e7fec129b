"""The SDK's agent: a handler per action, heartbeats while one runs, signals, credentials, logs, backoff."""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from typing import Any

import pytest
from orchestrator_sdk import Agent, Credentials, HumanReviewNeeded, TaskContext, Work
from orchestrator_sdk.client import _Backoff
from orchestrator_sdk.logs import configure_logging

from tests.sdk.test_client import EVENTS_PATH, WORK, WORK_PATH, fake_client

CALL = {**WORK, "next_task": {**WORK["next_task"], "task_id": "task_0_b", "action": "make_phone_call"}}
UNKNOWN = {**WORK, "next_task": {**WORK["next_task"], "task_id": "task_0_c", "action": "fly_to_the_moon"}}


def stop_after_polls(server, stop: threading.Event, n: int) -> None:
    def watch() -> None:
        while sum(1 for c in server.calls if c.method == "GET") < n:
            time.sleep(0.005)
        stop.set()
    threading.Thread(target=watch, daemon=True).start()


def test_each_action_goes_to_its_handler_and_unknown_ones_are_errors() -> None:
    client, server = fake_client({WORK_PATH: [(200, WORK), (200, CALL), (200, UNKNOWN), (204, None)],
                                  EVENTS_PATH: [(201, {"status": "RUNNING"})]})
    agent = Agent(client, idle_sleep=0.01)
    seen: list[tuple[str, dict[str, Any]]] = []

    @agent.action("send_email")
    def send_email(task: TaskContext) -> dict[str, Any]:
        seen.append((task.action, task.params))
        return {"email_sent_to": task.params["to"]}

    @agent.action("make_phone_call")
    def call(task: TaskContext) -> dict[str, Any]:
        seen.append((task.action, task.params))
        raise HumanReviewNeeded("No answer.", ["Email instead"], error_type="external_dependency_blocked",
                                next_step_options=["approve_alternative_email"])

    stop = threading.Event()
    stop_after_polls(server, stop, 4)
    assert agent.run(stop=stop, handle_signals=False) == 1
    assert [a for a, _ in seen] == ["send_email", "make_phone_call"]
    bodies = [(b["event_type"], b["task_id"]) for b in server.bodies()]
    assert bodies == [("task_started", "task_0_a"), ("task_complete", "task_0_a"), ("task_started", "task_0_b"),
                      ("task_error", "task_0_b"), ("task_started", "task_0_c"), ("task_error", "task_0_c")]
    blocked, unknown = server.bodies()[3], server.bodies()[5]
    assert blocked["blocking"] is True and blocked["error_type"] == "external_dependency_blocked"
    assert blocked["next_step_options"] == ["approve_alternative_email"]
    assert unknown["error_type"] == "LookupError" and "fly_to_the_moon" in unknown["error_message"]
    assert not unknown.get("blocking")
    # The poll names the actions the agent has handlers for.
    assert "supported_actions=make_phone_call%2Csend_email" in server.calls[0].url


def test_heartbeats_are_sent_while_a_handler_runs() -> None:
    client, server = fake_client({WORK_PATH: [(200, WORK), (204, None)], EVENTS_PATH: [(201, {"status": "RUNNING"})]})
    agent = Agent(client, heartbeat_seconds=0.02, idle_sleep=0.01)
    agent.action("send_email")(lambda task: time.sleep(0.3) or {"ok": True})
    stop = threading.Event()
    stop_after_polls(server, stop, 2)
    agent.run(stop=stop, handle_signals=False)
    kinds = [b["event_type"] for b in server.bodies()]
    assert kinds[0] == "task_started" and kinds[-1] == "task_complete"
    assert kinds.count("heartbeat") >= 2 and set(kinds[1:-1]) == {"heartbeat"}
    keys = [b["idempotency_key"] for b in server.bodies()]
    assert len(set(keys)) == len(keys)  # one key per report


def test_sigterm_lets_the_work_in_hand_finish_then_stops() -> None:
    client, server = fake_client({WORK_PATH: [(200, WORK), (204, None)], EVENTS_PATH: [(201, {"status": "RUNNING"})]})
    agent = Agent(client, idle_sleep=0.01)
    started = threading.Event()

    @agent.action("send_email")
    def slow(task: TaskContext) -> dict[str, Any]:
        started.set()
        time.sleep(0.2)
        return {"done": True}

    def kill() -> None:
        started.wait(5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=kill, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    assert agent.run() == 1  # returns: the signal stopped it, after the report
    assert [b["event_type"] for b in server.bodies()][-1] == "task_complete"
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_checkpoint_raises_once_stopping() -> None:
    client, _ = fake_client({})
    task = TaskContext(Work("exec_1", None, {"task_id": "task_0_a"}), client, threading.Event())
    task.checkpoint()
    task.stop.set()
    with pytest.raises(Exception, match="shutting down"):
        task.checkpoint()


def test_idle_waits_double_up_to_the_most_and_reset() -> None:
    b = _Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.reset() == 0.5 and b.next() == 0.5


def test_credentials_are_saved_private_and_load_back(tmp_path) -> None:
    path = tmp_path / "agents" / "larry.json"
    Credentials("agent_larry", "agt_key", "sig_secret").save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credentials.load(path) == Credentials("agent_larry", "agt_key", "sig_secret")
    assert [p.name for p in path.parent.iterdir()] == ["larry.json"]  # no temporary file left


def test_logs_are_the_guides_lines_with_personal_data_masked(tmp_path) -> None:
    logger = configure_logging("agent_test_sdk", tmp_path / "logs" / "agent.log", stream=False)
    logger.info("Reporting event: %s for task %s", "task_error", "task_1_1_a")
    logger.info("Email to carol@bittersweet-farm.com bounced; call 860-455-9416 (key agt_%s)", "x" * 40)
    for handler in logger.handlers:
        handler.flush()
    lines = (tmp_path / "logs" / "agent.log").read_text().splitlines()
    assert lines[0].endswith(" - INFO - Reporting event: task_error for task task_1_1_a")
    assert "c***@bittersweet-farm.com" in lines[1] and "***-***-9416" in lines[1] and "agt_x" not in lines[1]
    logging.getLogger("agent_test_sdk").handlers.clear()


def test_the_sdk_imports_nothing_of_the_server() -> None:
    import subprocess
    import sys

    code = ("import sys, orchestrator_sdk, orchestrator_sdk.logs; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('orchestrator', 'flask', 'sqlalchemy', 'celery', 'web', 'workers')]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
