"""A handler's after-commit work, carried out with the app's Redis and key prefix."""

from __future__ import annotations

import logging

import redis
from flask import current_app

from orchestrator.effects import AfterCommit, carry_out

log = logging.getLogger(__name__)


def after_commit(work: AfterCommit) -> None:
    """Call only once the handler's unit of work has committed. Never raises a Redis error.

    By now the change is in the database, which stays the authority: holds and memberships in Redis
    are a cache the event front end refills from the database on a miss, and a dashboard that missed
    a message replays it by `seq`. A 503 here would tell the client that a committed change failed:
    a poll's claim would sit with an agent that never got the subtask, and a retried request could
    make its change twice. So the loss is logged and the handler answers with what committed.
    """
    r = current_app.extensions["redis"]
    prefix = current_app.config["SETTINGS"].redis_key_prefix
    try:
        carry_out(r, prefix, work)
    except redis.RedisError as exc:
        log.warning("Redis unavailable after a commit (%s): %d holds, %d releases and %d stream messages not "
                    "written", exc, len(work.holds), sum(map(len, work.released.values())), len(work.messages))
        # What remains touches no Redis (empty holds, releases and messages): the transition log
        # lines and owner notices must not be lost with the cache.
        carry_out(r, prefix, AfterCommit(transitions=work.transitions, notifications=work.notifications))
