"""What a JSON value from outside may hold before anything stores, queues or re-serialises it.

Every body the API parses, every plan file imported and every language model reply goes through
`check_storable` once, at the edge. The limits are those of the places the value travels to:

| limit | value | why |
|---|---|---|
| `MAX_DEPTH` | 32 | levels of objects/arrays from the outermost; orjson writes at most 254 |
| `MAX_VALUES` | 1,000,000 | values in one document: bounds the walk and YAML alias bombs |
| `MAX_STRING_CHARS` | 1,048,576 | characters in one string; larger content is a file upload |
| `MAX_KEY_CHARS` | 256 | characters in one object key |
| integers | -2**63 .. 2**63-1 | PostgreSQL `bigint`, orjson and most clients hold no more |
| floats | finite | NaN and ±Infinity are not JSON; PostgreSQL JSONB and orjson refuse them |
| text | no U+0000, no lone surrogate | PostgreSQL text/JSONB refuse NUL; surrogates are not UTF-8 |

Only JSON's own types pass: dict with str keys, list, str, int, float, bool, None. YAML's other
types (dates, bytes, sets) are refused rather than converted, so that what is stored is what was
sent; `orchestrator.plan_files` reads unquoted YAML dates as the text written.
"""

from __future__ import annotations

import math
import re
from typing import Any

from orchestrator.errors import UnstorableValue

MAX_DEPTH = 32
MAX_VALUES = 1_000_000
MAX_STRING_CHARS = 1024 * 1024
MAX_KEY_CHARS = 256
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

# NUL is ASCII, so `"\0" in s` covers ASCII text; the regex only runs on the rarer non-ASCII text.
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_SHOWN_KEY_CHARS = 40


def _text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"is longer than {limit:,} characters"
    if "\x00" in text:
        return "contains the NUL character (U+0000)"
    if not text.isascii() and _BAD_CHAR.search(text):
        return "contains a lone surrogate (U+D800-U+DFFF), which is not valid Unicode text"
    return None


def _scalar_problem(value: Any) -> str | None:
    """Why a value that is not an object or array cannot be stored, or None when it can."""
    kind = type(value)
    if kind is str:
        return _text_problem(value, MAX_STRING_CHARS)
    if kind is bool or value is None:
        return None
    if kind is int:
        return None if INT_MIN <= value <= INT_MAX else "is outside the 64-bit integer range"
    if kind is float:
        return None if math.isfinite(value) else "must be a finite number (not NaN or Infinity)"
    for base in (str, int, float):  # subclasses (an IntEnum, say) are judged by their plain value
        if isinstance(value, base):
            return _scalar_problem(base(value))
    return f"is of type {kind.__name__}, which JSON does not have (quote it to send it as text)"


def _key_problem(key: Any) -> str | None:
    if type(key) is not str:
        return f"is a key of type {type(key).__name__}; object keys must be text"
    why = _text_problem(key, MAX_KEY_CHARS)
    return None if why is None else f"(an object key) {why}"


# A path node is (parent node, key or index), or None at the top; turned into text only on refusal.
_Node = tuple[Any, str | int] | None
_Entry = tuple[Any, _Node, int]


def _children_problem(container: Any, node: _Node, depth: int, stack: list[_Entry]) -> tuple[_Node, str] | None:
    """Check the scalars of one object or array and push its containers; the first problem, if any.

    The common cases are tested inline (this runs for every event): a call per value would double the cost.
    """
    is_dict = isinstance(container, dict)
    for key, item in container.items() if is_dict else enumerate(container):
        if is_dict and (type(key) is not str or len(key) > MAX_KEY_CHARS or "\x00" in key or not key.isascii()):
            why = _key_problem(key)
            if why is not None:
                return (node, key if type(key) is str else repr(key)), why
        kind = type(item)
        if kind is str:
            if len(item) <= MAX_STRING_CHARS and "\x00" not in item and (item.isascii() or not _BAD_CHAR.search(item)):
                continue
            why = _text_problem(item, MAX_STRING_CHARS)
        elif kind is dict or kind is list:
            stack.append((item, (node, key), depth + 1))
            continue
        elif kind is int:
            if INT_MIN <= item <= INT_MAX:
                continue
            why = "is outside the 64-bit integer range"
        elif kind is bool or item is None:
            continue
        elif isinstance(item, dict | list | tuple):
            stack.append((item, (node, key), depth + 1))
            continue
        else:
            why = _scalar_problem(item)
        if why is not None:
            return (node, key), why
    return None


def _first_problem(value: Any) -> tuple[_Node, str] | None:
    if not isinstance(value, dict | list | tuple):
        why = _scalar_problem(value)
        return None if why is None else (None, why)
    # An explicit stack, not recursion: a hostile value may be nested far past Python's recursion limit
    # (a YAML alias can even make it cyclic, which the depth limit ends).
    stack: list[_Entry] = [(value, None, 1)]
    seen = 0
    while stack:
        container, node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node, f"nests deeper than {MAX_DEPTH} levels of objects and arrays"
        seen += len(container)
        if seen > MAX_VALUES:
            return None, f"holds more than {MAX_VALUES:,} values in all"
        problem = _children_problem(container, node, depth, stack)
        if problem is not None:
            return problem
    return None


def _shown(key: str) -> str:
    """A key as a path shows it: control characters and surrogates escaped, long keys cut."""
    cut = key[:_SHOWN_KEY_CHARS]
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in cut)
    return text + "…" if len(key) > len(cut) else text


def _path_text(node: _Node, where: str = "") -> str:
    """`output_data.a.b[3]` for a path node; `where` prefixes it."""
    parts: list[str | int] = []
    while node is not None:
        node, key = node
        parts.append(key)
    text = where
    for key in reversed(parts):
        text += f"[{key}]" if isinstance(key, int) else (f".{_shown(key)}" if text else _shown(key))
    return text or "(top level)"


def check_storable(value: Any, where: str = "", *, origin: str | None = None) -> None:
    """Raise UnstorableValue (a 422) naming the first field found that breaks a limit above.

    `where` is the path of `value` in a larger document; `origin` names the file it came from. The walk
    is iterative, stops at the first problem and costs a few microseconds on a typical 1 KB event.
    """
    problem = _first_problem(value)
    if problem is None:
        return
    node, why = problem
    field = _path_text(node, where)
    details = {"field": field, "problem": why} | ({"file": origin} if origin else {})
    raise UnstorableValue(f"{origin + ': ' if origin else ''}{field} {why}.", **details)
