"""Domain errors. `web/` maps each class to one HTTP status in a single error handler."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every error the domain raises on purpose; `code` is stable for clients."""

    code = "domain_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class ValidationFailed(DomainError):
    """Input that is well-formed but breaks a domain rule (a cycle, an unknown id)."""

    code = "validation_failed"


class UnstorableValue(ValidationFailed):
    """Input that parses but cannot be stored or serialised (a NUL, a 2**70, NaN, deep nesting...).

    Raised by `orchestrator.payload_limits.check_storable`; details name the field path.
    """

    code = "unstorable_value"


class Forbidden(DomainError):
    code = "forbidden"


class Unauthorized(DomainError):
    code = "unauthorized"
