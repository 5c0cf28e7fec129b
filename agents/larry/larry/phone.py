"""Phone calls through a provider.

`RecordingProvider` (the default) places no call, since this machine has no telephony: it writes a
call record (JSON) and a transcript stub (Markdown) to the workspace, and the event says so.
`TwilioProvider` places the call through a Twilio-style REST API (`POST
{api}/2010-04-01/Accounts/{sid}/Calls.json`, form-encoded, basic auth) and records the call's sid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests

from larry.config import LarryConfig


@dataclass
class CallRequest:
    to: str
    purpose: str
    contact_name: str | None
    folder: Path  # where the record and transcript go


class PhoneProvider(Protocol):
    name: str

    def call(self, req: CallRequest) -> dict[str, Any]:
        """Place (or record) the call; return what the event's output_data should say."""


class CallFailed(Exception):
    """The provider refused or could not be reached: the retry policy tries again."""


def _write_record(req: CallRequest, record: dict[str, Any]) -> dict[str, Any]:
    req.folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    record_path = req.folder / f"call_{stamp}.json"
    transcript_path = req.folder / f"call_{stamp}_transcript.md"
    record_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    transcript_path.write_text(
        f"# Call with {req.contact_name or req.to}\n\nPurpose: {req.purpose}\n\n"
        f"Provider: {record['provider']}\n\n## Transcript\n\n_(to be filled in after the call)_\n", encoding="utf-8")
    return {"call_record": str(record_path), "transcript": str(transcript_path)}


class RecordingProvider:
    name = "record"

    def call(self, req: CallRequest) -> dict[str, Any]:
        record = {"provider": self.name, "to": req.to, "purpose": req.purpose, "placed": False,
                  "recorded_at": datetime.now(UTC).isoformat()}
        return {**_write_record(req, record), "call_placed": False, "called": req.to,
                "note": "No telephony on this machine: the call was recorded in the workspace, not placed."}


class TwilioProvider:
    name = "twilio"

    def __init__(self, api_url: str, account_sid: str, auth_token: str, caller: str, *, timeout: float = 15.0,
                 session: requests.Session | None = None) -> None:
        self.url = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Calls.json"
        self.auth = (account_sid, auth_token)
        self.caller = caller
        self.timeout = timeout
        self.http = session or requests.Session()

    def call(self, req: CallRequest) -> dict[str, Any]:
        twiml = f"<Response><Say>{_xml_escape(req.purpose)}</Say></Response>"
        try:
            resp = self.http.post(self.url, data={"To": req.to, "From": self.caller, "Twiml": twiml},
                                  auth=self.auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise CallFailed(f"phone provider unreachable: {type(exc).__name__}") from exc
        if resp.status_code >= 300:
            raise CallFailed(f"phone provider answered {resp.status_code}")
        body = resp.json()
        record = {"provider": self.name, "to": req.to, "purpose": req.purpose, "placed": True,
                  "sid": body.get("sid"), "status": body.get("status"), "recorded_at": datetime.now(UTC).isoformat()}
        return {**_write_record(req, record), "call_placed": True, "called": req.to, "call_sid": body.get("sid"),
                "call_status": body.get("status")}


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def provider_from(cfg: LarryConfig) -> PhoneProvider:
    if cfg.phone_provider == "twilio":
        needed = (("TWILIO_API_URL", cfg.twilio_api_url), ("TWILIO_ACCOUNT_SID", cfg.twilio_account_sid),
                  ("TWILIO_AUTH_TOKEN", cfg.twilio_auth_token), ("TWILIO_FROM", cfg.twilio_from))
        missing = [k for k, v in needed if not v]
        if missing:
            raise ValueError(f"LARRY_PHONE_PROVIDER=twilio needs {', '.join(missing)}")
        return TwilioProvider(cfg.twilio_api_url or "", cfg.twilio_account_sid or "", cfg.twilio_auth_token or "",
                              cfg.twilio_from or "")
    return RecordingProvider()
