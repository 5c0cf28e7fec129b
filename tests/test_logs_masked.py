"""No personal data or secret in any log line of any process: the whole stack as `orchestrator up` runs it.

gunicorn (error and access logs), the Celery worker, beat and the command itself write to one file here,
at DEBUG, while an agent reports a block full of an email address, a phone number and its own key (the
worker's "blocked" warning repeats the agent's text), a stream token travels in a URL, and logins fail
with a password in the form and in the query string. Then every line is searched for the plain text.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import simple_websocket
from orchestrator_sdk.client import SignedAuth

from orchestrator.credentials import new_token
from tests.processes import free_port, wait_healthy

EMAIL, PHONE, PASSWORD = "carol@bittersweet-farm.com", "860-455-9416", "Corr3ct-Horse-Battery"
WRONG_PASSWORD = "Wr0ng-Horse-Staple"


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_token = new_token("usr")
        self.signing: dict[str, str] = {}  # agents' signing secrets by their keys
        self.data = Path(f"/tmp/orch-mask-{os.getpid()}")  # short: the embedded Redis' unix socket lives here
        shutil.rmtree(self.data, ignore_errors=True)
        self.log_path = tmp_path / "stack.log"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
        if os.environ.get("DATABASE_URL"):  # PostgreSQL run: same server, the test's own database
            env["DATABASE_URL"] = os.environ["DATABASE_URL"]
        if os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = os.environ["REDIS_URL"]
            env["REDIS_KEY_PREFIX"] = f"orchmask{os.getpid()}:"
        env.update(ORCHESTRATOR_DATA_DIR=str(self.data), ORCHESTRATOR_ADMIN_TOKEN=self.admin_token,
                   ORCHESTRATOR_ADMIN_PASSWORD=PASSWORD, LOG_LEVEL="DEBUG", SWEEP_INTERVAL_SECONDS="2")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - the stack writes to it until it stops
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(self.port),
                                      "--web-workers", "1", "--threads", "8", "--concurrency", "1"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path)

    def wait_ready(self) -> None:
        wait_healthy(self.base, self.proc, self.text)

    def call(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        """As the admin, or as `token`'s owner (signed when it is an agent's key with a secret in `signing`)."""
        token = token or self.admin_token
        return requests.request(method, self.base + path, auth=SignedAuth(token, self.signing.get(token)),
                                timeout=30, **kw)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < deadline, f"{needle!r} never logged:\n{self.text()[-3000:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            self.log.close()


def block_with_personal_data(stack: Stack) -> str:
    """Register an agent, give it Carol's work, have it report a block; return its key."""
    registered = stack.call("POST", "/api/agents", json={"id": "agent_mask", "name": "Larry",
                                                         "capabilities": ["send_email"]}).json()
    key = registered["api_key"]
    stack.signing[key] = registered["signing_secret"]
    assert stack.call("POST", "/api/plans", json={"id": "plan_mask", "goal": "Interview Carol", "tasks": [
        {"id": "task_1", "title": "Interview Carol", "subtasks": [
            {"id": "task_1_a", "title": "Write", "action": "send_email", "params": {"to": EMAIL, "call": PHONE}}]}]}
                      ).status_code == 201
    assert stack.call("POST", "/api/executions", json={"plan_id": "plan_mask", "execution_id": "exec_mask",
                                                       "agent_id": "agent_mask"}).status_code == 201
    assert stack.call("PATCH", "/api/executions/exec_mask", json={"status": "QUEUED"}).status_code == 200
    work = stack.call("GET", "/api/agents/agent_mask/work", token=key).json()
    assert work["next_task"]["params"] == {"to": EMAIL, "call": PHONE}
    resp = stack.call("POST", "/api/executions/exec_mask/events", token=key, json={
        "agent_id": "agent_mask", "event_type": "task_error", "task_id": "task_1_a", "status": "error",
        "error_type": "external_dependency_blocked", "human_review_required": True, "blocking": True,
        "error_message": f"{EMAIL} bounced; call {PHONE}; my key is {key}", "message": f"Could not reach {EMAIL}",
        "suggestions": [f"Call Carol at {PHONE}"]})
    assert resp.status_code in (201, 202), resp.text
    return key


def leave_secrets_in_urls(stack: Stack, key: str) -> str:
    """The requests whose access-log lines would carry secrets; return the stream token used."""
    token = stack.call("POST", "/api/tokens/stream").json()["token"]
    ws = simple_websocket.Client.connect(
        stack.base.replace("http://", "ws://") + f"/api/executions/exec_mask/stream?token={token}")
    ws.receive(timeout=10)
    ws.close()  # gunicorn writes no access line for a WebSocket; a plain GET of the same URL gets one
    requests.get(f"{stack.base}/api/executions/exec_mask/stream?token={token}", timeout=30)
    stack.call("GET", f"/api/agents/agent_mask/work?api_key={key}", token=key)
    stack.call("GET", f"/healthz?email={EMAIL}&phone={PHONE}")
    for password in (WRONG_PASSWORD, PASSWORD):
        resp = requests.post(f"{stack.base}/login?username=admin&password={password}",
                             data={"username": "admin", "password": WRONG_PASSWORD}, timeout=30,
                             allow_redirects=False)
        assert 400 <= resp.status_code < 500
    return token


def test_no_log_line_of_any_process_holds_personal_data_or_secrets(tmp_path: Path, db) -> None:
    # `db`: on PostgreSQL the stack writes into the test database, emptied after the test.
    stack = Stack(tmp_path)
    try:
        stack.wait_ready()
        key = block_with_personal_data(stack)
        stream_token = leave_secrets_in_urls(stack, key)
        # The worker's warning about the block has been written, masked (so the search below can fail).
        stack.wait_for("blocked: c***@bittersweet-farm.com bounced; call ***-***-9416; my key is ***")
        stack.wait_for("/api/executions/exec_mask/stream?token=*** HTTP/1.1")
        stack.wait_for("/login?username=admin&password=*** HTTP/1.1")
    finally:
        stack.stop()
    logs = stack.text() + "".join(p.read_text(errors="replace") for p in stack.data.glob("**/*.log"))
    shutil.rmtree(stack.data, ignore_errors=True)
    assert "Booting worker" in logs and "celery@" in logs and "beat" in logs.lower()  # every process spoke
    for secret in (EMAIL, PHONE, key, stack.signing[key], stack.admin_token, stream_token, PASSWORD, WRONG_PASSWORD,
                   "carol@"):
        assert secret not in logs, [line for line in logs.splitlines() if secret in line][:5]
