"""Short-lived signed tokens (JWT, HS256) that open the live stream: a browser cannot send an
Authorization header on a WebSocket, so it asks for one of these and puts it in the URL.

A stream token names the grant it was issued through (`via`: the API token's credential id or the
dashboard session's id) and ends no later than that grant's expiry; the web tier checks at connect
time that the grant is still live, so a revoked token, an ended session or a deactivated user
cannot open a stream with a token issued before.
"""

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
    if principal.until is not None:
        expires = min(expires, principal.until)
    claims = {"sub": principal.id, "adm": principal.is_admin, "aud": AUDIENCE, "iat": now, "exp": expires}
    if principal.via is not None:
        claims["via"] = principal.via
    token = jwt.encode(claims, secret, algorithm="HS256")
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
    via = claims.get("via")
    return Principal("user", claims["sub"], bool(claims.get("adm")), via=via if isinstance(via, str) else None)
