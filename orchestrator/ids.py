"""Identifiers: the alphabet every id a client chooses must keep, and the ids the system mints.

Execution rows are keyed `{execution_id}:{plan_task_id}` and `{execution_id}:{plan_subtask_id}`, so `:` is
kept out of every id: with it, execution `X:x` with task `y` and execution `X` with task `x:y` (two
operators' plans) would share the key `X:x:y`. The web schemas' `ID` and the URL converter use this
alphabet too; docs/plan-format.md documents it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from typing import Any

ID_MAX_LENGTH = 128
# A letter or digit first: ids appear in URLs, file names and log lines, where a leading "." or "-" misleads.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ID_RULE = "letters, digits and _ . - (a letter or digit first, at most 128)"


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def invalid_ids(values: Iterable[Any]) -> list[Any]:
    """The values that are not ids, in order, each once."""
    return list(dict.fromkeys(v for v in values if not is_valid_id(v)))


def child_id(parent: str, suffix: str) -> str:
    """`{parent}_{suffix}`, within ID_MAX_LENGTH: a parent too long for that is cut, and a digest of the
    whole parent keeps the children of two long parents with the same beginning apart."""
    plain = f"{parent}_{suffix}"
    if len(plain) <= ID_MAX_LENGTH:
        return plain
    digest = hashlib.sha256(parent.encode()).hexdigest()[:10]
    return f"{parent[:ID_MAX_LENGTH - len(suffix) - len(digest) - 2]}_{digest}_{suffix}"


def event_id() -> str:
    """"evt_" + 12 hex digits of milliseconds + 10 random: sorting ids sorts by acceptance time."""
    return f"evt_{int(time.time() * 1000):012x}{secrets.token_hex(5)}"


def prefixed(prefix: str, nbytes: int = 8) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"
