"""Identifiers the system mints."""

from __future__ import annotations

import secrets
import time


def event_id() -> str:
    """"evt_" + 12 hex digits of milliseconds + 10 random: sorting ids sorts by acceptance time."""
    return f"evt_{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


def prefixed(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"
