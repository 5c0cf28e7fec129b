"""No personal data or secret in any log line: a filter that masks records, put on every handler.

The filter (`orchestrator_sdk.logs.MaskingFilter`, the agents' too) sits on handlers, not loggers: a
logger's filters do not see the records its children propagate to it, a handler's see every record it
writes. `install_log_masking()` puts it on every
handler the process has (the root logger's, every named logger's, `logging.lastResort`); it is
called wherever logging is configured: the web app factory, Celery's logging signals (worker and
beat), gunicorn's logger class, the `orchestrator` command.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from orchestrator_sdk.logs import MaskingFilter

__all__ = ["MaskingFilter", "install_log_masking"]


def _handlers() -> Iterator[logging.Handler]:
    yield from logging.root.handlers
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            yield from logger.handlers
    if logging.lastResort is not None:
        yield logging.lastResort


def install_log_masking() -> None:
    """Put a `MaskingFilter` on every handler this process has now (once each). Call it again after
    anything adds handlers."""
    for handler in _handlers():
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
