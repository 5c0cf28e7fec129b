"""Larry's settings, read from the environment once (every key has a default).

| key | default | meaning |
|---|---|---|
| SMTP_HOST | localhost | the SMTP server Larry sends through |
| SMTP_PORT | 25 (465 with ssl, 587 with starttls) | its port |
| SMTP_USER, SMTP_PASSWORD | (unset) | login, when both are set |
| SMTP_TLS | none | none, starttls or ssl |
| LARRY_FROM | larry@localhost | the sender address |
| LARRY_WORKSPACE | ./larry-workspace | where documents, invites and call records are written |
| LARRY_PHONE_PROVIDER | record | record (writes a call record, no telephony) or twilio |
| TWILIO_API_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM | (unset) | the Twilio-style provider's API |
| LLM_BASE_URL, LLM_API_KEY, LLM_MODEL | (unset), (unset), gpt-4o-mini | an OpenAI-compatible API for documents |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TLS_MODES = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class LarryConfig:
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_tls: str = "none"
    sender: str = "larry@localhost"
    workspace: Path = Path("larry-workspace")
    phone_provider: str = "record"
    twilio_api_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> LarryConfig:
        env = os.environ if env is None else env
        tls = (env.get("SMTP_TLS") or "none").lower()
        if tls not in TLS_MODES:
            raise ValueError(f"SMTP_TLS is one of {', '.join(TLS_MODES)}, not {tls!r}")
        default_port = {"none": 25, "starttls": 587, "ssl": 465}[tls]
        values = dict(
            smtp_host=env.get("SMTP_HOST") or "localhost", smtp_port=int(env.get("SMTP_PORT") or default_port),
            smtp_user=env.get("SMTP_USER") or None, smtp_password=env.get("SMTP_PASSWORD") or None, smtp_tls=tls,
            sender=env.get("LARRY_FROM") or "larry@localhost",
            workspace=Path(env.get("LARRY_WORKSPACE") or "larry-workspace"),
            phone_provider=env.get("LARRY_PHONE_PROVIDER") or "record",
            twilio_api_url=env.get("TWILIO_API_URL") or None, twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None, twilio_from=env.get("TWILIO_FROM") or None,
            llm_base_url=env.get("LLM_BASE_URL") or None, llm_api_key=env.get("LLM_API_KEY") or None,
            llm_model=env.get("LLM_MODEL") or "gpt-4o-mini",
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
