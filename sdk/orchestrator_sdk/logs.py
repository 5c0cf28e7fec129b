"""An agent's log, as the guide's section 10 shows it, with personal data and secrets masked.

    configure_logging("agent_larry", "logs/larry_execution.log")
    # 2026-02-11 16:09:45,120 - INFO - Reporting event: task_complete for task task_1_1_a

`MaskingFilter` is the server's filter too (`orchestrator/log_masking.py` puts it on every handler):
one set of masking rules, `orchestrator_sdk.masking`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from orchestrator_sdk.masking import mask_text

FORMAT = "%(asctime)s - %(levelname)s - %(message)s"
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


def configure_logging(name: str, log_file: str | Path | None = None, *, level: int = logging.INFO,
                      stream: bool = True) -> logging.Logger:
    """The agent's logger `name` (and the SDK's, `orchestrator_sdk`) writing guide-style lines to
    `log_file` (its folder made) and/or stderr, every handler masked. Safe to call twice."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    if stream:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(MaskingFilter())
    for logger_name in (name, "orchestrator_sdk"):
        logger = logging.getLogger(logger_name)
        logger.setLevel(level)
        logger.propagate = False
        for old in list(logger.handlers):
            if getattr(old, "_orchestrator_sdk", False):
                logger.removeHandler(old)
                old.close()
        for handler in handlers:
            handler._orchestrator_sdk = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
    return logging.getLogger(name)
