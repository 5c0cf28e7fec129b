"""How every `orchestrator` command fails: one line on stderr and exit 1, never a traceback."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click
import redis as redis_lib
from marshmallow import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import DomainError

# Commands that change access write the database, then tell the web processes through Redis.
REDIS_AFTER_COMMIT = ("Done in the database, but Redis could not be told ({exc}); running web processes may "
                      "allow the old access for 30 s.")


def _details(details: dict[str, Any]) -> str:
    return f" ({json.dumps(details, default=str)[:400]})" if details else ""


def one_line_errors(what: str = "input", redis_hint: str = "Redis error: {exc}",
                    ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Domain, input, database and Redis errors become a ClickException.

    `what` names the input a ValidationError is about; `redis_hint` says what a Redis error means.
    """

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except DomainError as exc:
                raise click.ClickException(exc.message + _details(exc.details)) from exc
            except ValidationError as exc:
                raise click.ClickException(f"The {what} is not valid: {json.dumps(exc.messages)[:600]}") from exc
            except SQLAlchemyError as exc:
                raise click.ClickException(f"Database error: {str(exc).splitlines()[0]}") from exc
            except redis_lib.RedisError as exc:
                raise click.ClickException(redis_hint.format(exc=exc)) from exc

        return wrapper

    return decorate
