"""A handler's after-commit work, carried out with the app's Redis and key prefix."""

from __future__ import annotations

from flask import current_app

from orchestrator.effects import AfterCommit, carry_out


def after_commit(work: AfterCommit) -> None:
    """Call only once the handler's unit of work has committed."""
    carry_out(current_app.extensions["redis"], current_app.config["SETTINGS"].redis_key_prefix, work)
