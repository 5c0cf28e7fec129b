"""The LLM decomposer against a local HTTP server that speaks the chat-completions API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.decomposition import DecompositionRequest
from orchestrator.decomposition.llm import LLMDecomposer
from tests.orchestrator.test_decomposition import GUIDE_REQUEST, assert_valid

CAPS = GUIDE_REQUEST["agent_capabilities"]
GOOD = {
    "decomposed_subtasks": [
        {"subtask_id": "task_1_1_a", "title": "Send initial contact email", "action": "send_email",
         "params": {"to": None, "subject": "Discovery Interview"}, "depends_on": [],
         "success_criteria": ["Email sent successfully"], "failure_handling": "If bounce: try phone call"},
        {"subtask_id": "task_1_1_b", "title": "Conduct interview", "action": "conduct_interview",
         "params": {"duration_minutes": 90}, "depends_on": ["task_1_1_a"], "success_criteria": ["Interview conducted"]},
        {"subtask_id": "task_1_1_c", "title": "Document findings", "action": "document_findings",
         "params": {"output_path": "interviews/carol.md"}, "depends_on": ["task_1_1_b"],
         "success_criteria": ["Document created"]},
    ],
    "notes": "Within a week.",
    "warnings": [],
}


class FakeLLM:
    def __init__(self) -> None:
        self.mode = "good"
        self.reply: Any = GOOD
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if fake.mode == "slow":
                    time.sleep(1.5)
                if fake.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                content = fake.reply if isinstance(fake.reply, str) else json.dumps(fake.reply)
                out = json.dumps({"id": "chatcmpl-1", "object": "chat.completion",
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": content}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.stop()


def request() -> DecompositionRequest:
    return DecompositionRequest(GUIDE_REQUEST["task"], GUIDE_REQUEST["plan_context"], CAPS)


def decomposer(fake: FakeLLM, timeout: float = 5) -> LLMDecomposer:
    return LLMDecomposer(fake.url, "sk-test", "test-model", timeout=timeout)


def test_good_reply_is_used_and_the_request_is_chat_completions(llm: FakeLLM) -> None:
    result = decomposer(llm).decompose(request())
    body = result.to_response()
    assert_valid(body, CAPS)
    assert result.decomposer == "llm:test-model"
    assert body["execution_sequence"] == ["task_1_1_a", "task_1_1_b", "task_1_1_c"]
    assert body["notes"] == "Within a week."
    # Actions agree with the interview template's in part; one missing param (to) costs 0.05.
    assert 0.75 <= body["decomposition_confidence"] < 1.0
    sent = llm.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "test-model"
    assert sent["body"]["response_format"]["type"] == "json_schema"
    assert "decomposed_subtasks" in sent["body"]["response_format"]["json_schema"]["schema"]["properties"]
    assert json.loads(sent["body"]["messages"][1]["content"])["agent_capabilities"] == CAPS


def test_reply_with_foreign_actions_and_bad_dependencies_is_repaired(llm: FakeLLM) -> None:
    llm.reply = {"decomposed_subtasks": [
        {**GOOD["decomposed_subtasks"][0], "depends_on": ["task_1_1_c"]},
        {**GOOD["decomposed_subtasks"][1], "action": "teleport"},
        {**GOOD["decomposed_subtasks"][2], "depends_on": ["task_1_1_b", "nope"]},
    ]}
    result = decomposer(llm).decompose(request())
    body = result.to_response()
    assert_valid(body, CAPS)
    assert [s["action"] for s in body["decomposed_subtasks"]] == ["send_email", "document_findings"]
    assert any("teleport" in w for w in body["warnings"])
    assert body["decomposition_confidence"] < 0.75


@pytest.mark.parametrize("reply", ["this is not json", json.dumps({"subtasks": []}),
                                   json.dumps({"decomposed_subtasks": [{"title": "no action"}]})])
def test_malformed_reply_falls_back_to_templates(llm: FakeLLM, reply: str) -> None:
    llm.reply = reply
    result = decomposer(llm).decompose(request())
    assert result.decomposer == "template:outreach_interview"
    assert "invalid reply" in result.warnings[0]
    assert_valid(result.to_response(), CAPS)


def test_timeout_falls_back_to_templates(llm: FakeLLM) -> None:
    llm.mode = "slow"
    started = time.monotonic()
    result = decomposer(llm, timeout=0.3).decompose(request())
    assert time.monotonic() - started < 1.4
    assert result.decomposer.startswith("template:")
    assert "no answer within 0.3 s" in result.warnings[0]


def test_http_error_falls_back(llm: FakeLLM) -> None:
    llm.mode = "error"
    result = decomposer(llm).decompose(request())
    assert result.decomposer.startswith("template:") and "HTTP error" in result.warnings[0]


def test_unreachable_endpoint_falls_back() -> None:
    result = LLMDecomposer("http://127.0.0.1:9/v1", None, "m", timeout=1).decompose(request())
    assert result.decomposer.startswith("template:") and result.decomposed_subtasks
