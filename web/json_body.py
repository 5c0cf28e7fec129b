"""The API's one JSON gate: request bodies parsed by orjson, then checked by `check_storable`.

Bound as `app.json` in the factory, so every `request.get_json()` goes through it. A body that does
not parse raises a ValueError, which Flask answers 400 (`bad_request`); one that parses but cannot be
stored raises `UnstorableValue`, which is not a ValueError and so reaches our error handler as a 422.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

from orchestrator.payload_limits import check_storable

# orjson reads an integer literal past 64 bits as a float, silently. Every literal outside int64 has
# at least 19 digits, so only bodies with such a run (rare) are parsed again exactly and re-checked.
# The run is found by mapping digits to "0" and the rest to "x": 0.7 µs per KB, where a regex takes 7.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_LONG_RUN = b"0" * 19
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")


class InvalidJSON(ValueError):
    """A body that is not JSON we can read; a ValueError, so that Flask answers 400."""


def parse_body(data: str | bytes) -> Any:
    """The body's value, checked; ValueError when it is not JSON, UnstorableValue when it cannot be stored.

    orjson refuses NaN/Infinity, numbers that overflow a double, lone surrogates, invalid UTF-8 and
    nesting past 1,024 levels without recursing, so no body can raise RecursionError here.
    """
    value = orjson.loads(data)
    check_storable(value)
    if isinstance(data, bytes | bytearray):
        has_long_number = _LONG_RUN in data.translate(_DIGITS_AS_ZEROS)
    else:
        has_long_number = _LONG_DIGITS_TEXT.search(data) is not None
    if not has_long_number:
        return value
    try:
        # The check above bounded the depth (32), so the standard library's recursive parser is safe.
        exact = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidJSON(str(exc)) from exc
    check_storable(exact)
    return exact


class BodyJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with `loads` replaced by `parse_body`; `dumps` is Flask's own."""

    sort_keys = False  # answers keep the guide's field order

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            # Flask's session cookie serializer passes an object_hook; it reads our own signed data,
            # not a request body, so it keeps the standard parser.
            return super().loads(s, **kwargs)
        return parse_body(s)
