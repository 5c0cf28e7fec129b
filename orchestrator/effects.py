"""What a unit of work leaves to do once it has committed, and the one function that does it.

Every writer (the poll, the event worker, the sweeper, operators' changes) collects its Redis
holds, stream messages, transition log lines and owner notifications in an `AfterCommit` while its
transaction runs, and hands it to `carry_out` only after the commit (invariant 5): a rolled-back
transaction must leave no hold, no message and no log line behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from orchestrator.holds import queue_hold, release_holds
from orchestrator.publish import queue_publish
from orchestrator.ready_work import queue_changes
from orchestrator.state_machine import log_transition

log = logging.getLogger(__name__)

Notify = Callable[[dict[str, Any]], None]


@dataclass
class AfterCommit:
    messages: list[dict[str, Any]] = field(default_factory=list)  # stream messages, in publishing order
    holds: list[tuple[str, str, str]] = field(default_factory=list)  # (execution, subtask, agent) handed out
    released: dict[str, list[str]] = field(default_factory=dict)  # execution → subtasks no longer held
    transitions: list[tuple[str, str, str]] = field(default_factory=list)  # (execution, from, to)
    notifications: list[dict[str, Any]] = field(default_factory=list)  # owners to tell a person is needed
    # The owners of executions whose ready work may have changed, or whose holders' answers did: an
    # execution queued, resumed, paused or cancelled (`move_execution`), a subtask's last
    # prerequisite done or a subtask back in the queue (`ExecutionGraph.readied`), an operator's
    # resolve. Their agents' idle polls (and unowned agents') then look again
    # (orchestrator/ready_work.py). A release alone does not: a subtask done or failed makes no
    # work ready that this would not name.
    work_moved: set[str] = field(default_factory=set)
    assigned: list[str] = field(default_factory=list)  # agents assigned an execution

    def release(self, execution_id: str, subtask_id: str) -> None:
        self.released.setdefault(execution_id, []).append(subtask_id)

    def merge(self, other: AfterCommit) -> None:
        """Add what another (already committed) unit of work left to do, after this one's."""
        self.messages += other.messages
        self.holds += other.holds
        for execution_id, subtask_ids in other.released.items():
            self.released.setdefault(execution_id, []).extend(subtask_ids)
        self.transitions += other.transitions
        self.notifications += other.notifications
        self.work_moved |= other.work_moved
        self.assigned += other.assigned


def queue_effects(pipe: redis.client.Pipeline, prefix: str, work: AfterCommit) -> None:
    """Queue `work`'s Redis writes on `pipe` (none when it has none): holds, releases, stream messages,
    and the ready-work counters (orchestrator/ready_work.py): the versions of the owners in
    `work_moved`, and the counter of each agent handed a hold or assigned an execution, so that idle
    polls look at the database again. A writer that answers someone in a round trip of its own
    should queue these in that same one, ahead of the answer: told that its report was applied, an
    agent may poll at once, and must not be answered from a marker the report made stale."""
    for execution_id, subtask_id, agent_id in work.holds:
        queue_hold(pipe, prefix, execution_id, subtask_id, agent_id)
    for execution_id, subtask_ids in work.released.items():
        release_holds(pipe, prefix, execution_id, subtask_ids)
    queue_publish(pipe, prefix, work.messages)
    queue_changes(pipe, prefix, owners=work.work_moved,
                  agents=[*(agent_id for _, _, agent_id in work.holds), *work.assigned])


def carry_out(r: redis.Redis, prefix: str, work: AfterCommit, notify: Notify | None = None) -> None:
    """Do `work`. Call only once the transaction that collected it has committed: event messages
    take their position (`seq`) from their rows here, and holds must not outlive a rollback. Work
    with only transitions and notifications, as `web.effects.after_commit` passes when Redis has
    failed, touches no Redis."""
    if work.holds or work.messages or any(work.released.values()) or work.work_moved or work.assigned:
        pipe = r.pipeline(transaction=False)  # every Redis write in one round trip: it is on the poll's path
        queue_effects(pipe, prefix, work)
        pipe.execute()
    report_effects(work, notify)


def report_effects(work: AfterCommit, notify: Notify | None = None) -> None:
    """The part of `carry_out` that is not Redis: transition log lines and owners' notifications. For
    a caller that queued `work` on a round trip of its own (`queue_effects`) and sent it."""
    for execution_id, old, new in work.transitions:
        log_transition(execution_id, old, new)
    for notice in work.notifications:
        log.warning("Execution %s blocked: %s (owner %s; options: %s)", notice["execution_id"],
                    notice["error_message"], notice["owner_id"], ", ".join(notice["next_step_options"]))
        if notify is not None:
            notify(notice)
