"""One error handler, one JSON shape: {"error": {"code", "message", "details"}}.

Domain errors map to their status here and nowhere else; anything unexpected is logged with its
stack trace and answered with a bare 500, so no internals reach a client. Bad input: 400 for a body
that does not parse, 413 for one past MAX_CONTENT_LENGTH, 422 for one that parses but breaks a schema,
a storage limit (`UnstorableValue`) or a domain rule. Redis or the database out of reach (a failover, a
restart, a full pool) is a 503 "unavailable" with `Retry-After`: the request was fine, try it again.
A request over a rate limit (web/rate_limits.py) is a 429 "rate_limited": it did nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from werkzeug.exceptions import HTTPException

from orchestrator.db import is_unreachable
from orchestrator.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized, ValidationFailed
from web.rate_limits import RateLimited

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (ValidationFailed, 422),
    (Forbidden, 403),
    (Unauthorized, 401),
]

# Long enough for a failover or a pool to drain a little, short enough that an agent's poll loop
# barely notices.
RETRY_AFTER_SECONDS = 3


def error_response(status: int, code: str, message: str, details: Any = None) -> ResponseReturnValue:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return jsonify(body), status


def _description(exc: HTTPException) -> str:
    # Flask re-raises a body that does not parse as a bare BadRequest; Werkzeug's own, its cause,
    # says where the JSON broke (orjson's messages give a position, never the body's text).
    cause = exc.__cause__
    if isinstance(cause, HTTPException) and cause.code == exc.code and cause.description:
        return cause.description
    return exc.description or exc.name


def _http_details(exc: HTTPException) -> dict[str, Any] | None:
    if exc.code == 413:
        return {"max_bytes": current_app.config.get("MAX_CONTENT_LENGTH")}
    return None


def unavailable(message: str) -> ResponseReturnValue:
    body, status = error_response(503, "unavailable", message)  # type: ignore[misc]
    return body, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}


def _database_reason(exc: SQLAlchemyError) -> str:
    # The driver's first line says what happened to the connection; str(exc) would add the SQL
    # and its parameters, which stay out of the log as they stay out of the answer.
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _internal_error(exc: Exception) -> ResponseReturnValue:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "Something went wrong on our side.")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> ResponseReturnValue:
        status = next((s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls)), 400)
        resp = error_response(status, exc.code, exc.message, exc.details)
        if status == 401:
            body, code = resp  # type: ignore[misc]
            return body, code, {"WWW-Authenticate": "Bearer"}
        return resp

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError) -> ResponseReturnValue:
        # 422, like every input that parses but breaks a rule; 400 is kept for bodies that do not parse.
        return error_response(422, "invalid_request", "The request is not valid.", exc.messages)

    @app.errorhandler(RateLimited)
    def _rate_limited(exc: RateLimited) -> ResponseReturnValue:
        body, status = error_response(429, "rate_limited", f"Too many requests: the limit is {exc.limit}.",  # type: ignore[misc]
                                      {"limit": str(exc.limit)})
        return body, status, exc.headers

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, _description(exc), _http_details(exc))

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> ResponseReturnValue:
        # Nothing was accepted: the client may retry the same request (with its idempotency key).
        log.error("Redis unavailable: %s", exc)
        return unavailable("The event queue is unavailable; retry shortly.")

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError) -> ResponseReturnValue:
        if not is_unreachable(exc):
            return _internal_error(exc)
        # A failover or a restart, not a bug: no stack trace. `Database.transaction` has already
        # retried a lost connection once; the client tries again after Retry-After.
        log.warning("database unavailable: %s", _database_reason(exc))
        return unavailable("The database is unavailable; retry shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        return _internal_error(exc)
