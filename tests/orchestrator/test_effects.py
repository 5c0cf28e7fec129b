"""carry_out, the one executor of after-commit work: each kind of effect, and nothing when there is none."""

from __future__ import annotations

import logging
from unittest.mock import MagicMock

import orjson
import pytest

from orchestrator.effects import AfterCommit, carry_out
from orchestrator.holds import holder, members_key, record_hold
from orchestrator.publish import channel


def test_holds_are_recorded_and_released(redis, base_settings) -> None:
    prefix = base_settings.redis_key_prefix
    record_hold(redis, prefix, "exec_1", "sub_old", "agent_a")
    carry_out(redis, prefix, AfterCommit(holds=[("exec_1", "sub_new", "agent_b")], released={"exec_1": ["sub_old"]}))
    assert holder(redis, prefix, "exec_1", "sub_new") == "agent_b"
    assert holder(redis, prefix, "exec_1", "sub_old") is None
    assert redis.smembers(members_key(prefix, "exec_1")) == {b"agent_a", b"agent_b"}


def test_messages_are_published_in_order(redis, base_settings) -> None:
    prefix = base_settings.redis_key_prefix
    messages = [{"type": "execution_update", "execution_id": "exec_1", "n": i} for i in range(3)]
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(prefix))
    try:
        assert pubsub.get_message(timeout=2) is None  # the subscribe confirmation
        carry_out(redis, prefix, AfterCommit(messages=messages))
        got = [pubsub.get_message(timeout=5) for _ in messages]
    finally:
        pubsub.close()
    assert [orjson.loads(m["data"]) for m in got] == messages


def test_transitions_are_logged_and_owners_notified(redis, base_settings, caplog) -> None:
    notice = {"execution_id": "exec_1", "owner_id": "user_1", "error_message": "No answer",
              "next_step_options": ["retry_task", "skip_task"]}
    sent: list[dict] = []
    with caplog.at_level(logging.INFO):
        carry_out(redis, base_settings.redis_key_prefix,
                  AfterCommit(transitions=[("exec_1", "RUNNING", "BLOCKED")], notifications=[notice]), sent.append)
    assert "Execution exec_1 transitioned: RUNNING -> BLOCKED" in caplog.text
    assert "Execution exec_1 blocked: No answer (owner user_1; options: retry_task, skip_task)" in caplog.text
    assert sent == [notice]


def test_a_notification_without_a_notifier_is_only_logged(redis, base_settings, caplog) -> None:
    notice = {"execution_id": "exec_1", "owner_id": "user_1", "error_message": "x", "next_step_options": []}
    with caplog.at_level(logging.WARNING, logger="orchestrator.effects"):
        carry_out(redis, base_settings.redis_key_prefix, AfterCommit(notifications=[notice]))
    assert "Execution exec_1 blocked" in caplog.text


def test_nothing_to_do_sends_nothing(caplog) -> None:
    r = MagicMock()
    with caplog.at_level(logging.DEBUG):
        carry_out(r, "p:", AfterCommit(released={"exec_1": []}), lambda notice: pytest.fail("notified"))
    # An unused pipeline may be built; nothing may go over the wire.
    assert [name for name, *_ in r.mock_calls if name != "pipeline"] == []
    assert caplog.records == []


def test_merge_keeps_each_kind_in_order() -> None:
    first = AfterCommit(messages=[{"n": 1}], holds=[("e", "a", "x")], released={"e": ["a"]},
                        transitions=[("e", "QUEUED", "RUNNING")], notifications=[{"n": 1}])
    first.merge(AfterCommit(messages=[{"n": 2}], holds=[("e", "b", "y")], released={"e": ["b"], "f": ["c"]},
                            transitions=[("e", "RUNNING", "BLOCKED")], notifications=[{"n": 2}]))
    assert first == AfterCommit(messages=[{"n": 1}, {"n": 2}], holds=[("e", "a", "x"), ("e", "b", "y")],
                                released={"e": ["a", "b"], "f": ["c"]},
                                transitions=[("e", "QUEUED", "RUNNING"), ("e", "RUNNING", "BLOCKED")],
                                notifications=[{"n": 1}, {"n": 2}])
