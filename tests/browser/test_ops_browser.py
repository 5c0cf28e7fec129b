"""The ops view and the execution timeline in headless Chromium, against the live server and a real worker.

Screenshots go where tests/browser/test_dashboard_browser.py puts its own (ops.png, timeline.png).
"""

from __future__ import annotations

import re

import pytest

from orchestrator.credentials import hash_password
from orchestrator.models import User
from tests.browser import test_dashboard_browser as base
from tests.workers.helpers import Scene, queued_execution

pytestmark = [pytest.mark.browser, pytest.mark.integration]

expect = base.expect
browser = base.browser  # the same module-scoped browser and per-test page
page = base.page


@pytest.fixture
def scene(db, live_server, worker) -> Scene:
    scene = queued_execution(db, n_tasks=1, n_subtasks=2, retry_policy={"max_attempts": 3, "backoff": "fixed",
                                                                        "backoff_seconds": 0})
    with db.unit_of_work() as s:
        owner = s.get(User, scene.owner_id)
        owner.username, owner.password_hash = "mark", hash_password("pw")
        root = User(id="user_root", username="root", password_hash=hash_password("pw"), is_admin=True)
        s.add(root)
    return scene


def log_in(page, live_server, username: str, next_path: str) -> None:
    page.goto(f"{live_server.url}/login?next={next_path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")


def test_the_ops_view_follows_the_stack_live(page, live_server, scene) -> None:
    agent = base.Agent(live_server.url, scene)
    log_in(page, live_server, "root", "/ops")
    expect(page).to_have_url(re.compile(r"/ops$"))
    expect(page.locator("nav a", has_text="Ops")).to_be_visible()
    expect(page.locator("#ready-status")).to_have_text(re.compile(r"^(ready|degraded)$"))
    expect(page.locator('#ready-checks li[data-check="database"] .chip')).to_have_text("ok")
    expect(page.locator("#shards tbody tr")).to_have_count(live_server.app.config["SETTINGS"].ingest_shards)
    expect(page.locator('#states tr[data-state="QUEUED"] td').nth(1)).to_have_text(re.compile(r"^[1-9]"))
    # Rates need two reads: wait for the first before the agent works, so its events fall between two.
    expect(page.locator('[data-metric="accepted"] svg')).to_have_attribute("data-points", re.compile(r"^[1-9]"))

    agent.claim("task_0_a")
    agent.post("task_started", "task_0_a")
    agent.post("task_complete", "task_0_a", status="success")
    expect(page.locator('[data-metric="accepted"] svg')).not_to_have_attribute("data-max", "0")
    expect(page.locator('[data-metric="applied"] svg')).not_to_have_attribute("data-max", "0")
    expect(page.locator('#states tr[data-state="RUNNING"] td').nth(1)).to_have_text(re.compile(r"^[1-9]"))
    expect(page.locator('[data-metric="agents"] svg')).to_have_attribute("data-points", re.compile(r"^[2-9]|\d\d"))
    expect(page.locator("#v-agents")).to_have_text(re.compile(r"^[1-9]\d* / "))
    expect(page.locator('[data-metric="applied"] svg polyline')).to_have_count(1)
    base.shot(page, "ops")


def test_the_ops_view_is_for_admins(page, live_server, scene) -> None:
    log_in(page, live_server, "mark", "/executions")
    expect(page).to_have_url(re.compile(r"/executions$"))
    expect(page.locator("nav a", has_text="Ops")).to_have_count(0)
    resp = page.goto(f"{live_server.url}/ops")
    assert resp is not None and resp.status == 404


def test_the_execution_page_draws_each_subtasks_attempts(page, live_server, scene) -> None:
    agent = base.Agent(live_server.url, scene)
    agent.claim("task_0_a")
    agent.post("task_started", "task_0_a")
    agent.post("task_error", "task_0_a", status="error", error_type="transient", error_message="Timeout")
    log_in(page, live_server, "mark", f"/executions/{scene.execution_id}")
    row = page.locator('svg.gantt g.gantt-row[data-subtask-id="task_0_a"]')
    expect(row).to_have_attribute("data-attempts", "1")
    expect(row.locator("rect.gantt-failed")).to_have_count(1)
    expect(page.locator('svg.gantt g.gantt-row[data-subtask-id="task_0_b"]')).to_have_attribute("data-attempts", "0")

    # The second attempt shows up live, as the page refreshes for the agent's events.
    work = agent.claim("task_0_a")
    assert work["next_task"]["attempt"] == 2
    agent.post("task_started", "task_0_a")
    expect(row).to_have_attribute("data-attempts", "2")
    expect(row.locator("rect.gantt-running")).to_have_count(1)
    agent.post("task_complete", "task_0_a", status="success")
    expect(row.locator("rect.gantt-completed")).to_have_count(1)
    expect(row.locator("rect.gantt-failed")).to_have_count(1)
    expect(row.locator("rect.gantt-wait").first).to_be_attached()
    expect(row.locator("text.gantt-tries")).to_have_text("×2")
    base.shot(page, "timeline")
