"""What a request confirms in the first Redis round trip its work makes anyway.

An agent's poll (`ready_work.read_state`) and event POST (`Ingestor.submit`) begin with a read of
Redis that changes nothing. Checks that would otherwise each cost a round trip of their own before
the view runs go into that one instead: the access epoch a cached principal was loaded under
(`revocation.EpochSeen`), and the agent's rate-limit count (`web/rate_limits.py`). A check queues one
command; its reply is verified before anything is done with the rest, so a refused request has
changed nothing but the count of its own refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis


class RoundTripCheck(Protocol):
    def queue(self, pipe: redis.client.Pipeline) -> None:
        """Queue exactly one command on `pipe`."""

    def verify(self, reply: Any) -> None:
        """Raise to refuse the request, given the reply to the command `queue` queued."""


def queue_checks(pipe: redis.client.Pipeline, checks: Sequence[RoundTripCheck]) -> None:
    """Queue the checks first: their replies lead the pipeline's (`execute` takes them off)."""
    for check in checks:
        check.queue(pipe)


def execute(pipe: redis.client.Pipeline, checks: Sequence[RoundTripCheck]) -> list[Any]:
    """Send the round trip; verify the checks on their replies; return the replies to the rest. A
    command's error comes back to its check as the reply (a script Redis does not have yet, say),
    and is raised for the rest."""
    replies = _verify_checks(checks, pipe.execute(raise_on_error=False))
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _verify_checks(checks: Sequence[RoundTripCheck], replies: list[Any]) -> list[Any]:
    """Verify every check on its reply (all of them, so that each sees its outcome, even when an earlier
    one refuses), raise the first refusal, and return the replies that follow theirs."""
    refusals = []
    for check, reply in zip(checks, replies, strict=False):
        try:
            check.verify(reply)
        except Exception as exc:  # noqa: BLE001 - re-raised below, the first one
            refusals.append(exc)
    if refusals:
        raise refusals[0]
    return replies[len(checks):]
