"""GET /metrics: open, Prometheus text, requests counted by route (never by path) and status."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.factories import make_user_with_token
from tests.web.conftest import bearer


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.get_data(as_text=True)) for s in family.samples}


def requests_of(got: dict, endpoint: str, method: str, status: str) -> float:
    labels = (("endpoint", endpoint), ("method", method), ("status", status))
    return got.get(("orchestrator_http_requests_total", labels), 0.0)


def test_requests_are_counted_by_route_and_status_never_by_path(client, db) -> None:
    with db.unit_of_work() as s:
        _, token = make_user_with_token(s)
    before = scrape(client)
    for ident in ("exec_first_unknown", "exec_second_unknown"):
        assert client.get(f"/api/executions/{ident}", headers=bearer(token)).status_code == 404
    assert client.get("/no/such/page").status_code == 404
    after = scrape(client)
    for endpoint, more in (("executions.show", 2), ("unmatched", 1)):
        assert requests_of(after, endpoint, "GET", "404") == requests_of(before, endpoint, "GET", "404") + more
    assert not any("unknown" in value for _, labels in after for _, value in labels)
    seconds = ("orchestrator_http_request_seconds_count", (("endpoint", "executions.show"),))
    assert after[seconds] == before.get(seconds, 0) + 2


def test_metrics_need_no_token_and_read_the_stack(client) -> None:
    got = scrape(client)
    assert got[("orchestrator_snapshot_ok", ())] == 1
    assert ("orchestrator_shard_backlog", (("shard", "0"),)) in got
