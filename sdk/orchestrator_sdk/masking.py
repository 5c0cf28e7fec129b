"""Personal data and secrets masked: the one set of rules for log lines and for what people are shown.

- an email address keeps the first character of its local part and its domain: `c***@bittersweet-farm.com`;
- a phone number keeps its last four digits: `***-***-9416`;
- a secret becomes `***`: our API tokens (`usr_…`, `agt_…`), JWTs, `Bearer …` values, the password in a
  URL (`redis://:***@host`), and the value of any field named like a secret (`password=…`,
  `"api_key": "…"`, `Authorization: …`, `?token=…`).

Every result is a fixed point (masking twice changes nothing). The rules keep the ids and times that
logs are read by: ids are words (`evt_…`, `agent_…`, uuids) and a number inside a word is never a
phone; dates (`2026-02-11`, `11.02.2026`), times, IPv4 addresses and bare digit runs (a unix time, a
count, a Redis stream id) are not phones either. A phone number is written with a `+`, or in groups:
`(860) 455-9416`, `860-455-9416`, `860.455.9416`, `+1 860 455 9416`, `+44 20 7946 0958`,
`020 7946 0958`; a bare `8604559416` is not masked (it is as likely a time or an id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Names of fields whose value is a secret: whole words, or their last part (`client_secret`, `x-api-key`).
_SECRET_WORD = r"(?:password|passwd|passphrase|secret|token|api[_-]?key|apikey|authorization|cookie|credentials?)"
_SECRET_NAME = rf"(?:[A-Za-z0-9]+[_-])*{_SECRET_WORD}(?:[_-]key)?"  # SECRET_KEY, LLM_API_KEY, x-api-key
SECRET_NAME = re.compile(_SECRET_NAME, re.IGNORECASE)

_SECRET_FIELD = re.compile(
    rf"""(?<![\w-])(?P<name>["']?{_SECRET_NAME}["']?)(?![\w-])
         (?P<sep>\s*[:=]\s*)
         (?P<scheme>(?:Bearer|Basic|Token|Digest)\s+)?
         (?:(?P<q>["'])(?:\\.|(?!(?P=q)).)*(?P=q) | [^\s"'&,;)\]}}]+)""",
    re.IGNORECASE | re.VERBOSE,
)
_QUERY_KEY = re.compile(r"(?<=[?&])(?P<name>key|sig|signature)=[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{6,}")
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_API_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])(?:usr|agt)_[A-Za-z0-9_-]{32,}")
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]*+://[^\s/:@]*+):[^\s/@]++@")

_EMAIL = re.compile(
    r"""(?<![\w.%+-])(?P<first>[\w.%+-])[\w.%+-]*+@
    (?P<domain>(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|xn--[A-Za-z0-9-]{2,59}))(?![\w-])""",
    re.VERBOSE,
)

_SEP = r"[ .-]"
_PHONE = re.compile(
    rf"""(?<![\w+*.-])(?<!\d:)                                     # not inside an id, a number or a time
    (?:
        \+\d{{1,3}}{_SEP}?\d{{6,14}}                                                      # +18604559416
      | \+\d{{1,3}}(?:{_SEP}?\(\d{{1,4}}\))?(?:{_SEP}\d{{1,4}}){{2,5}}                     # +1 860 455 9416
      | (?:\(\d{{3}}\)\ ?|\d{{3}}{_SEP})\d{{3}}{_SEP}\d{{4}}                             # (860) 455-9416
      | 0\d{{1,4}}(?:{_SEP}\d{{2,8}}){{1,4}}                                             # 020 7946 0958
    )
    (?![\w/*@-]|[.:,]\d)""",
    re.VERBOSE,
)
_DATE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{4}")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DECIMAL = re.compile(r"\d+\.\d+")  # 05.609204: seconds, not 0 + 5 609 204
PHONE_MIN_DIGITS = 7  # fewer is a code or a count


def _secret_field(m: re.Match[str]) -> str:
    quote = m.group("q") or ""
    return f"{m.group('name')}{m.group('sep')}{m.group('scheme') or ''}{quote}{MASK}{quote}"


def _phone(m: re.Match[str]) -> str:
    text = m.group(0)
    digits = re.sub(r"\D", "", text)
    if len(digits) < PHONE_MIN_DIGITS or any(p.fullmatch(text) for p in (_DATE, _IPV4, _DECIMAL)):
        return text
    return f"***-***-{digits[-4:]}"


# (markers, pattern, replacement): a rule runs only on text holding one of its markers, which most
# text lacks; this keeps masking cheap on the hot paths (every log record, every stream message).
_SECRET_RULES: tuple[tuple[tuple[str, ...], re.Pattern[str], Any], ...] = (
    ((":", "="), _SECRET_FIELD, _secret_field),
    (("=",), _QUERY_KEY, rf"\g<name>={MASK}"),
    (("Bearer",), _BEARER, f"Bearer {MASK}"),
    (("eyJ",), _JWT, MASK),
    (("usr_", "agt_"), _API_TOKEN, MASK),
    (("://",), _URL_PASSWORD, rf"\g<head>:{MASK}@"),
)
_DIGIT = re.compile(r"\d")


def mask_secrets(text: str) -> str:
    """`text` with tokens, keys and passwords replaced by `***` (emails and phones left as they are)."""
    for markers, pattern, replacement in _SECRET_RULES:
        if any(marker in text for marker in markers):
            text = pattern.sub(replacement, text)
    return text


def mask_text(text: str) -> str:
    """`text` with every secret, email address and phone number masked."""
    text = mask_secrets(text)
    if "@" in text:
        text = _EMAIL.sub(rf"\g<first>{MASK}@\g<domain>", text)
    if _DIGIT.search(text):
        text = _PHONE.sub(_phone, text)
    return text


def mask_value(value: Any) -> Any:
    """A JSON value with every string in it masked, at any depth; the value of a key named like a secret
    (`password`, `api_key`, ...) becomes `***` whatever it is. Keys are masked as strings too."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {mask_text(k) if isinstance(k, str) else k:
                MASK if isinstance(k, str) and SECRET_NAME.fullmatch(k) and v is not None else mask_value(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_value(v) for v in value]
    return value


def mask_fields(data: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of `data` with the values of the fields `names` masked (`mask_value`)."""
    out = dict(data)
    for name in names:
        if out.get(name) is not None:
            out[name] = mask_value(out[name])
    return out
