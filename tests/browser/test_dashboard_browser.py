"""The dashboard in headless Chromium against the live server and a real worker.

An agent is driven over HTTP (poll, events) while the page stays open: what the agent does must show
up without a reload, and what the operator presses must reach the agent's next poll. A screenshot of
each page goes to $ARTIFACTS_DIR (default artifacts/screenshots under the repository root).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from orchestrator.credentials import hash_password
from orchestrator.models import Agent as AgentRow
from orchestrator.models import User
from tests.workers.helpers import Scene, queued_execution

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 15_000

pytestmark = [pytest.mark.browser, pytest.mark.integration]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright Python package")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


def artifacts_dir() -> Path:
    root = Path(__file__).resolve().parents[2]
    path = Path(os.environ.get("ARTIFACTS_DIR") or root / "artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(page, name: str) -> None:
    page.screenshot(path=str(artifacts_dir() / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    # The page's own errors explain a failed expectation better than the timeout does.
    pg.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    pg.on("pageerror", lambda exc: print(f"page error: {exc}"))
    yield pg
    context.close()


class Agent:
    """The scene's agent, talking HTTP to the live server as a real one would."""

    def __init__(self, base: str, scene: Scene) -> None:
        self.base, self.scene = base, scene
        self.s = requests.Session()
        self.s.auth = scene.auth  # its key, and its signature on every request

    def poll(self) -> requests.Response:
        return self.s.get(f"{self.base}/api/agents/{self.scene.agent_id}/work", timeout=30)

    def claim(self, subtask_id: str) -> dict:
        resp = self.poll()
        assert resp.status_code == 200, resp.text
        work = resp.json()
        assert work["next_task"]["task_id"] == subtask_id, work
        return work

    def post(self, event_type: str, task_id: str, **body) -> dict:
        resp = self.s.post(f"{self.base}/api/executions/{self.scene.execution_id}/events", timeout=30,
                           json={"agent_id": self.scene.agent_id, "event_type": event_type, "task_id": task_id,
                                 **body})
        assert resp.status_code in (201, 202), resp.text
        return resp.json()


@pytest.fixture
def scene(db, live_server, worker) -> Scene:
    scene = queued_execution(db, n_tasks=2, n_subtasks=2)
    with db.unit_of_work() as s:
        mark = s.get(User, scene.owner_id)
        mark.username = "mark"
        mark.password_hash = hash_password("pw")
        s.get(AgentRow, scene.agent_id).owner_id = mark.id  # so that Mark's agents page lists it
    return scene


@pytest.fixture
def agent(scene, live_server) -> Agent:
    return Agent(live_server.url, scene)


def log_in(page, live_server, next_path: str = "") -> None:
    page.goto(f"{live_server.url}/login{'?next=' + next_path if next_path else ''}")
    shot(page, "login")
    page.fill("input[name=username]", "mark")
    page.fill("input[name=password]", "pw")
    page.click("button[type=submit]")


def open_execution(page, live_server, scene: Scene) -> None:
    page.goto(f"{live_server.url}/executions/{scene.execution_id}")
    expect(page.locator("#live")).to_have_text("live")


def subtask_status(page, subtask_id: str):
    return page.locator(f'li.subtask[data-subtask-id="{subtask_id}"] .status')


def test_login_list_and_live_execution_page(page, live_server, scene, agent) -> None:
    page.goto(f"{live_server.url}/login")
    page.fill("input[name=username]", "mark")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("Wrong username or password.")
    log_in(page, live_server)
    expect(page).to_have_url(re.compile(r"/executions$"))
    row = page.locator(f'tr[data-execution-id="{scene.execution_id}"]')
    expect(row.locator('[data-field="status"]')).to_have_text("QUEUED")
    expect(page.locator("#live")).to_have_text("live")

    # The list follows the agent's claim without a reload.
    agent.claim("task_0_a")
    expect(row.locator('[data-field="status"]')).to_have_text("RUNNING")
    shot(page, "executions")

    row.locator("a").first.click()
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#ex-status")).to_have_text("RUNNING")
    expect(subtask_status(page, "task_0_a")).to_have_text("RUNNING")
    expect(page.locator(".phase li.task")).to_have_count(2)

    agent.post("task_started", "task_0_a", message="Writing to Carol.")
    agent.post("task_complete", "task_0_a", status="success", message="Email sent.")
    expect(subtask_status(page, "task_0_a")).to_have_text("COMPLETE")
    expect(page.locator("#events tbody tr").first).to_contain_text("Email sent.")
    agent.claim("task_0_b")
    agent.post("task_complete", "task_0_b", status="success", message="Requirements written.")
    expect(page.locator("#ex-progress")).to_have_text("1/2 (50%)")
    expect(page.locator('li.task[data-task-id="task_0"] > .line .status')).to_have_text("COMPLETE")
    expect(page.locator("#ex-bar")).to_have_attribute("style", re.compile(r"width: 50%"))
    expect(page.locator("#events tbody tr").first).to_contain_text("Requirements written.")
    shot(page, "execution")

    # The type filter asks the API for that type only.
    page.select_option("#event-type", "task_complete")
    expect(page.locator("#events tbody tr")).to_have_count(2)
    for text in page.locator("#events tbody tr td:nth-child(2)").all_inner_texts():
        assert text == "task_complete"

    page.goto(f"{live_server.url}/agents")
    expect(page.locator(f'tr[data-agent-id="{scene.agent_id}"]')).to_contain_text("send_email")
    shot(page, "agents")


def test_pause_reaches_the_agents_next_poll(page, live_server, scene, agent) -> None:
    agent.claim("task_0_a")
    log_in(page, live_server, f"/executions/{scene.execution_id}")
    expect(page.locator("#ex-status")).to_have_text("RUNNING")
    expect(page.locator("#live")).to_have_text("live")
    page.click("#btn-pause")
    expect(page.locator("#ex-status")).to_have_text("PAUSED")
    expect(page.locator("#btn-resume")).to_be_enabled()
    work = agent.poll().json()
    assert work["force_pause"] is True and work["work_available"] is False
    page.click("#btn-resume")
    expect(page.locator("#ex-status")).to_have_text("RUNNING")
    resumed = agent.poll()  # nothing new to hand out (the held subtask blocks the next), and no pause
    assert resumed.status_code == 204 or resumed.json()["force_pause"] is False


def test_resolve_a_blocked_task_from_its_buttons(page, live_server, scene, agent) -> None:
    agent.claim("task_0_a")
    log_in(page, live_server, f"/executions/{scene.execution_id}")
    expect(page.locator("#live")).to_have_text("live")
    agent.post("task_error", "task_0_a", status="error", error_type="external_dependency_blocked",
               error_message="Carol's address bounced <b>twice</b>.", human_review_required=True, blocking=True,
               suggestions=["Try info@bittersweetfarm.com", "Call Carol"], next_step_options=["approve_alternative"])
    blocked = page.locator('li.task[data-task-id="task_0"] .blocked')
    expect(page.locator("#ex-status")).to_have_text("BLOCKED")
    # The agent's text is shown as text, never as markup.
    expect(blocked.locator(".agent-error")).to_have_text("Carol's address bounced <b>twice</b>.")
    # Personal data is masked on the page (orchestrator/masking.py).
    expect(blocked.locator(".suggestions li")).to_have_text(["Try i***@bittersweetfarm.com", "Call Carol"])
    for option in ("approve_alternative", "retry_task", "skip_task", "cancel_execution"):
        expect(blocked.locator(f'button[data-option="{option}"]')).to_be_visible()
    shot(page, "execution-blocked")

    # An approve option without params is refused in the page before reaching the API.
    blocked.locator('button[data-option="approve_alternative"]').click()
    expect(blocked.locator(".error")).to_contain_text("JSON object")
    blocked.locator("textarea").fill('{"to": "info@bittersweetfarm.com"}')
    blocked.locator('button[data-option="approve_alternative"]').click()
    expect(page.locator("#ex-status")).to_have_text("RUNNING")
    expect(page.locator(".blocked")).to_have_count(0)
    # Let the page's refresh for the resolve's messages run (150 ms after them) before the claim:
    # the claim must then reach the page by a message of its own, as it does for people watching.
    expect(page.locator("#events tbody")).to_contain_text("task_resolved")
    page.wait_for_timeout(600)

    work = agent.claim("task_0_a")
    assert work["next_task"]["params"]["to"] == "info@bittersweetfarm.com" and work["next_task"]["attempt"] == 2
    expect(subtask_status(page, "task_0_a")).to_have_text("RUNNING")
    agent.post("task_complete", "task_0_a", status="success", message="Sent to the new address.")
    expect(subtask_status(page, "task_0_a")).to_have_text("COMPLETE")
    expect(page.locator("#events tbody")).to_contain_text("task_resolved")


def test_event_log_pages_back_and_filters(page, live_server, scene, db) -> None:
    from datetime import timedelta

    from orchestrator.event_log import record_event
    from orchestrator.models import utcnow

    start = utcnow() - timedelta(hours=1)
    with db.unit_of_work() as s:
        for i in range(60):  # more than one page (50) of history
            record_event(s, scene.execution_id, "heartbeat", start + timedelta(seconds=i), source="agent",
                         message=f"beat {i:02d}")
    log_in(page, live_server, f"/executions/{scene.execution_id}")
    rows = page.locator("#events tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#older")).to_be_visible()
    page.click("#older")
    expect(rows).to_have_count(61)  # 60 heartbeats and execution_created
    # Newest first in commit order: the back-dated heartbeats were written after the creation.
    expect(rows.nth(59)).to_contain_text("beat 00")
    expect(rows.last).to_contain_text("execution_created")
    expect(page.locator("#older")).to_be_hidden()
    page.select_option("#event-type", "execution_created")
    expect(rows).to_have_count(1)
