"""An archived execution's page in headless Chromium: its log says where the rest went, rather than look empty."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.archive import FolderStore, archive_ended
from orchestrator.models import Execution, utcnow
from tests.browser import test_dashboard_browser as base

pytestmark = [pytest.mark.browser, pytest.mark.integration]

expect = base.expect
browser = base.browser  # the same module-scoped browser and per-test page
page = base.page
scene = base.scene


def test_an_archived_log_says_so(page, live_server, scene, db, tmp_path) -> None:
    with db.unit_of_work() as s:
        ex = s.get(Execution, scene.execution_id)
        ex.status, ex.completed_at = "CANCELLED", utcnow() - timedelta(days=91)
    (step,) = archive_ended(db, FolderStore(tmp_path), utcnow(), timedelta(days=90), batch=100)
    base.log_in(page, live_server, f"/executions/{scene.execution_id}")
    note = page.locator("#events tbody tr.archived-note")
    expect(note).to_contain_text(f"{step.events} earlier events were archived on")
    expect(page.locator("#events tbody tr")).to_have_count(1)
    base.shot(page, "archived-execution")
