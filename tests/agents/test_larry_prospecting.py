"""Larry's prospecting scenario end to end (guide §7): real HTTP, a real worker, a real SMTP server,
Larry in child processes; three phases per prospect, agents in parallel, a bounce resolved by a
person, pause / resume / cancel mid-run, and the owner's signed webhook."""

from __future__ import annotations

import csv
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from icalendar import Calendar
from larry.scenario import run_scenario
from orchestrator_sdk import Credentials
from sqlalchemy import select

from orchestrator.models import Execution, ExecutionEvent, ExecutionSubtask
from orchestrator.notify import verify
from tests.agents.conftest import WEBHOOK_SECRET, Operator, json_of, write_csv

pytestmark = pytest.mark.integration

SUBTASKS_PER_PROSPECT = 10  # discovery 4, proposal 3, follow-up 3


def wait_for(what: str, check, timeout: float = 45.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def statuses(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["email"]: row["status"] for row in csv.DictReader(f)}


def in_background(**kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {"lines": []}

    def run() -> None:
        out["rc"] = run_scenario(say=out["lines"].append, **kw)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _plan_email(op: Operator, detail: dict[str, Any]) -> str | None:
    return op.get(f"/api/plans/{detail['plan_id']}").get("context", {}).get("contact_email")


def subtask(detail: dict[str, Any], suffix: str) -> dict[str, Any]:
    return next(s for t in detail["tasks"] for s in t["subtasks"] if s["subtask_id"].endswith(suffix))


def test_three_prospects_two_larrys_complete_every_phase(larry_stack, operator_token, smtp, db, tmp_path) -> None:
    prospects = write_csv(tmp_path / "prospects.csv", [
        ("Carol Smith", "Bittersweet Farm", "carol@bittersweet.test", "860-455-9416", "new", "breeder", "fair"),
        ("Dan Ortiz", "Ortiz Kennels", "dan@ortiz.test", "+1 415 555 0199", "new", "", "web"),
        ("Eve Park", "Park Vineyards", "eve@park.test", "(212) 555-0142", "new", "wine", "referral"),
        ("Carol again", "Bittersweet Farm", "CAROL@bittersweet.test", "860-455-9416", "new", "dup", "fair"),
    ])
    lines: list[str] = []
    rc = run_scenario(larry_stack.url, operator_token, prospects, workers=2, workspace=tmp_path / "ws",
                      say=lines.append)
    assert rc == 0, "\n".join(lines)
    assert lines[-1].startswith("summary: 3 completed")

    with db.reading() as s:
        executions = s.scalars(select(Execution)).all()
        subtasks = s.scalars(select(ExecutionSubtask)).all()
        completions = Counter((e.execution_id, e.task_id) for e in s.scalars(
            select(ExecutionEvent).where(ExecutionEvent.event_type == "task_complete")))
    assert [e.status for e in executions] == ["COMPLETED"] * 3
    assert len(subtasks) == 3 * SUBTASKS_PER_PROSPECT and {s.status for s in subtasks} == {"COMPLETE"}
    assert {s.attempt for s in subtasks} == {1}
    assert len(completions) == 3 * SUBTASKS_PER_PROSPECT and set(completions.values()) == {1}  # each once
    larrys = {Credentials.load(p).agent_id for p in (tmp_path / "ws" / "agents").glob("*.json")}
    assert len(larrys) == 2 and {s.agent_id for s in subtasks} <= larrys  # the work of the two processes
    assert sum(1 for line in lines if " complete " in line) == 3 * SUBTASKS_PER_PROSPECT

    for address in ("carol@bittersweet.test", "dan@ortiz.test", "eve@park.test"):
        mails = smtp.to(address)
        assert len(mails) == 3, [m["Subject"] for m in mails]  # contact, demo invite, proposal
        invite = next(m for m in mails if m["Subject"].startswith("Invitation"))
        ics = next(p for p in invite.iter_attachments() if p.get_content_type() == "text/calendar")
        event = next(iter(Calendar.from_ical(ics.get_content()).walk("VEVENT")))
        assert str(event["ATTENDEE"]).lower() == f"mailto:{address}"
        proposal = next(m for m in mails if m["Subject"].startswith("Our proposal"))
        assert [p.get_filename() for p in proposal.iter_attachments()] == ["proposal.md"]
    # The duplicate row (same address) is the same prospect: it follows.
    assert statuses(prospects) == {"carol@bittersweet.test": "followed_up", "dan@ortiz.test": "followed_up",
                                   "eve@park.test": "followed_up", "CAROL@bittersweet.test": "followed_up"}
    logs = "".join(p.read_text() for p in (tmp_path / "ws" / "logs").glob("*.log"))
    assert logs.count("Reporting event: task_complete") == 3 * SUBTASKS_PER_PROSPECT  # guide §10's line
    assert "c***@bittersweet.test" in logs and "carol@bittersweet.test" not in logs  # masked


def test_a_refused_address_blocks_and_a_person_resolves_it(larry_stack, operator_token, smtp, tmp_path) -> None:
    prospects = write_csv(tmp_path / "prospects.csv", [
        ("Carol Smith", "Bittersweet Farm", "carol@bounce.test", "860-455-9416", "new", "", ""),
        ("Dan Ortiz", "Ortiz Kennels", "dan@bounce.test", "+1 415 555 0199", "new", "", ""),
    ])
    op = Operator(larry_stack.url, operator_token)
    thread, out = in_background(server=larry_stack.url, token=operator_token, csv_path=prospects, workers=1,
                                workspace=tmp_path / "ws")
    choices = {"carol@bounce.test": ("approve_alternative_email", {"to": "carol@bittersweet.test"}),
               "dan@bounce.test": ("approve_phone_call", {"to": "+1 415 555 0199"})}
    resolved: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + 90
    while thread.is_alive():
        assert time.monotonic() < deadline, "\n".join(out["lines"])
        for ex in op.get("/api/executions?status=BLOCKED")["executions"]:
            detail = op.get(f"/api/executions/{ex['execution_id']}?raw=true")
            who = _plan_email(op, detail)
            task = next(t for t in detail["tasks"] if t["status"] == "BLOCKED")
            assert task["next_step_options"][:4] == ["approve_alternative_email", "approve_phone_call", "skip_task",
                                                     "cancel_execution"]
            assert "bounced" in task["error_message"] and any("Call" in s for s in task["suggestions"])
            option, params = choices[who]
            resp = op.send("POST", f"/api/executions/{ex['execution_id']}/tasks/{task['task_id']}/resolve",
                           {"option": option, "params": params})
            assert resp.status_code == 200, resp.text
            stopped = next(s for s in task["subtasks"] if s["status"] == "ERROR")
            resolved.append((who, option, stopped["subtask_id"]))
        time.sleep(0.3)
    assert out["rc"] == 0, "\n".join(out["lines"])
    assert {r[1] for r in resolved} == {"approve_alternative_email", "approve_phone_call"}
    # Carol's mail went to the address a person approved; nothing reached the refused ones.
    assert len(smtp.to("carol@bittersweet.test")) == 3 and not smtp.to("bounce.test")
    dan = next(op.get(f"/api/executions/{e['execution_id']}?raw=true")
               for e in op.get("/api/executions")["executions"]
               if _plan_email(op, op.get(f"/api/executions/{e['execution_id']}")) == "dan@bounce.test")
    for who, _, subtask_id in resolved:
        if who == "dan@bounce.test":
            switched = subtask(dan, subtask_id)
            assert switched["action"] == "make_phone_call" and switched["result_data"]["provider"] == "record"
            assert Path(switched["result_data"]["call_record"]).is_file()
    # The owner's webhook was told of every block, signed.
    wait_for("the webhooks", lambda: len(larry_stack.webhook.received) >= len(resolved))
    for headers, body in larry_stack.webhook.received[-len(resolved):]:
        assert verify(WEBHOOK_SECRET, headers["x-orchestrator-timestamp"], body, headers["x-orchestrator-signature"])
        notice = json_of(body)
        assert notice["type"] == "execution_blocked" and "approve_phone_call" in notice["next_step_options"]


def test_pause_resume_and_cancel_mid_scenario(larry_stack, operator_token, smtp, tmp_path) -> None:
    prospects = write_csv(tmp_path / "prospects.csv", [
        ("Ann Lee", "Lee Farms", "ann@slow.test", "860-455-9416", "new", "", ""),
        ("Bob Kim", "Kim Stables", "bob@kim.test", "860-455-9417", "new", "", ""),
        ("Cy Young", "Young Ranch", "cy@slow.test", "860-455-9418", "new", "", ""),
    ])
    op = Operator(larry_stack.url, operator_token)
    thread, out = in_background(server=larry_stack.url, token=operator_token, csv_path=prospects, workers=1,
                                workspace=tmp_path / "ws")
    ids = wait_for("three executions", lambda: (lambda xs: xs if len(xs) == 3 else None)(
        op.get("/api/executions")["executions"]))
    by_email = {_plan_email(op, e): e["execution_id"] for e in ids}
    ann, bob, cy = by_email["ann@slow.test"], by_email["bob@kim.test"], by_email["cy@slow.test"]

    def running_first(eid: str) -> bool:
        return subtask(op.get(f"/api/executions/{eid}"), "_a")["status"] == "RUNNING"

    def busy(eid: str) -> dict[str, Any] | None:
        detail = op.get(f"/api/executions/{eid}")
        subs = [s for t in detail["tasks"] for s in t["subtasks"]]
        return detail if detail["status"] == "RUNNING" and any(s["status"] == "RUNNING" for s in subs) else None

    def completed(detail: dict[str, Any]) -> int:
        return sum(1 for t in detail["tasks"] for s in t["subtasks"] if s["status"] == "COMPLETE")

    # Ann: paused while Larry sends her (slow) first email; it finishes, nothing more is taken.
    wait_for("Ann's first email in hand", lambda: running_first(ann), interval=0.05)
    assert op.send("PATCH", f"/api/executions/{ann}", {"status": "PAUSED"}).status_code == 200
    # Cy: cancelled while Larry works on one of his subtasks (his emails are slow too).
    at_cancel = wait_for("Cy's work in hand", lambda: busy(cy), interval=0.05)
    mails_at_cancel = len(smtp.to("cy@slow.test"))
    assert op.send("PATCH", f"/api/executions/{cy}", {"status": "CANCELLED"}).status_code == 200
    wait_for("Bob's execution to end", lambda: op.get(f"/api/executions/{bob}")["status"] == "COMPLETED", timeout=60)
    paused = op.get(f"/api/executions/{ann}")
    assert paused["status"] == "PAUSED" and completed(paused) <= 1
    assert not any(s["status"] == "RUNNING" for t in paused["tasks"] for s in t["subtasks"])

    assert op.send("PATCH", f"/api/executions/{ann}", {"status": "RUNNING"}).status_code == 200
    thread.join(timeout=90)
    assert not thread.is_alive() and out["rc"] == 1, "\n".join(out["lines"])
    assert op.get(f"/api/executions/{ann}")["status"] == "COMPLETED"
    cancelled = op.get(f"/api/executions/{cy}")
    assert cancelled["status"] == "CANCELLED"
    # At most the subtask in hand at the cancel finished; nothing after it was started or sent.
    assert completed(cancelled) <= completed(at_cancel) + 1
    assert len(smtp.to("cy@slow.test")) <= mails_at_cancel + 1 and len(smtp.to("ann@slow.test")) == 3
    assert statuses(prospects) == {"ann@slow.test": "followed_up", "bob@kim.test": "followed_up",
                                   "cy@slow.test": "cancelled"}
    assert out["lines"][-1].startswith("summary: 2 completed, 0 failed, 1 cancelled")
