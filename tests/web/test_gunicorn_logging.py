"""gunicorn's access log (`web/gunicorn_logging.py`): an agent's idle poll writes no line, every other
request does, masked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from gunicorn.config import Config

from web.gunicorn_logging import MaskingLogger, idle_poll


@pytest.mark.parametrize(("method", "path", "status", "skipped"), [
    ("GET", "/api/agents/agent_a/work", "204 NO CONTENT", True),
    ("GET", "/api/agents/agent_a/work", "200 OK", False),  # work handed out
    ("GET", "/api/agents/agent_a/work", "429 TOO MANY REQUESTS", False),
    ("GET", "/api/agents/agent_a/work", "401 UNAUTHORIZED", False),
    ("POST", "/api/agents/agent_a/work", "204 NO CONTENT", False),
    ("GET", "/api/agents/agent_a/work/extra", "204 NO CONTENT", False),
    ("GET", "/api/agents/agent_a", "204 NO CONTENT", False),
    ("DELETE", "/api/executions/exec_1", "204 NO CONTENT", False),
])
def test_only_an_agents_poll_that_found_nothing_is_left_out(method: str, path: str, status: str, skipped: bool) -> None:
    assert idle_poll(method, path, status) is skipped


def test_the_access_log_writes_every_request_but_idle_polls(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = MaskingLogger(cfg)

    def request(path: str, status: str, query: str = "") -> None:
        req = SimpleNamespace(method="GET", path=path, query=query, uri=path, version=(1, 1), headers=[])
        resp = SimpleNamespace(status=status, response_length=0, sent=0, headers=[])
        environ = {"REQUEST_METHOD": "GET", "RAW_URI": f"{path}?{query}" if query else path, "PATH_INFO": path,
                   "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
        logger.access(resp, req, environ, SimpleNamespace(seconds=0, microseconds=1000))

    request("/api/agents/agent_a/work", "204 NO CONTENT")
    request("/api/agents/agent_a/work", "200 OK")
    request("/healthz", "200 OK", "email=carol@bittersweet-farm.com")
    lines = capsys.readouterr().out.splitlines()  # gunicorn's access log writes to stdout here ("-")
    assert len(lines) == 2, lines
    assert '"GET /api/agents/agent_a/work HTTP/1.1" 200' in lines[0]
    assert "/healthz?email=c***@bittersweet-farm.com HTTP/1.1" in lines[1]  # masked as before
