"""Metrics, readiness, the ops summary and the timeline over real HTTP, with the session's real worker.

The worker is a child process writing its metrics to the folder this process writes to
(PROMETHEUS_MULTIPROC_DIR, set in tests/conftest.py): /metrics adds both up, as it adds up gunicorn's
and Celery's processes in production. Counters are process totals shared by the whole session, so
the tests compare before and after, never absolute values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import make_user_with_token
from tests.web.conftest import bearer
from tests.workers.helpers import queued_execution

pytestmark = pytest.mark.integration


def scrape(live_server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = requests.get(f"{live_server.url}/metrics", timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain"), resp.text[:300]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def value(got: dict, name: str, **labels: str) -> float:
    return got.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def heads(db) -> dict[str, dict[str, str]]:
    """Authorization headers of an operator (Mark) and an admin (Root)."""
    with db.unit_of_work() as s:
        _, mark = make_user_with_token(s, "mark")
        root, admin = make_user_with_token(s, "root")
        root.is_admin = True
    return {"mark": bearer(mark), "admin": bearer(admin)}


class AgentHTTP:
    def __init__(self, live_server, scene) -> None:
        self.base, self.scene = live_server.url, scene
        self.s = requests.Session()
        self.s.auth = scene.auth

    def poll(self) -> requests.Response:
        return self.s.get(f"{self.base}/api/agents/{self.scene.agent_id}/work", timeout=30)

    def post(self, event_type: str, task_id: str, **body) -> requests.Response:
        return self.s.post(f"{self.base}/api/executions/{self.scene.execution_id}/events", timeout=30,
                           json={"agent_id": self.scene.agent_id, "event_type": event_type, "task_id": task_id,
                                 **body})


def test_counts_move_as_events_go_through_the_worker(db, redis, live_server, worker) -> None:
    scene = queued_execution(db, n_tasks=1, n_subtasks=2)
    agent = AgentHTTP(live_server, scene)
    before = scrape(live_server)

    work = agent.poll()
    assert work.status_code == 200, work.text
    assert agent.post("task_started", "task_0_a").status_code == 201
    assert agent.post("task_complete", "task_0_a", status="success").status_code == 201
    # Not the holder of task_0_b: refused at the edge.
    assert agent.post("task_complete", "task_0_b").status_code == 409
    assert agent.poll().status_code == 200  # task_0_b now

    after: dict = {}

    def applied_twice() -> bool:
        after.update(scrape(live_server))
        applied = "orchestrator_events_applied_total"
        return value(after, applied) >= value(before, applied) + 2

    wait_for(applied_twice, "the worker's applied count in /metrics")
    assert value(after, "orchestrator_events_accepted_total") >= value(before, "orchestrator_events_accepted_total") + 2
    assert value(after, "orchestrator_events_rejected_total", stage="accept", code="not_holder") == value(
        before, "orchestrator_events_rejected_total", stage="accept", code="not_holder") + 1
    assert value(after, "orchestrator_apply_batch_size_count") > value(before, "orchestrator_apply_batch_size_count")
    seconds = "orchestrator_apply_batch_seconds_count"
    assert value(after, seconds) > value(before, seconds)
    assert value(after, "orchestrator_claims_total", redelivered="false") >= value(
        before, "orchestrator_claims_total", redelivered="false") + 2
    assert value(after, "orchestrator_polls_total", outcome="claimed") >= value(
        before, "orchestrator_polls_total", outcome="claimed") + 2
    assert value(after, "orchestrator_poll_seconds_count", outcome="claimed") > value(
        before, "orchestrator_poll_seconds_count", outcome="claimed")
    # Requests by route (the URL rule's endpoint, not the path) and status.
    assert value(after, "orchestrator_http_requests_total", endpoint="events.post_event", method="POST",
                 status="201") >= value(before, "orchestrator_http_requests_total", endpoint="events.post_event",
                                        method="POST", status="201") + 2
    assert not any(scene.execution_id in str(labels) for _, labels in after)
    # Computed at scrape time: the execution is RUNNING, and the worker's heartbeat is fresh.
    assert value(after, "orchestrator_executions", state="RUNNING") >= 1
    assert value(after, "orchestrator_snapshot_ok") == 1


def test_dead_letters_are_counted(db, redis, migrated, live_server, worker) -> None:
    from orchestrator.events.protocol import Keys

    before = scrape(live_server)
    redis.xadd(Keys(migrated.redis_key_prefix).stream(0), {"e": b"not an envelope"})
    live_server.app.extensions["celery"].send_task("workers.tasks.drain", args=[0])
    got: dict = {}

    def counted() -> bool:
        got.update(scrape(live_server))
        return value(got, "orchestrator_events_dead_lettered_total", reason="malformed") > value(
            before, "orchestrator_events_dead_lettered_total", reason="malformed")

    wait_for(counted, "the dead-lettered count")
    assert value(got, "orchestrator_dead_letters") >= 1


def test_readyz_sees_the_running_worker(live_server, worker, redis) -> None:
    def worker_ok() -> bool:
        body = requests.get(f"{live_server.url}/readyz", timeout=10).json()
        return body["checks"]["worker"]["status"] == "ok"

    # The worker beats every SWEEP_INTERVAL_SECONDS (2 s here); the redis fixture wiped the key before.
    wait_for(worker_ok, "the worker's heartbeat in /readyz")


def test_ops_summary_is_for_admins(db, heads, live_server) -> None:
    h = heads
    # Anyone else is told it does not exist, as with every admin endpoint.
    assert requests.get(f"{live_server.url}/api/ops/summary", headers=h["mark"], timeout=10).status_code == 404
    resp = requests.get(f"{live_server.url}/api/ops/summary", headers=h["admin"], timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) >= {"time", "totals", "shards", "dead_letters", "executions", "agents", "workers_alive"}
    assert len(body["shards"]) == live_server.app.config["SETTINGS"].ingest_shards


def test_the_timeline_shows_each_attempt(db, redis, heads, live_server, worker) -> None:
    scene = queued_execution(db, n_tasks=1, n_subtasks=2, retry_policy={"max_attempts": 3, "backoff": "fixed",
                                                                        "backoff_seconds": 0})
    agent = AgentHTTP(live_server, scene)
    assert agent.poll().status_code == 200
    assert agent.post("task_started", "task_0_a").status_code == 201
    resp = agent.post("task_error", "task_0_a", status="error", error_type="transient", error_message="Timeout")
    assert resp.status_code == 201 and resp.json()["retry_scheduled"] is True, resp.text
    work = agent.poll()
    assert work.status_code == 200 and work.json()["next_task"]["attempt"] == 2, work.text
    assert agent.post("task_complete", "task_0_a", status="success").status_code == 201

    url = f"{live_server.url}/api/executions/{scene.execution_id}/timeline"
    assert requests.get(url, headers=heads["mark"], timeout=10).status_code == 404  # not his
    resp = requests.get(url, headers=heads["admin"], timeout=10)
    assert resp.status_code == 200, resp.text
    rows = {s["subtask_id"]: s for s in resp.json()["subtasks"]}
    first = rows["task_0_a"]
    assert [a["outcome"] for a in first["attempts"]] == ["failed", "completed"], first
    assert all(a["started_at"] and a["ended_at"] for a in first["attempts"])
    assert first["attempts"][0]["ended_at"] <= first["attempts"][1]["started_at"]
    assert (first["attempt"], first["status"]) == (2, "COMPLETE")
    assert rows["task_0_b"]["attempts"] == []


def test_a_worker_serves_its_hosts_metrics_and_beats_while_it_runs(migrated, tmp_path, monkeypatch) -> None:
    import socket

    from orchestrator.liveness import worker_heartbeats
    from orchestrator.metrics import instruments
    from tests.conftest import WorkerProcess
    from tests.workers.helpers import own_key_prefix

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    instruments()  # this process writes to the same folder: the worker's endpoint adds it in
    with own_key_prefix(migrated, "wmetrics") as (settings, r):
        proc = WorkerProcess(settings, tmp_path / "worker.log", concurrency=1).start()
        try:
            wait_for(lambda: len(worker_heartbeats(r, settings.redis_key_prefix)) == 1, "the worker's heartbeat")
            text = ""

            def served() -> bool:
                nonlocal text
                try:
                    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except requests.ConnectionError:
                    return False
                return True

            wait_for(served, "the worker's metrics endpoint")
            assert "orchestrator_events_accepted_total" in text
        finally:
            proc.stop()
        assert worker_heartbeats(r, settings.redis_key_prefix) == {}  # a clean stop says so at once
