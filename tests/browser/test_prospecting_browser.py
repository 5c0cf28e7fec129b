"""The dashboard while Larry runs the prospecting scenario: the list and an execution's page follow two
Larry processes live. Its screenshots are the README's (`prospecting-demo.png`, `prospecting-execution.png`)."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from larry.scenario import run_scenario

from orchestrator.credentials import hash_password
from orchestrator.models import User
from tests.agents.conftest import Mailbox, write_csv
from tests.browser.test_dashboard_browser import CHROMIUM, TIMEOUT_MS, browser, expect, page, shot  # noqa: F401
from tests.factories import make_user_with_token
from tests.processes import free_port

pytestmark = [pytest.mark.browser, pytest.mark.integration]
assert CHROMIUM and TIMEOUT_MS  # the module-level skip of the dashboard tests applies here too


@pytest.fixture
def slow_smtp(monkeypatch: pytest.MonkeyPatch):
    """An SMTP server that holds each message of `slow.test` for a while, so that the run is caught mid-way."""
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(port))
    yield box
    controller.stop()


def test_the_dashboard_follows_larry_live(page, live_server, worker, db, slow_smtp, tmp_path) -> None:  # noqa: F811
    with db.unit_of_work() as s:
        user, token = make_user_with_token(s, "mark")
        s.get(User, user.id).password_hash = hash_password("pw")
    prospects = write_csv(tmp_path / "prospects.csv", [
        ("Carol Smith", "Bittersweet Farm", "carol@slow.test", "860-455-9416", "new", "breeder", "fair"),
        ("Dan Ortiz", "Ortiz Kennels", "dan@slow.test", "+1 415 555 0199", "new", "", "web"),
        ("Eve Park", "Park Vineyards", "eve@slow.test", "(212) 555-0142", "new", "wine", "referral"),
    ])
    out: dict[str, Any] = {"lines": []}
    run = threading.Thread(target=lambda: out.update(rc=run_scenario(
        live_server.url, token, prospects, workers=2, workspace=tmp_path / "ws", say=out["lines"].append)),
        daemon=True)
    run.start()

    page.goto(f"{live_server.url}/login?next=/executions")
    page.fill("input[name=username]", "mark")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")
    expect(page.locator("#live")).to_have_text("live")
    running = page.locator('tr[data-execution-id] [data-field="status"]', has_text="RUNNING")
    expect(running.first).to_be_visible(timeout=45_000)
    shot(page, "prospecting-demo")

    page.locator("tr[data-execution-id] a").first.click()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator(".phase li.task")).to_have_count(3)
    expect(page.locator("li.subtask .status", has_text="COMPLETE").first).to_be_visible(timeout=45_000)
    shot(page, "prospecting-execution")
    expect(page.locator("#ex-status")).to_have_text("COMPLETED", timeout=90_000)  # followed live to the end
    run.join(timeout=90)
    assert out.get("rc") == 0, "\n".join(out["lines"])
    assert len(slow_smtp.messages) == 9
    assert re.search(r"summary: 3 completed", out["lines"][-1])
