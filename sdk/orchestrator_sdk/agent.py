"""An agent in a few lines: a handler per action, and a run loop that does the rest.

    agent = Agent(AgentClient(server, creds.agent_id, creds.api_key, signing_secret=creds.signing_secret))

    @agent.action("send_email")
    def send_email(task: TaskContext) -> dict:
        ...                         # raise HumanReviewNeeded(...) when a person has to decide
        return {"email_sent_to": task.params["to"]}

    agent.run()                     # until SIGTERM / SIGINT, or `stop` is set

The loop (`AgentClient.run`) polls with backoff while idle, reports `task_started` until the server
confirms it, runs the handler while a thread sends heartbeats for its execution, and reports
`task_complete` or `task_error` (one idempotency key per report, resent until it gets through). It
takes nothing new from an execution that is paused or cancelled (the poll's `force_pause` /
`force_cancel`), and a handler with several steps can call `task.checkpoint()` between them to stop
early when the agent is shutting down. A signal lets the subtask in hand finish and be reported first.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator_sdk.client import AgentClient, Work
from orchestrator_sdk.credentials import load_or_register

log = logging.getLogger(__name__)

Handler = Callable[["TaskContext"], "dict[str, Any] | None"]


class Stopping(Exception):  # noqa: N818 - a signal, not a failure of the work
    """Raised by `TaskContext.checkpoint` when the agent is shutting down: reported as a retryable error,
    so the subtask goes back to the queue for the next attempt."""


@dataclass
class TaskContext:
    """One subtask in hand: what the server sent, and the agent's ways to act on it."""

    work: Work
    client: AgentClient
    stop: threading.Event

    @property
    def execution_id(self) -> str:
        return self.work.execution_id

    @property
    def task_id(self) -> str:
        return self.work.task_id or ""

    @property
    def action(self) -> str:
        return self.work.task.get("action") or ""

    @property
    def title(self) -> str:
        return self.work.task.get("title") or ""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.work.task.get("params") or {})

    @property
    def context(self) -> dict[str, Any]:
        return dict(self.work.task.get("context") or {})

    @property
    def attempt(self) -> int:
        return int(self.work.task.get("attempt") or 1)

    def checkpoint(self) -> None:
        """Between a handler's steps: raise `Stopping` if the agent is shutting down."""
        if self.stop.is_set():
            raise Stopping("the agent is shutting down")


class Agent:
    def __init__(self, client: AgentClient, *, heartbeat_seconds: float = 30.0, idle_sleep: float = 1.0,
                 max_idle_sleep: float = 10.0) -> None:
        self.client = client
        self.handlers: dict[str, Handler] = {}
        self.heartbeat_seconds = heartbeat_seconds
        self.idle_sleep = idle_sleep
        self.max_idle_sleep = max_idle_sleep
        self.stop = threading.Event()

    @classmethod
    def from_credentials(cls, server: str, path: str | Path, *, operator_token: str | None = None,
                         name: str = "agent", capabilities: list[str] | None = None,
                         agent_id: str | None = None, **kw: Any) -> Agent:
        """An agent whose credentials are in `path`, registered first (with `operator_token`) if need be."""
        creds = load_or_register(path, server, operator_token, name=name, capabilities=capabilities or [],
                                 agent_id=agent_id)
        return cls(AgentClient(server, creds.agent_id, creds.api_key, signing_secret=creds.signing_secret), **kw)

    @property
    def agent_id(self) -> str:
        return self.client.agent_id

    def action(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: `fn` handles the subtasks whose action is `name`."""
        def register(fn: Handler) -> Handler:
            self.handlers[name] = fn
            return fn
        return register

    def handle(self, work: Work) -> dict[str, Any] | None:
        """Run the handler of `work`'s action, with heartbeats for its execution while it runs."""
        task = TaskContext(work, self.client, self.stop)
        handler = self.handlers.get(task.action)
        if handler is None:
            raise LookupError(f"this agent has no handler for action {task.action!r}")
        log.info("Running %s for task %s of %s", task.action, task.task_id, task.execution_id)
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(task.execution_id, done), daemon=True,
                                name=f"heartbeat-{task.task_id}")
        beat.start()
        try:
            return handler(task)
        finally:
            done.set()
            beat.join(timeout=5)

    def _heartbeats(self, execution_id: str, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_seconds):
            try:
                self.client.heartbeat(execution_id)
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the work
                log.warning("heartbeat for %s failed: %s", execution_id, exc)

    def run(self, *, stop: threading.Event | None = None, handle_signals: bool = True) -> int:
        """Poll and work until `stop` (or SIGTERM / SIGINT, when called from the main thread) ends it;
        return how many subtasks were completed."""
        if stop is not None:
            self.stop = stop
        previous = self._install_signals() if handle_signals else {}
        log.info("Agent %s polling for %s", self.agent_id, ", ".join(sorted(self.handlers)))
        try:
            return self.client.run(self.handle, stop=self.stop, supported_actions=sorted(self.handlers),
                                   idle_sleep=self.idle_sleep, max_idle_sleep=self.max_idle_sleep,
                                   on_force_pause=_told("paused"), on_force_cancel=_told("cancelled"))
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            log.info("Agent %s stopped", self.agent_id)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("Agent %s: %s received; finishing the work in hand", self.agent_id, signal.Signals(signum).name)
            self.stop.set()

        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def _told(what: str) -> Callable[[Work], None]:
    def callback(work: Work) -> None:
        for held in work.held or [{"execution_id": work.execution_id, "task_id": work.task_id}]:
            log.info("Execution %s %s: no more work taken from it (task %s)", held.get("execution_id"), what,
                     held.get("task_id"))
    return callback
