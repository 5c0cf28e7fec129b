"""Short-lived signed tokens (JWT, HS256) that open the live stream: a browser cannot send an
Authorization header on a WebSocket, so it asks for one of these and puts it in the URL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from orchestrator.credentials import Principal
from orchestrator.errors import Unauthorized

AUDIENCE = "orchestrator-stream"
LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True)
class StreamToken:
    token: str
    expires_at: datetime


def issue_stream_token(secret: str, principal: Principal, now: datetime) -> StreamToken:
    expires = now + LIFETIME
    token = jwt.encode({"sub": principal.id, "adm": principal.is_admin, "aud": AUDIENCE, "iat": now,
                        "exp": expires}, secret, algorithm="HS256")
    return StreamToken(token, expires)


def verify_stream_token(secret: str, token: str | None) -> Principal:
    """The user a token was issued to; Unauthorized when it is missing, forged or expired."""
    if not token:
        raise Unauthorized("A stream token is required (?token=...).")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], audience=AUDIENCE)
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("The stream token has expired.") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("The stream token is not valid.") from exc
    return Principal("user", claims["sub"], bool(claims.get("adm")))
