"""What a handler does after its unit of work has committed: Redis holds, pub/sub, transition logs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import current_app

from orchestrator.holds import record_hold, release_holds
from orchestrator.publish import publish
from orchestrator.state_machine import log_transition


def after_commit(*, messages: Iterable[dict[str, Any]] = (), transitions: Iterable[tuple[str, str, str]] = (),
                 holds: Iterable[tuple[str, str, str]] = (), released: dict[str, list[str]] | None = None) -> None:
    r = current_app.extensions["redis"]
    prefix = current_app.config["SETTINGS"].redis_key_prefix
    for execution_id, subtask_id, agent_id in holds:
        record_hold(r, prefix, execution_id, subtask_id, agent_id)
    for execution_id, subtask_ids in (released or {}).items():
        release_holds(r, prefix, execution_id, subtask_ids)
    publish(r, prefix, messages)
    for execution_id, old, new in transitions:
        log_transition(execution_id, old, new)
