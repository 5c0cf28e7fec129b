"""Owners hear of blocks: the drainer hands a notice to `notify`, and the webhook is signed."""

from __future__ import annotations

import json

from orchestrator.events.accept import Ingestor, Submission
from orchestrator.events.drain import ShardDrainer
from orchestrator.models import utcnow
from orchestrator.notify import send_webhook, sign, verify
from tests.webhooks import WebhookReceiver
from tests.workers.helpers import claim, queued_execution


def test_signature_round_trip() -> None:
    sig = sign("s3cret", "1700000000", b'{"a":1}')
    assert sig.startswith("sha256=")
    assert not verify("s3cret", "1700000000", b'{"a":1}', sig)  # too old
    import time

    ts = str(int(time.time()))
    assert verify("s3cret", ts, b"{}", sign("s3cret", ts, b"{}"))
    assert not verify("other", ts, b"{}", sign("s3cret", ts, b"{}"))


def test_webhook_is_posted_signed() -> None:
    with WebhookReceiver() as hook:
        status = send_webhook(hook.url, "s3cret", {"execution_id": "exec_1", "error_message": "bounced"})
    assert status == 204
    headers, body = hook.received[0]
    assert json.loads(body) == {"type": "execution_blocked", "execution_id": "exec_1", "error_message": "bounced"}
    assert verify("s3cret", headers["x-orchestrator-timestamp"], body, headers["x-orchestrator-signature"])


def test_drainer_notifies_owner_of_a_block(db, redis, migrated) -> None:
    scene = queued_execution(db, n_subtasks=1)
    claim(db, redis, migrated, scene, "task_0_a")
    triggered: list[int] = []
    ingestor = Ingestor(redis, migrated.redis_key_prefix, migrated.ingest_shards, trigger=triggered.append, db=db)
    accepted, = ingestor.submit(scene.agent_id, [Submission(scene.execution_id, {
        "event_type": "task_error", "task_id": "task_0_a", "error_message": "Email bounced",
        "human_review_required": True, "suggestions": ["Call Carol"]})], utcnow(), awaited=True)
    notices: list[dict] = []
    drainer = ShardDrainer(db, redis, migrated.redis_key_prefix, batch_size=100, lease_seconds=5,
                           notify=notices.append)
    stats = drainer.drain(triggered[0])
    assert stats.applied == 1
    assert notices[0]["owner_id"] == scene.owner_id and notices[0]["suggestions"] == ["Call Carol"]
    outcome = ingestor.wait_outcome(accepted.event_id, 100)
    assert outcome["status"] == "BLOCKED" and outcome["escalated_to"] == scene.owner_id
