"""The tests' Flask client signs agents' requests as `AgentClient` does, so that tests written before
signing keep speaking for a real agent (new agents must sign: `signing = "required"`).

A request whose bearer token is an agent's, and whose agent has a signing secret, is signed with it,
unless it is sent with `sign=False` or already carries an X-Signature (tests of signing itself).
"""

from __future__ import annotations

import io
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from werkzeug.test import TestResponse

from orchestrator import signing
from orchestrator.credentials import hash_token
from orchestrator.db import Database
from orchestrator.models import Agent, ApiCredential
from orchestrator.settings import Settings


class SigningClient(FlaskClient):
    def open(self, *args: Any, buffered: bool = False, follow_redirects: bool = False, sign: bool = True,
             **kwargs: Any) -> TestResponse:
        if sign and not (args and not isinstance(args[0], str)):  # not a prepared builder, environ or request
            request = self._request_from_builder_args(args, kwargs)
            secret = self._secret(request.headers.get("Authorization", ""))
            if secret is not None and signing.SIGNATURE_HEADER not in request.headers:
                body = request.get_data()
                request.environ["wsgi.input"] = io.BytesIO(body)  # read above: the app reads it again
                target = signing.request_target(request.path, request.query_string.decode("latin-1"))
                for name, value in signing.sign(secret, request.method, target, body).items():
                    request.environ["HTTP_" + name.upper().replace("-", "_")] = value
            args, kwargs = (request,), {}
        return super().open(*args, buffered=buffered, follow_redirects=follow_redirects, **kwargs)

    def _secret(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token_hash = hash_token(token.strip())
        if token_hash in _secrets:  # tests that count statements see none of ours after the first request
            return _secrets[token_hash]
        try:
            with _lookup_db(self.application.config["SETTINGS"]).reading() as s:
                secret = s.scalar(select(Agent.signing_secret).join(ApiCredential, ApiCredential.agent_id == Agent.id)
                                  .where(ApiCredential.token_hash == token_hash))
        except OperationalError:  # a test of an unreachable database: the app cannot read the key either
            return None
        if secret is not None:
            _secrets[token_hash] = secret
        return secret


# Tokens are random, so an agent's secret is kept by its token for the session; a test that rotates
# a secret signs by hand.
_secrets: dict[str, str] = {}
_lookup_dbs: dict[str, Database] = {}


def _lookup_db(settings: Settings) -> Database:
    """A connection pool of the client's own: looking secrets up must not use (nor renew) the app's,
    which tests of database loss watch."""
    db = _lookup_dbs.get(settings.database_url)
    if db is None:
        db = _lookup_dbs[settings.database_url] = Database(settings)
    return db
