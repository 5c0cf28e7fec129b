"""Retry policies: how many attempts a subtask gets and how long to wait between them.

A policy is the plan's JSON: {"max_attempts": 3, "backoff": "exponential", "backoff_seconds": 300,
"max_backoff_seconds": 3600}. `backoff` is "fixed" (always backoff_seconds), "linear"
(backoff_seconds × failed attempts) or "exponential" (backoff_seconds × 2^(failed attempts − 1));
every wait is capped at max_backoff_seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 60
DEFAULT_MAX_BACKOFF_SECONDS = 3600
BACKOFF_KINDS = ("fixed", "linear", "exponential")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: str = "exponential"
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> RetryPolicy:
        raw = raw or {}
        backoff = raw.get("backoff", "exponential")
        if backoff not in BACKOFF_KINDS:
            raise ValueError(f"backoff must be one of {', '.join(BACKOFF_KINDS)}")
        policy = cls(
            max_attempts=int(raw.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
            backoff=backoff,
            backoff_seconds=float(raw.get("backoff_seconds", DEFAULT_BACKOFF_SECONDS)),
            max_backoff_seconds=float(raw.get("max_backoff_seconds", DEFAULT_MAX_BACKOFF_SECONDS)),
        )
        if policy.max_attempts < 1 or policy.backoff_seconds < 0 or policy.max_backoff_seconds < 0:
            raise ValueError("max_attempts must be at least 1 and waits may not be negative")
        return policy

    def delay_after(self, failed_attempts: int) -> float:
        """Seconds to wait before the next attempt, after `failed_attempts` (≥ 1) have failed."""
        n = max(1, failed_attempts)
        if self.backoff == "fixed":
            delay = self.backoff_seconds
        elif self.backoff == "linear":
            delay = self.backoff_seconds * n
        else:
            delay = self.backoff_seconds * 2 ** min(n - 1, 32)
        return min(delay, self.max_backoff_seconds)
