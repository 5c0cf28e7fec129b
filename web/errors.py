"""One error handler, one JSON shape: {"error": {"code", "message", "details"}}.

Domain errors map to their status here and nowhere else; anything unexpected is logged with its
stack trace and answered with a bare 500, so no internals reach a client.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from orchestrator.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized, ValidationFailed

log = logging.getLogger(__name__)

STATUS_BY_ERROR: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (ValidationFailed, 422),
    (Forbidden, 403),
    (Unauthorized, 401),
]


def error_response(status: int, code: str, message: str, details: Any = None) -> ResponseReturnValue:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return jsonify(body), status


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
        return error_response(400, "invalid_request", "The request body is not valid.", exc.messages)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError) -> ResponseReturnValue:
        # Nothing was accepted: the client may retry the same request (with its idempotency key).
        log.error("Redis unavailable: %s", exc)
        return error_response(503, "unavailable", "The event queue is unavailable; retry shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
