"""Telling an execution's owner that a person is needed: a signed webhook POST.

The body is JSON; `X-Orchestrator-Signature: sha256=<hex>` is the HMAC-SHA256 of
`<timestamp>.<body>` under NOTIFY_WEBHOOK_SECRET, and `X-Orchestrator-Timestamp` the Unix time, so
a receiver can check both origin and freshness (the scheme Stripe and GitHub use).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson
import requests


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age: float = 300) -> bool:
    if abs(time.time() - float(timestamp)) > max_age:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def send_webhook(url: str, secret: str, payload: dict[str, Any], timeout: float = 10.0) -> int:
    """POST `payload`; return the status code. Raises requests.RequestException on network failure."""
    body = orjson.dumps({"type": "execution_blocked", **payload})
    ts = str(int(time.time()))
    resp = requests.post(
        url, data=body, timeout=timeout,
        headers={"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts,
                 "X-Orchestrator-Signature": sign(secret, ts, body)},
    )
    return resp.status_code
