"""Personal data at rest: what operators and agents send through the API, and what the worker stores from
their events, is in no dump of the database in plaintext (the SQLite files, or `pg_dump`), and reads back whole.

The email address and phone number carry a random part, so that only this test's values are looked for.
"""

from __future__ import annotations

import secrets

import pytest
import requests
from orchestrator_sdk.client import AgentClient
from sqlalchemy import select

from orchestrator.encryption import new_key
from orchestrator.encryption_keys import check_keys
from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask, ExecutionTask, Plan, PlanSubtask
from tests.conftest import WorkerProcess
from tests.database_dump import database_dump
from tests.factories import make_user_with_token

pytestmark = pytest.mark.integration


def test_a_dump_holds_no_email_or_phone_in_plaintext(db, migrated, live_server, worker) -> None:
    tag = secrets.token_hex(4)
    email, phone = f"carol.{tag}@bittersweet-farm.com", f"555-867-{secrets.randbelow(9000) + 1000}"
    other_email = f"info.{tag}@bittersweetfarm.com"
    marker = f"goal-{tag}"  # stored in plaintext (a plan's goal): shows that the dump holds this test's rows
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s)
    operator = requests.Session()
    operator.headers["Authorization"] = f"Bearer {token}"
    base = live_server.url

    agent_id = f"agent_{tag}"
    resp = operator.post(f"{base}/api/agents", json={"id": agent_id, "name": "Larry", "capabilities": ["send_email"]})
    assert resp.status_code == 201, resp.text
    agent = AgentClient(base, agent_id, resp.json()["api_key"], signing_secret=resp.json()["signing_secret"])
    plan_id, execution_id = f"plan_{tag}", f"exec_{tag}"
    resp = operator.post(f"{base}/api/plans", json={
        "id": plan_id, "goal": marker, "context": {"owner_email": email, "owner_phone": phone},
        "tasks": [{"id": "task_1", "title": "Interview", "subtasks": [
            {"id": "task_1_a", "title": "Write", "action": "send_email", "params": {"to": email, "call": phone}},
            {"id": "task_1_b", "title": "Call", "action": "send_email", "params": {"phone": phone},
             "prerequisites": ["task_1_a"]}]}]})
    assert resp.status_code == 201, resp.text
    resp = operator.post(f"{base}/api/executions", json={"plan_id": plan_id, "execution_id": execution_id,
                                                         "agent_id": agent_id})
    assert resp.status_code == 201, resp.text
    assert operator.patch(f"{base}/api/executions/{execution_id}", json={"status": "QUEUED"}).status_code == 200

    work = agent.poll(["send_email"])
    assert work is not None and work.task["params"] == {"to": email, "call": phone}  # agents get the real params
    agent.started(work)
    out = agent.error(work, "bounced", f"{email} bounced; call {phone}", human_review_required=True,
                      suggestions=[f"Try {other_email}", f"Call {phone}"], blocking=True)
    assert out["status"] == "BLOCKED", out
    resp = operator.post(f"{base}/api/executions/{execution_id}/tasks/task_1/resolve",
                         json={"option": "approve_alternative", "params": {"to": other_email}})
    assert resp.status_code == 200, resp.text
    work = agent.poll(["send_email"])
    assert work is not None and work.task["params"]["to"] == other_email
    out = agent.complete(work, {"email_sent_to": other_email, "reply_from": phone}, f"Sent to {other_email}")
    assert out["next_task_id"] == "task_1_b", out

    dump = database_dump(migrated.database_url)
    assert marker.encode() in dump
    for secret in (email, phone, other_email):
        assert secret.encode() not in dump, f"{secret} is stored in plaintext"

    _every_copy_reads_back_whole(db, plan_id, execution_id, email, phone, other_email)


def _every_copy_reads_back_whole(db, plan_id: str, execution_id: str, email: str, phone: str, other_email: str) -> None:
    """Encrypted, yet every copy of the personal data reads back whole."""
    with db.reading() as s:
        assert s.get(Plan, plan_id).context == {"owner_email": email, "owner_phone": phone}
        assert s.get(PlanSubtask, (plan_id, "task_1_a")).params == {"to": email, "call": phone}
        sub = s.scalar(select(ExecutionSubtask).where(ExecutionSubtask.execution_id == execution_id,
                                                       ExecutionSubtask.plan_subtask_id == "task_1_a"))
        assert sub.params_override == {"to": other_email}
        assert sub.result_data == {"email_sent_to": other_email, "reply_from": phone}
        task = s.scalar(select(ExecutionTask).where(ExecutionTask.execution_id == execution_id))
        assert task.suggestions == [f"Try {other_email}", f"Call {phone}"]
        events = {e.event_type: e for e in s.scalars(select(ExecutionEvent).where(
            ExecutionEvent.execution_id == execution_id, ExecutionEvent.source == "agent"))}
        assert events["task_error"].error_message == f"{email} bounced; call {phone}"
        assert events["task_error"].suggestions == [f"Try {other_email}", f"Call {phone}"]
        assert events["task_error"].outcome["status"] == "BLOCKED"
        assert events["task_complete"].message == f"Sent to {other_email}"
        assert events["task_complete"].output_data == {"email_sent_to": other_email, "reply_from": phone}
        assert s.get(Execution, execution_id).status == "RUNNING"


def test_a_worker_whose_keys_cannot_read_the_database_does_not_start(db, migrated, session_dir) -> None:
    check_keys(db)  # the suite's keys: the check row is written (or read) under them
    wrong = migrated.replace(encryption_keys=(new_key(),), encryption_key_file=None)
    log_path = session_dir / f"wrong-keys-{secrets.token_hex(2)}.log"
    worker = WorkerProcess(wrong, log_path, concurrency=1)
    try:
        with pytest.raises(RuntimeError, match="worker did not start"):
            worker.start(timeout=60)
        assert worker.proc is not None and worker.proc.wait(10) != 0
    finally:
        worker.stop()
    said = "worker not started: the encryption keys from ENCRYPTION_KEYS cannot read this database"
    assert said in log_path.read_text()
