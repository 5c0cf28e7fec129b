"""gunicorn's logger class with masked handlers (`--logger-class web.gunicorn_logging.MaskingLogger`).

Its access log writes each request line, query string included, where a stream token (`?token=`)
or a mistaken `?password=` would otherwise land in plain text; its error log writes tracebacks.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from orchestrator.log_masking import install_log_masking


class MaskingLogger(Logger):
    def setup(self, cfg: Any) -> None:
        # gunicorn sets up (and, on a reload, replaces) its handlers here, in the arbiter; workers inherit them.
        super().setup(cfg)
        install_log_masking()
