"""Signed agent requests, the server's half: checking a signature, the nonce's key, the 401 errors.

The rule itself (canonical string, Content-Digest, HMAC-SHA256, the headers, the clock window) lives
once, in the agent SDK (`orchestrator_sdk.signing`), which agents sign with and this module checks with.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator_sdk.signing import (
    DIGEST_HEADER,
    HEADERS,
    MAX_SKEW_SECONDS,
    NONCE_HEADER,
    NONCE_TTL_SECONDS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    canonical_string,
    content_digest,
    request_target,
    sign,
    signature,
)

from orchestrator.errors import Unauthorized

__all__ = ["DIGEST_HEADER", "HEADERS", "MAX_SKEW_SECONDS", "NONCE_HEADER", "NONCE_TTL_SECONDS", "SIGNATURE_HEADER",
           "SIGNING_MODES", "TIMESTAMP_HEADER", "NonceReused", "SignatureExpired", "SignatureInvalid",
           "SignatureRequired", "SignedRequest", "canonical_string", "content_digest", "new_signing_secret",
           "nonce_key", "request_target", "sign", "signature"]

SIGNING_MODES = ("required", "optional")

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class SignatureRequired(Unauthorized):
    """No signature, from an agent whose `signing` is `required`."""

    code = "signature_required"


class SignatureInvalid(Unauthorized):
    """A header missing or malformed, a digest that is not the body's, or a signature that does not match."""

    code = "signature_invalid"


class SignatureExpired(Unauthorized):
    """A timestamp further than MAX_SKEW_SECONDS from the server's clock."""

    code = "signature_expired"


class NonceReused(Unauthorized):
    """A nonce this agent sent within NONCE_TTL_SECONDS: a replay."""

    code = "nonce_reused"


def new_signing_secret() -> str:
    """A fresh secret; its UTF-8 bytes, prefix included, are the HMAC key."""
    return f"sig_{secrets.token_urlsafe(32)}"


@dataclass(frozen=True)
class SignedRequest:
    """A request's signature headers, checked for form; `verify` checks them against a secret."""

    method: str
    target: str
    timestamp: str
    nonce: str
    digest: str
    signature: str

    @classmethod
    def from_headers(cls, method: str, target: str, headers: Mapping[str, str]) -> SignedRequest | None:
        """None when the request carries none of the headers; SignatureInvalid when some are missing or malformed."""
        values = {name: headers.get(name) for name in HEADERS}
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise SignatureInvalid("A signed request carries all four signature headers.", missing=missing)
        timestamp, nonce = values[TIMESTAMP_HEADER] or "", values[NONCE_HEADER] or ""
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureInvalid(f"{TIMESTAMP_HEADER} is the time in Unix seconds.")
        if not _NONCE.fullmatch(nonce):
            raise SignatureInvalid(f"{NONCE_HEADER} is 16 to 128 characters of A-Z, a-z, 0-9, _ and -.")
        return cls(method, target, timestamp, nonce, values[DIGEST_HEADER] or "", values[SIGNATURE_HEADER] or "")

    def verify(self, secret: str | None, body: bytes, now: float | None = None) -> None:
        """Raise unless the signature is `secret`'s over this request and `body`, and timely.

        The signature is checked before the timestamp, so that only the secret's holder learns
        that a request was refused for its clock."""
        expected = signature(secret or "", self.method, self.target, self.timestamp, self.nonce, self.digest)
        if secret is None or not hmac.compare_digest(expected, self.signature):
            raise SignatureInvalid("The request's signature does not match.")
        if not hmac.compare_digest(content_digest(body), self.digest):
            raise SignatureInvalid(f"{DIGEST_HEADER} is not the digest of the request's body.")
        skew = int(self.timestamp) - (time.time() if now is None else now)
        if abs(skew) > MAX_SKEW_SECONDS:
            raise SignatureExpired(f"{TIMESTAMP_HEADER} is more than {MAX_SKEW_SECONDS} seconds from the "
                                   "server's clock; check the agent's clock.", max_skew_seconds=MAX_SKEW_SECONDS)


def nonce_key(prefix: str, agent_id: str, nonce: str) -> str:
    """The Redis key that remembers `nonce` of `agent_id` (SET NX EX NONCE_TTL_SECONDS)."""
    return f"{prefix}sig:nonce:{agent_id}:{nonce}"
