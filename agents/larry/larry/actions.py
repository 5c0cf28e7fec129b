"""Larry's actions: one handler each, registered on an `Agent` by `build_agent`.

Every file an action writes goes under `workspace/<execution id>/`; every action says in its output
what it did and where (the dashboard shows it).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from icalendar import Calendar, Event, vCalAddress, vText
from orchestrator_sdk import Agent, AgentClient, TaskContext

from larry import documents, mail, prospects
from larry.config import LarryConfig
from larry.phone import CallRequest, PhoneProvider, provider_from

log = logging.getLogger("agent_larry")

ACTIONS = ("send_email", "schedule_calendar_event", "make_phone_call", "conduct_interview", "document_findings",
           "analyze_feedback", "update_prospect_status")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value if v]


class Larry:
    def __init__(self, cfg: LarryConfig, phone: PhoneProvider | None = None) -> None:
        self.cfg = cfg
        self.phone = phone or provider_from(cfg)

    def folder(self, task: TaskContext) -> Path:
        path = self.cfg.workspace / task.execution_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- email ------------------------------------------------------------------------------------

    def send_email(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        to = _list(p.get("to"))
        if not to:
            raise ValueError("send_email needs a `to` address")
        folder = self.folder(task)
        attachments = []
        for name in _list(p.get("attach")):
            path = documents.safe_path(folder, name)
            if path.is_file():
                attachments.append((path.name, path.read_bytes(), "text/markdown"))
        msg = mail.build_message(self.cfg.sender, to, p.get("subject") or task.title, p.get("body") or task.title,
                                 cc=_list(p.get("cc")), attachments=attachments)
        mail.send(self.cfg, msg, phone=p.get("phone"))
        log.info("Email sent to %s: %s", ", ".join(to), msg["Subject"])
        self._mark(p, "status_after", f"emailed: {p.get('subject') or task.title}")
        return {"email_sent_to": ", ".join(to), "email_timestamp": _now(), "mailbox_used": self.cfg.sender,
                "attachments": [a[0] for a in attachments], "message_id": msg["Message-ID"]}

    def _mark(self, params: dict[str, Any], key: str, note: str) -> None:
        """Write a prospect's status to its CSV when the plan asks for it (`csv_path`, `prospect_email`)."""
        status, path = params.get(key), params.get("csv_path")
        if status and path:
            prospects.update_status(path, params.get("prospect_email") or _list(params.get("to"))[0], status, note)

    # -- calendar ---------------------------------------------------------------------------------

    def schedule_calendar_event(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        start = _start_of(p.get("start"))
        end = start + timedelta(minutes=int(p.get("duration_minutes") or 60))
        # `to`: an address a person approved in place of the attendees' (approve_alternative_email).
        attendees = [a for a in _list(p.get("to")) or _list(p.get("attendees")) if _EMAIL.match(a)]
        cal, uid = _invite(self.cfg.sender, p.get("title") or task.title, start, end, attendees,
                           p.get("description") or task.context.get("plan_goal") or "", p.get("location"))
        ics = cal.to_ical()
        path = documents.safe_path(self.folder(task), f"invite_{uid[:8]}.ics")
        path.write_bytes(ics)
        out: dict[str, Any] = {"invite_path": str(path), "uid": uid, "start": start.isoformat(), "end": end.isoformat()}
        if attendees:
            msg = mail.build_message(self.cfg.sender, attendees, f"Invitation: {p.get('title') or task.title}",
                                     f"Please find the invitation attached ({start:%A %d %B %Y, %H:%M} UTC).",
                                     attachments=[("invite.ics", ics, "text/calendar; method=REQUEST")])
            mail.send(self.cfg, msg, phone=p.get("phone"))
            log.info("Invitation sent to %s: %s", ", ".join(attendees), msg["Subject"])
            out["invite_sent_to"] = ", ".join(attendees)
        else:
            out["note"] = "No attendee email address: the invite was written to the workspace only."
        return out

    # -- phone ------------------------------------------------------------------------------------

    def make_phone_call(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        to = p.get("to") or p.get("phone")
        if not to:
            raise ValueError("make_phone_call needs a `to` number")
        req = CallRequest(str(to), p.get("purpose") or task.title, p.get("contact_name"), self.folder(task) / "calls")
        out = self.phone.call(req)  # CallFailed: an ordinary error, retried by the subtask's policy
        log.info("Call to %s %s (%s)", req.to, "placed" if out.get("call_placed") else "recorded", self.phone.name)
        self._mark(p, "status_after", f"called: {req.purpose}")
        return {**out, "provider": self.phone.name}

    # -- documents --------------------------------------------------------------------------------

    def conduct_interview(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        who = p.get("interviewee") or p.get("contact_name") or "the prospect"
        topics = documents.topics_of(p)
        text = documents.ask_llm(self.cfg, f"Prepare interview notes for a discovery interview with {who} covering "
                                           f"{', '.join(topics)}.") or documents.interview_notes(
            who, topics, p.get("duration_minutes"), task.context)
        path = documents.safe_path(self.folder(task), p.get("output_path") or "interview_notes.md")
        path.write_text(text, encoding="utf-8")
        return {"notes_path": str(path), "topics": topics, "interviewee": who}

    def document_findings(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        folder = self.folder(task)
        sources = documents.read_sources(folder, _list(p.get("sources")))
        if p.get("kind") == "proposal":
            themes = [ln[2:].strip() for _, t in sources for ln in t.splitlines() if ln.startswith("- ")][:8]
            text = documents.ask_llm(self.cfg, f"Write a short proposal for {p.get('client')} addressing: "
                                               f"{'; '.join(themes)}") or documents.proposal(
                p.get("client") or "the client", p.get("business"), themes)
        else:
            text = documents.ask_llm(self.cfg, f"Write '{task.title}' from these notes:\n\n" + "\n\n".join(
                t for _, t in sources)) or documents.findings(task.title, documents.topics_of(p), sources)
        path = documents.safe_path(folder, p.get("output_path") or "findings.md")
        path.write_text(text, encoding="utf-8")
        return {"document_path": str(path), "sources": [n for n, _ in sources]}

    def analyze_feedback(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        folder = self.folder(task)
        sources = documents.read_sources(folder, _list(p.get("source")))
        text = documents.ask_llm(self.cfg, "List the themes and priorities in this feedback:\n\n" + "\n\n".join(
            t for _, t in sources)) or documents.feedback_analysis(documents.topics_of(p), sources)
        path = documents.safe_path(folder, p.get("output_path") or "feedback_analysis.md")
        path.write_text(text, encoding="utf-8")
        return {"analysis_path": str(path), "sources": [n for n, _ in sources]}

    # -- the prospects' CSV -----------------------------------------------------------------------

    def update_prospect_status(self, task: TaskContext) -> dict[str, Any]:
        p = task.params
        if not (p.get("csv_path") and p.get("email") and p.get("status")):
            raise ValueError("update_prospect_status needs csv_path, email and status")
        if not prospects.update_status(p["csv_path"], p["email"], p["status"], p.get("note")):
            raise LookupError(f"no row of {Path(p['csv_path']).name} has that email")
        return {"csv_path": p["csv_path"], "status": p["status"]}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _start_of(value: Any) -> datetime:
    """The given start (ISO 8601, UTC when naive), or the next weekday at 14:00 UTC."""
    if value:
        start = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return start if start.tzinfo else start.replace(tzinfo=UTC)
    day = datetime.now(UTC).date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, 14, tzinfo=UTC)


def _invite(organizer: str, title: str, start: datetime, end: datetime, attendees: list[str], description: str,
            location: str | None) -> tuple[Calendar, str]:
    cal = Calendar()
    cal.add("prodid", "-//Agent Execution System//Larry//EN")
    cal.add("version", "2.0")
    cal.add("method", "REQUEST")
    event = Event()
    uid = f"{uuid.uuid4()}@larry"
    event.add("uid", uid)
    event.add("dtstamp", datetime.now(UTC))
    event.add("dtstart", start)
    event.add("dtend", end)
    event.add("summary", title)
    event.add("description", description)
    if location:
        event.add("location", location)
    event["organizer"] = vCalAddress(f"mailto:{organizer}")
    for address in attendees:
        attendee = vCalAddress(f"mailto:{address}")
        attendee.params["role"] = vText("REQ-PARTICIPANT")
        attendee.params["rsvp"] = vText("TRUE")
        event.add("attendee", attendee, encode=0)
    cal.add_component(event)
    return cal, uid


def build_agent(client: AgentClient, cfg: LarryConfig, *, phone: PhoneProvider | None = None,
                **agent_kw: Any) -> Agent:
    """An `Agent` with every Larry action registered."""
    larry = Larry(cfg, phone)
    agent = Agent(client, **agent_kw)
    for name in ACTIONS:
        agent.action(name)(getattr(larry, name))
    return agent
