"""The masking rules (`orchestrator/masking.py`): what they hide, what they keep, and that they are stable."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orchestrator.credentials import Principal, new_id, new_token
from orchestrator.ids import child_id, event_id, prefixed
from orchestrator.live_tokens import issue_stream_token
from orchestrator.masking import mask_fields, mask_text, mask_value
from orchestrator.publish import iso

EMAIL = "carol@bittersweet-farm.com"
PHONE = "860-455-9416"


@pytest.mark.parametrize(("text", "masked"), [
    (f"Carol's email address ({EMAIL}) bounced.", "Carol's email address (c***@bittersweet-farm.com) bounced."),
    (f"Call Carol directly at {PHONE}", "Call Carol directly at ***-***-9416"),
    ("(860) 455-9416 / 860.455.9416 / 860 455 9416", "***-***-9416 / ***-***-9416 / ***-***-9416"),
    ("+1 860 455 9416, +18604559416, tel:+1-860-455-9416", "***-***-9416, ***-***-9416, tel:***-***-9416"),
    ("+44 20 7946 0958 or 020 7946 0958", "***-***-0958 or ***-***-0958"),
    ("+44 20 7946 0958 860-455-9416", "***-***-0958 ***-***-9416"),
    ("mailto:info@bittersweetfarm.com.", "mailto:i***@bittersweetfarm.com."),
    ("josé.núñez@correo.es, .carol@x.com", "j***@correo.es, .***@x.com"),
    ("Authorization: Bearer usr_" + "A" * 43, "Authorization: Bearer ***"),
    ("sent with Bearer abcdef123456", "sent with Bearer ***"),
    ('{"password": "hunter 2", "api_key": "k-1", \'SECRET_KEY\': \'s\'}',
     '{"password": "***", "api_key": "***", \'SECRET_KEY\': \'***\'}'),
    ("LLM_API_KEY=sk-123 x-api-key: abc NOTIFY_WEBHOOK_SECRET=whsec",
     "LLM_API_KEY=*** x-api-key: *** NOTIFY_WEBHOOK_SECRET=***"),
    ('"POST /login?username=admin&password=hunter2 HTTP/1.1" 401',
     '"POST /login?username=admin&password=*** HTTP/1.1" 401'),
    ("GET /api/stream?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl&since=evt_0190",
     "GET /api/stream?token=***&since=evt_0190"),
    ("GET /maps?key=AIzaSyExample&x=1", "GET /maps?key=***&x=1"),
    ("redis://:s3cret@localhost:6379/0 and postgresql://app:pw@db.example.com/x",
     "redis://:***@localhost:6379/0 and postgresql://app:***@db.example.com/x"),
])
def test_examples(text: str, masked: str) -> None:
    assert mask_text(text) == masked
    assert mask_text(masked) == masked


def test_the_projects_own_tokens_are_masked() -> None:
    user, agent = new_token("usr"), new_token("agt")
    stream = issue_stream_token("k" * 32, Principal("user", "user_1"), datetime.now(UTC)).token
    text = f"user {user}, agent {agent}, stream {stream}."
    assert mask_text(text) == "user ***, agent ***, stream ***."


def _real_ids() -> list[str]:
    now = datetime.now(UTC)
    return [
        *(event_id() for _ in range(300)),  # 22 hex digits after "evt_": many hold long digit runs
        *(prefixed(p) for p in ("exec", "plan", "agent", "user") for _ in range(50)),
        *(new_id("cred") for _ in range(50)),
        *(str(uuid.uuid4()) for _ in range(200)),  # Celery task ids
        "agent_larry_001", "agent_send_email_9f2c1a", "exec_carol_prospect_20260211_001",
        "plan_carol_breeder_sys_20260211", "task_1_1_a", child_id("exec-2026-02-11-0001", "task_1_1_a"),
        "exec-2026-02-11-001", "0190123456789-0", "1714567890123-0", "1714567890", "8604559416",
        iso(now), iso(now + timedelta(microseconds=123456)), now.isoformat(), now.strftime("%Y-%m-%d %H:%M:%S,%f"),
        "[11/Feb/2026:16:09:45 +0000]", "2027-01-25T04:00:05.609204+00:00", "04:00:05.609204", "05.609204 s",
        "2026-02-11", "11.02.2026", "01-05-2024", "16:09:45", "192.168.100.200",
        "10.0.0.1:6379", "v1.2.3", "0.012345s", "2.5 MiB", "orch:shard:3:lease", "shard 3: lease token 17 expired",
        "seq 1234567 to 1234599", "usr_short_id", "token_prefix", "idempotency_key=abc-123",
    ]


def test_ids_times_and_numbers_are_left_alone() -> None:
    for value in _real_ids():
        assert mask_text(value) == value, value
        line = f"shard 3: event {value} (execution {value}) applied at {value}; 12 ms"
        assert mask_text(line) == line, value


def test_json_values_are_masked_at_any_depth() -> None:
    data = {"email_sent_to": EMAIL, "recipients": [EMAIL, {"call": PHONE}], "attempts": 2, "ok": True,
            "password": 12345, "credentials": {"user": "x"}, EMAIL: None, "note": None}
    masked_email = "c***@bittersweet-farm.com"
    assert mask_value(data) == {
        "email_sent_to": masked_email, "recipients": [masked_email, {"call": "***-***-9416"}], "attempts": 2,
        "ok": True, "password": "***", "credentials": "***", masked_email: None, "note": None}
    event = {"event_id": "evt_0190123456789", "message": f"to {EMAIL}", "suggestions": [f"Call {PHONE}"], "seq": 8}
    assert mask_fields(event, ["message", "suggestions", "output_data"]) == {
        "event_id": "evt_0190123456789", "message": f"to {masked_email}", "suggestions": ["Call ***-***-9416"],
        "seq": 8}


# --- properties -----------------------------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,15}", fullmatch=True),
    st.lists(_label, min_size=1, max_size=3),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
_d = lambda n: st.from_regex(rf"[0-9]{{{n}}}", fullmatch=True)  # noqa: E731
phones = st.one_of(
    st.builds(lambda a, b, c, fmt: fmt.format(a, b, c), _d(3), _d(3), _d(4), st.sampled_from(
        ["{}-{}-{}", "({}) {}-{}", "({}){}-{}", "{}.{}.{}", "{} {} {}", "+1 {} {} {}", "+1{}{}{}", "+1-{}-{}-{}",
         "+1 ({}) {}-{}"])),
    st.builds(lambda cc, groups: f"+{cc} " + " ".join(groups), st.integers(1, 999),
              st.lists(st.one_of(_d(2), _d(3), _d(4)), min_size=3, max_size=4)),
    st.builds(lambda a, b, c: f"0{a} {b} {c}", _d(2), _d(4), _d(4)),
)
words = st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True)
ids = st.sampled_from(_real_ids())
# Two numbers with only a space between them read as one (to a person too): a number ends at punctuation.
strong_separators = st.sampled_from([", ", "; ", ") ", "\n", ". ", "\t", "] "])
separators = st.one_of(strong_separators, st.sampled_from([" ", " (", ": ", " - ", " ["]))


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[str], list[str], list[str]]:
    """A log line or agent message: words, ids, emails and phone numbers, with their places remembered."""
    kinds = draw(st.lists(st.sampled_from(["word", "id", "email", "phone"]), min_size=1, max_size=12))
    parts, found = [], {"email": [], "phone": [], "id": []}
    for kind in kinds:
        value = draw({"word": words, "id": ids, "email": emails, "phone": phones}[kind])
        if kind != "word":
            found[kind].append(value)
        parts.append(value)
        parts.append(draw(strong_separators if kind in ("phone", "id") else separators))
    return "".join(parts), found["email"], found["phone"], found["id"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_no_email_or_phone_survives_and_ids_do(doc: tuple[str, list[str], list[str], list[str]]) -> None:
    text, emails_in, phones_in, ids_in = doc
    masked = mask_text(text)
    for email in emails_in:
        local, domain = email.split("@")
        assert email not in masked
        assert f"{local[0]}***@{domain}" in masked
    for phone in phones_in:
        assert phone not in masked
        assert f"***-***-{re.sub(r'[^0-9]', '', phone)[-4:]}" in masked
    for value in ids_in:
        assert value in masked
    # Nothing email- or phone-shaped is left: two address characters before an "@", or seven digits in a row
    # once the ids and the (kept) domains are taken out.
    rest = masked
    for value in ids_in + [email.split("@")[1] for email in emails_in]:
        rest = rest.replace(value, " ")
    assert not re.search(r"[A-Za-z0-9._%+-]{2}@", rest)
    assert not re.search(r"\d{7}", re.sub(r"[ ().+-]", "", rest))
    assert mask_text(masked) == masked


@settings(max_examples=500, deadline=None)
@given(st.text())
@example("***@x.com ***-***-9416 password=*** Bearer *** +1 ***")
@example("c***@bittersweet-farm.com 0 ***-***-9416 9416")
def test_masking_is_idempotent(text: str) -> None:
    once = mask_text(text)
    assert mask_text(once) == once


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | emails | phones,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)))
def test_json_masking_is_idempotent(value: object) -> None:
    once = mask_value(value)
    assert mask_value(once) == once
