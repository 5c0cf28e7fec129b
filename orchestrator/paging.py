"""Keyset paging of lists shown newest first by (created_at, id), with opaque cursors."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from orchestrator.errors import ValidationFailed
from orchestrator.ids import is_valid_id

M = TypeVar("M")


def encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("The cursor is not valid.", cursor=cursor) from exc
    if len(parts) != n:
        raise ValidationFailed("The cursor is not valid.", cursor=cursor)
    return parts


def time_cursor(created_at: datetime, row_id: str) -> str:
    """The opaque cursor of a list ordered newest first by (created_at, id)."""
    return encode_cursor(created_at.isoformat(), row_id)


def decode_time_cursor(cursor: str) -> tuple[datetime, str]:
    ts, row_id = decode_cursor(cursor, 2)
    try:
        at = datetime.fromisoformat(ts).astimezone(UTC)
        # our cursors always carry the offset and an id; anything else was not made here
        valid = datetime.fromisoformat(ts).tzinfo is not None and is_valid_id(row_id)
    except (ValueError, OverflowError) as exc:  # year 1 at +01:00 overflows on the way to UTC
        raise ValidationFailed("The cursor is not valid.", cursor=cursor) from exc
    if not valid:
        raise ValidationFailed("The cursor is not valid.", cursor=cursor)
    return at, row_id


def newest_first_page(session: Session, query: Select[Any], model: type[M], limit: int,
                      cursor: str | None) -> tuple[list[M], str | None]:
    """One page of `query` (rows of `model`, which has `created_at` and `id`) and the next page's cursor."""
    created_at, row_id = model.created_at, model.id  # type: ignore[attr-defined]
    query = query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
    if cursor:
        at, last_id = decode_time_cursor(cursor)
        query = query.where((created_at < at) | ((created_at == at) & (row_id < last_id)))
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, time_cursor(rows[-1].created_at, rows[-1].id) if more else None  # type: ignore[attr-defined]
