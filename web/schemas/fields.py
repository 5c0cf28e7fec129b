"""Field types shared by the API's schemas."""

from __future__ import annotations

import datetime as dt
from typing import Any

from marshmallow import fields


class UTCDateTime(fields.AwareDateTime):
    """An ISO 8601 datetime with an offset, loaded as an aware UTC datetime.

    Every datetime a body may carry uses this field, so that an instant is converted once, here: a value
    that has no UTC equivalent (`0001-01-01T00:00:00+01:00` is in year 0) is refused naming the field,
    instead of overflowing later in a worker.
    """

    default_error_messages = {"out_of_range": "Not a representable instant: it falls outside years 1-9999 in UTC."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        aware = super()._deserialize(value, attr, data, **kwargs)
        try:
            return aware.astimezone(dt.UTC)
        except OverflowError as exc:
            raise self.make_error("out_of_range") from exc
