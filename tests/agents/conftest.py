"""A stack of its own for Larry's end-to-end tests: a live server and a worker on their own Redis key
prefix, whose worker POSTs blocks to a local webhook receiver; a real SMTP server (aiosmtpd) that
refuses the addresses of `bounce.test` and holds the mail of `slow.test` for a while."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from tests.conftest import LiveServer, WorkerProcess
from tests.factories import make_user_with_token
from tests.processes import free_port
from tests.webhooks import WebhookReceiver
from tests.workers.helpers import own_key_prefix

WEBHOOK_SECRET = "whsec-larry-tests"
REFUSED_DOMAIN = "bounce.test"
SLOW_DOMAIN = "slow.test"
SLOW_SECONDS = 2.0


class Mailbox:
    """aiosmtpd's handler: refuses `bounce.test` recipients with a 550, keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address.lower().endswith("@" + REFUSED_DOMAIN):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if any(a.lower().endswith("@" + SLOW_DOMAIN) for a in envelope.rcpt_tos):
            await asyncio.sleep(SLOW_SECONDS)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in (m["To"] or "")]


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """The SMTP server, and the environment that points Larry (and its child processes) at it."""
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    for key, value in {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_TLS": "none",
                       "LARRY_FROM": "larry@prospecting.test", "LARRY_PHONE_PROVIDER": "record"}.items():
        monkeypatch.setenv(key, value)
    yield box
    controller.stop()


@dataclass
class Webhook:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@dataclass
class LarryStack:
    url: str
    webhook: Webhook


@pytest.fixture(scope="module")
def larry_stack(migrated, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LarryStack]:
    from web.app import create_app

    with WebhookReceiver("/hooks/orchestrator") as receiver, own_key_prefix(migrated, "larry") as (settings, _):
        hook = Webhook(receiver.url, receiver.received)
        settings = settings.replace(notify_webhook_url=hook.url, notify_webhook_secret=WEBHOOK_SECRET)
        worker = WorkerProcess(settings, tmp_path_factory.mktemp("larry") / "worker.log").start()
        server = LiveServer(create_app(settings))
        try:
            yield LarryStack(server.url, hook)
        finally:
            server.stop()
            worker.stop()


@pytest.fixture
def operator_token(db) -> str:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s, "mark")
    return token


class Operator:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.s = base, requests.Session()
        self.s.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str) -> dict[str, Any]:
        resp = self.s.get(self.base + path, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def send(self, method: str, path: str, body: dict[str, Any]) -> requests.Response:
        return self.s.request(method, self.base + path, json=body, timeout=30)


def write_csv(path: Path, rows: list[tuple[str, ...]]) -> Path:
    lines = ["name,business,email,phone,status,notes,source"]
    lines += [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def json_of(body: bytes) -> dict[str, Any]:
    return json.loads(body)
