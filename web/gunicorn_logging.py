"""gunicorn's logger class with masked handlers (`--logger-class web.gunicorn_logging.MaskingLogger`).

Its access log writes each request line, query string included, where a stream token (`?token=`)
or a mistaken `?password=` would otherwise land in plain text; its error log writes tracebacks.

An agent's poll that found nothing (`GET /api/agents/{id}/work` answered 204) writes no access line:
a fleet polls all the time (10,000 agents every 10 s are 1,000 lines a second saying nothing), and
writing those lines was an eighth of the web tier's CPU on an idle poll (docs/performance-polls.md).
They are counted instead (`orchestrator_polls`, by answer, and `orchestrator_http_requests`), and that
an agent polls shows in its `last_heartbeat`. Every other request, a poll that hands out work or
fails included, is logged as before.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

from orchestrator.log_masking import install_log_masking

_POLL_PATH = re.compile(r"/api/agents/[^/]+/work")


def idle_poll(method: str, path: str, status: Any) -> bool:
    """Whether a request was an agent's poll answered 204 (nothing for it)."""
    return method == "GET" and str(status).startswith("204") and _POLL_PATH.fullmatch(path) is not None


class MaskingLogger(Logger):
    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if idle_poll(req.method, req.path, resp.status):
            return
        super().access(resp, req, environ, request_time)

    def setup(self, cfg: Any) -> None:
        # gunicorn sets up (and, on a reload, replaces) its handlers here, in the arbiter; workers inherit them.
        super().setup(cfg)
        install_log_masking()
