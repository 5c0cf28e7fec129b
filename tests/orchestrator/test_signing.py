"""The signing rule itself: the canonical string, a signature any HMAC tool reproduces, verification."""

from __future__ import annotations

import pytest

from orchestrator.signing import (
    MAX_SKEW_SECONDS,
    NONCE_TTL_SECONDS,
    SignatureExpired,
    SignatureInvalid,
    SignedRequest,
    canonical_string,
    content_digest,
    request_target,
    sign,
    signature,
)

SECRET = "sig_test-secret"
BODY = b'{"agent_id": "agent_larry_001", "event_type": "heartbeat"}'
TARGET = "/api/executions/exec_1/events"
TS, NONCE = "1764150000", "0123456789abcdef0123"
# Computed with the README's openssl pipeline, not with this code:
DIGEST = "sha-256=:ofOaImy4myXJfFV28HywW0oUCTUJ4Hp6UZLZgFOx5es=:"
SIGNATURE = "sha256=95b0fa8f2f02f5e33da46256bc06c942b68b68bdd6ca32e17e87b360cc036baf"


def test_canonical_string_is_five_lines_without_a_final_newline() -> None:
    assert canonical_string("post", "/p?a=1&b=2", TS, NONCE, DIGEST) == \
        f"POST\n/p?a=1&b=2\n{TS}\n{NONCE}\n{DIGEST}".encode()


def test_digest_and_signature_match_openssl() -> None:
    assert content_digest(BODY) == DIGEST
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    assert signature(SECRET, "POST", TARGET, TS, NONCE, DIGEST) == SIGNATURE
    assert sign(SECRET, "POST", TARGET, BODY, now=int(TS), nonce=NONCE) == {
        "X-Signature-Timestamp": TS, "X-Signature-Nonce": NONCE, "Content-Digest": DIGEST, "X-Signature": SIGNATURE}


def _request(headers: dict[str, str], method: str = "POST", target: str = TARGET) -> SignedRequest | None:
    return SignedRequest.from_headers(method, target, headers)


def test_verify_accepts_the_signed_request_within_the_window() -> None:
    signed = _request(sign(SECRET, "POST", TARGET, BODY, now=int(TS), nonce=NONCE))
    for now in (int(TS) - MAX_SKEW_SECONDS, int(TS), int(TS) + MAX_SKEW_SECONDS):
        signed.verify(SECRET, BODY, now=now)
    with pytest.raises(SignatureExpired):
        signed.verify(SECRET, BODY, now=int(TS) + MAX_SKEW_SECONDS + 1)
    assert NONCE_TTL_SECONDS > 2 * MAX_SKEW_SECONDS  # a replay's timestamp leaves the window before its nonce


@pytest.mark.parametrize("change", ["secret", "body", "method", "target", "no_secret"])
def test_verify_refuses_any_change(change: str) -> None:
    headers = sign(SECRET, "POST", TARGET, BODY, now=int(TS), nonce=NONCE)
    secret, body, method, target = SECRET, BODY, "POST", TARGET
    if change == "secret":
        secret = "sig_other"
    elif change == "body":
        body = BODY + b" "
    elif change == "method":
        method = "PUT"
    elif change == "target":
        target = TARGET + "?x=1"
    elif change == "no_secret":
        secret = None
    with pytest.raises(SignatureInvalid):
        _request(headers, method, target).verify(secret, body, now=int(TS))


def test_headers_absent_partial_or_malformed() -> None:
    assert _request({}) is None
    headers = sign(SECRET, "POST", TARGET, BODY, now=int(TS), nonce=NONCE)
    with pytest.raises(SignatureInvalid) as partial:
        _request({k: v for k, v in headers.items() if k != "Content-Digest"})
    assert partial.value.details == {"missing": ["Content-Digest"]}
    for name, bad in (("X-Signature-Timestamp", "2026-11-26T10:00:00Z"), ("X-Signature-Nonce", "short"),
                      ("X-Signature-Nonce", "has spaces in it, sixteen+")):
        with pytest.raises(SignatureInvalid):
            _request({**headers, name: bad})


@pytest.mark.parametrize("url", [
    "http://h/api/agents/agent_larry_001/work?supported_actions=send_email,make_phone_call",
    "http://h/api/executions/exec_1/events",
    "http://h/api/plans/a%20b?q=caf%C3%A9&x=1+2",
    "http://h/api/agents/a@b:c~d/work",
])
def test_request_target_is_what_an_http_client_sends(url: str) -> None:
    """The server rebuilds TARGET from the decoded path and the raw query: the same as requests' path_url."""
    from urllib.parse import unquote, urlsplit

    import requests

    sent = requests.Request("GET", url).prepare().path_url
    parts = urlsplit(sent)
    assert request_target(unquote(parts.path), parts.query) == sent


def test_agent_client_signs_each_attempt_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry is signed again with a new nonce (the first may have arrived), over the bytes it sends."""
    import requests
    from orchestrator_sdk import client as client_mod
    from orchestrator_sdk.client import AgentClient

    from tests.sdk.test_client import BASE, EVENTS_PATH, FakeServer

    monkeypatch.setattr(client_mod, "BACKOFF_SECONDS", 0.001)
    server = FakeServer({EVENTS_PATH: [(503, {"error": {"code": "unavailable", "message": "m"}}),
                                       (202, {"event_id": "evt_1"})]})
    session = requests.Session()
    session.mount(BASE, server)
    AgentClient(BASE, "agent_larry", "key-123", signing_secret=SECRET, session=session).report(
        "exec_1", "heartbeat", wait=False)
    first, second = server.calls
    for call in (first, second):
        assert call.headers["Authorization"] == "Bearer key-123"
        _request(call.headers, "POST", call.path_url).verify(SECRET, call.body)
    assert first.body == second.body and first.headers["X-Signature-Nonce"] != second.headers["X-Signature-Nonce"]
