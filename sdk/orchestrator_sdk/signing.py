"""Signed agent requests: the one rule (canonical string, digest, HMAC) the agent SDK signs with and the server checks.

Besides its API key, an agent signs every request with its signing secret (issued at registration,
stored encrypted, rotated by its operator). The scheme, modelled on GitHub's and Stripe's webhook
signatures, with RFC 9530's digest header:

    Content-Digest:        sha-256=:<base64 of SHA-256(body)>:      (the body's exact bytes; empty for a GET)
    X-Signature-Timestamp: <Unix seconds>
    X-Signature-Nonce:     <16 to 128 of A-Z a-z 0-9 _ ->           (fresh for every request, retries too)
    X-Signature:           sha256=<hex HMAC-SHA256(secret, canonical string)>

The canonical string is five lines joined by "\\n", without a final newline:

    METHOD            upper case: GET, POST...
    TARGET            the path, percent-encoded as RFC 3986 has it (as HTTP clients send it), and
                      "?" + the query string exactly as sent when there is one
    TIMESTAMP         the X-Signature-Timestamp header's value
    NONCE             the X-Signature-Nonce header's value
    CONTENT-DIGEST    the Content-Digest header's value

The server refuses (401) a signature that does not match, a digest that is not the body's, a
timestamp more than MAX_SKEW_SECONDS away from its clock, and a nonce it has seen from the same agent
within NONCE_TTL_SECONDS (long enough that a replay's timestamp is out of the window by then).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import quote

TIMESTAMP_HEADER = "X-Signature-Timestamp"
NONCE_HEADER = "X-Signature-Nonce"
DIGEST_HEADER = "Content-Digest"
SIGNATURE_HEADER = "X-Signature"
HEADERS = (TIMESTAMP_HEADER, NONCE_HEADER, DIGEST_HEADER, SIGNATURE_HEADER)

MAX_SKEW_SECONDS = 300
# A nonce must be remembered until its timestamp has left the window on every clock: a replay at t
# passes the timestamp check only while t <= timestamp + MAX_SKEW, and the first use came no earlier
# than timestamp - MAX_SKEW. A minute on top covers web processes whose clocks disagree.
NONCE_TTL_SECONDS = 2 * MAX_SKEW_SECONDS + 60

_PATH_SAFE = "/!$&'()*+,;=:@~"  # RFC 3986 pchar and "/", besides what `quote` always keeps

def content_digest(body: bytes) -> str:
    """RFC 9530's Content-Digest value for `body`."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def request_target(path: str, query: str = "") -> str:
    """The TARGET line from a server's view of a request: its decoded path percent-encoded as RFC 3986
    has it (as HTTP clients send it; our ids never need encoding), and its query string as sent."""
    return quote(path, safe=_PATH_SAFE) + (f"?{query}" if query else "")


def canonical_string(method: str, target: str, timestamp: str, nonce: str, digest: str) -> bytes:
    return "\n".join((method.upper(), target, timestamp, nonce, digest)).encode("utf-8")


def signature(secret: str, method: str, target: str, timestamp: str, nonce: str, digest: str) -> str:
    """The X-Signature header's value."""
    mac = hmac.new(secret.encode("utf-8"), canonical_string(method, target, timestamp, nonce, digest), hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def sign(secret: str, method: str, target: str, body: bytes, *, now: float | None = None,
         nonce: str | None = None) -> dict[str, str]:
    """The four headers that sign a request of `method` to `target` (path and query, as sent) with `body`."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_urlsafe(18)
    digest = content_digest(body)
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, DIGEST_HEADER: digest,
            SIGNATURE_HEADER: signature(secret, method, target, timestamp, nonce, digest)}
