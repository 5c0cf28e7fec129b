"""No personal data or secret in any log line: a filter that masks records, put on every handler.

The filter sits on handlers, not loggers: a logger's filters do not see the records its children
propagate to it, a handler's see every record it writes. `install_log_masking()` puts it on every
handler the process has (the root logger's, every named logger's, `logging.lastResort`); it is
called wherever logging is configured: the web app factory, Celery's logging signals (worker and
beat), gunicorn's logger class, the `orchestrator` command.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from orchestrator.masking import mask_text

_TRACEBACKS = logging.Formatter()  # formats exceptions the way every stdlib formatter does


class MaskingFilter(logging.Filter):
    """Masks a record's final message (its format and args merged), exception text and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "masked", False):
            return True  # masked by the first of several handlers already
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format: handleError would print msg and args raw
            message = f"{record.msg} (args: {record.args!r})"
        record.msg, record.args = mask_text(message), None
        if record.exc_info and not record.exc_text:
            # Celery's own records may say exc_info=1: "the exception being handled".
            ei = record.exc_info if isinstance(record.exc_info, tuple) else sys.exc_info()
            record.exc_text = _TRACEBACKS.formatException(ei)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        record.masked = True
        return True


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
