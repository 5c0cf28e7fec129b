"""A small Python client for agents: poll for work, report what happened, run a handler in a loop.

    client = AgentClient("http://localhost:5000", "agent_larry_001", api_key, signing_secret=secret)
    client.run(lambda work: {"email_sent_to": work.task["params"]["to"]}, stop=threading.Event())

Reports carry an idempotency key that stays the same across the client's own retries, so a report
whose answer was lost on the way back is applied once however often it is sent. `run` keeps the last
report about a subtask that did not get through (the server down longer than the retries last) and
sends it again, same key, before it polls for anything new.

A poll whose answer was lost is not lost work: until the agent's first report about a claim
(`task_started`) is applied, every poll answers that same subtask again (`Work.redelivered`), and
`run` reports `task_started` and waits for it to be applied before the handler runs, so a
sequential loop never meets its own work twice. Several `run` loops sharing one client skip work
another of them already has in hand; separate processes should not share an agent id.

With a `signing_secret` (shown at registration) every request is signed (`orchestrator_sdk.signing`),
each attempt afresh: a retry carries a new nonce, which the server has not seen.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from orchestrator_sdk.signing import sign

log = logging.getLogger(__name__)

MAX_RETRIES = 5
BACKOFF_SECONDS = 0.2
MAX_START_BACKOFF_SECONDS = 5.0  # between resends of a `task_started` whose answer is not known
MAX_RATE_LIMIT_WAIT_SECONDS = 60.0  # the longest Retry-After of a 429 the client waits out
STATUS_WAIT_SECONDS = 30.0


class AgentClientError(Exception):
    """The server refused a request (4xx): retrying the same request will not help."""

    def __init__(self, status: int, error: dict[str, Any] | None) -> None:
        self.status = status
        self.error = error or {}
        detail = self.error.get("error", self.error) if isinstance(self.error, dict) else self.error
        super().__init__(f"{status}: {detail}")

    @property
    def code(self) -> str | None:
        err = self.error.get("error") if isinstance(self.error, dict) else None
        return err.get("code") if isinstance(err, dict) else None


class HumanReviewNeeded(Exception):  # noqa: N818 - reads as what the handler says, not as a failure
    """Raised by a handler when a person has to decide: the subtask is reported as a blocking error,
    with `suggestions` for the person and the `next_step_options` they may answer with (guide §2)."""

    def __init__(self, message: str, suggestions: list[Any] | None = None, *,
                 error_type: str = "human_review_required", next_step_options: list[str] | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestions = list(suggestions or [])
        self.error_type = error_type
        self.next_step_options = list(next_step_options or [])
        self.detail = detail  # the event's `message`, besides `error_message`


@dataclass
class Work:
    execution_id: str
    plan_id: str | None
    task: dict[str, Any]
    force_pause: bool = False
    force_cancel: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def task_id(self) -> str | None:
        return self.task.get("task_id") if self.task else None

    @property
    def redelivered(self) -> bool:
        """The server answers a claim again: this agent holds it, but no report of it has been applied yet."""
        return bool(self.raw.get("redelivered"))

    @property
    def key(self) -> tuple[str, str | None, int | None]:
        """Which attempt of which subtask: a redelivery has the same key as the first answer."""
        return self.execution_id, self.task_id, self.task.get("attempt") if self.task else None

    @property
    def held(self) -> list[dict[str, Any]]:
        """With force_pause / force_cancel: the held subtasks to stop ({"execution_id", "task_id", "signal"})."""
        return list(self.raw.get("held") or [])


class SignedAuth(requests.auth.AuthBase):
    """requests' auth hook for an agent: its API key, and its signature over the request as sent
    (the prepared request's target and body bytes, so `json=` and `params=` need no care)."""

    def __init__(self, api_key: str, signing_secret: str | None = None) -> None:
        self.api_key = api_key
        self.signing_secret = signing_secret

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.api_key}"
        if self.signing_secret is not None:
            body = r.body or b""
            body = body.encode("utf-8") if isinstance(body, str) else body
            if not isinstance(body, bytes):
                raise TypeError("a signed request's body is bytes or text, not a stream")
            r.headers.update(sign(self.signing_secret, r.method or "GET", r.path_url, body))
        return r


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AgentClient:
    def __init__(self, base_url: str, agent_id: str, api_key: str, *, signing_secret: str | None = None,
                 session: requests.Session | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self.api_key = api_key
        self.auth = SignedAuth(api_key, signing_secret)
        self.session = session or requests.Session()
        self.timeout = timeout
        self._in_hand: set[tuple[str, str | None, int | None]] = set()  # `Work.key`s a run loop is working on
        self._unsent: list[tuple[str, dict[str, Any]]] = []  # (execution, body) of reports to send again
        self._in_hand_lock = threading.Lock()  # guards both

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, resend_after_timeout: bool = True, **kw: Any) -> requests.Response:
        """Send with retries on connection errors and 5xx (backoff 0.2·2^n) and, after its Retry-After,
        on 429 (a request over the agent's rate limit did nothing, so sending it again is safe); raise on 4xx.

        Without `resend_after_timeout` a read timeout is raised at once: for a request that is not
        idempotent (the poll claims work), the first may have done its job and a resend would do it again.
        """
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        for attempt in range(MAX_RETRIES + 1):
            try:
                # Signed as each attempt is prepared: a retry carries a fresh nonce.
                resp = self.session.request(method, url, auth=self.auth, timeout=self.timeout, **kw)
            except (requests.ConnectionError, requests.Timeout) as exc:
                # A report may have arrived even though its answer did not: resending it is safe because
                # the body (and so its idempotency key) is the same.
                unsent = isinstance(exc, requests.ConnectTimeout) or not isinstance(exc, requests.Timeout)
                if attempt == MAX_RETRIES or not (unsent or resend_after_timeout):
                    raise
                log.warning("%s %s: no answer; retrying", method, path)
            else:
                if resp.status_code == 429 and attempt < MAX_RETRIES:
                    delay = _retry_after(resp)
                    log.warning("%s %s: over the rate limit; retrying in %.1f s", method, path, delay)
                    time.sleep(delay)
                    continue
                if resp.status_code < 500 or attempt == MAX_RETRIES:
                    break
                log.warning("%s %s answered %s; retrying", method, path, resp.status_code)
            time.sleep(BACKOFF_SECONDS * 2 ** attempt)
        if resp.status_code >= 400:
            raise AgentClientError(resp.status_code, _json(resp))
        return resp

    # -- polling ----------------------------------------------------------------------------------

    def poll(self, supported_actions: Iterable[str] | None = None) -> Work | None:
        """Claim the next subtask, or None when there is nothing (204) for this agent."""
        params = {"supported_actions": ",".join(supported_actions)} if supported_actions else None
        resp = self._request("GET", f"/api/agents/{self.agent_id}/work", params=params,
                             resend_after_timeout=False)
        if resp.status_code == 204 or not resp.content:
            return None
        body = resp.json()
        task = body.get("next_task") or {}
        if not body.get("execution_id") and not (body.get("force_pause") or body.get("force_cancel")):
            return None
        return Work(execution_id=body.get("execution_id"), plan_id=body.get("plan_id"), task=task,
                    force_pause=bool(body.get("force_pause")), force_cancel=bool(body.get("force_cancel")),
                    raw=body)

    # -- reporting --------------------------------------------------------------------------------

    def report(self, execution_id: str, event_type: str, task_id: str | None = None, *, wait: bool = True,
               keep_unsent: bool = False, **fields: Any) -> dict[str, Any]:
        """Post one event; return the server's outcome (or the 202 receipt when not waiting).

        With `keep_unsent`, a report that does not get through (no answer, 5xx after the retries, not
        applied in time) is raised and also kept, to be sent again, same body and key, by `send_unsent`.
        """
        body = self._event_body(event_type, task_id, **fields)
        try:
            return self._send(execution_id, body, wait)
        except (requests.RequestException, AgentClientError, TimeoutError) as exc:
            if keep_unsent and _unsent(exc):
                with self._in_hand_lock:
                    self._unsent.append((execution_id, body))
            raise

    def _event_body(self, event_type: str, task_id: str | None, **fields: Any) -> dict[str, Any]:
        body = {
            "agent_id": self.agent_id,
            "agent_timestamp": _now_iso(),
            "event_type": event_type,
            "task_id": task_id,
            "idempotency_key": uuid.uuid4().hex,  # built once: every resend of this body has the same key
            **fields,
        }
        return {k: v for k, v in body.items() if v is not None}

    def _send(self, execution_id: str, body: dict[str, Any], wait: bool = True) -> dict[str, Any]:
        if body.get("event_type") != "heartbeat":
            log.info("Reporting event: %s for task %s", body.get("event_type"), body.get("task_id"))
        resp = self._request("POST", f"/api/executions/{execution_id}/events", json=body)
        out = _json(resp)
        if resp.status_code == 202 and wait and out.get("status_url"):
            return self._wait_outcome(out["status_url"])
        return out

    def _wait_outcome(self, status_url: str) -> dict[str, Any]:
        deadline = time.monotonic() + STATUS_WAIT_SECONDS
        delay = 0.05
        while True:
            resp = self._request("GET", status_url)
            if resp.status_code == 200:
                body = _json(resp)
                if body.get("state") == "rejected":
                    raise AgentClientError(409, {"error": body.get("outcome", {}).get("error"), **body})
                return body.get("outcome", body)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"event not applied within {STATUS_WAIT_SECONDS:.0f}s: {status_url}")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def send_unsent(self) -> bool:
        """Send the kept reports again, oldest first; say whether none is left. A refusal (4xx) drops one:
        sending it again would not change the answer."""
        while True:
            with self._in_hand_lock:
                if not self._unsent:
                    return True
                execution_id, body = self._unsent[0]
            try:
                self._send(execution_id, body)
            except AgentClientError as exc:
                if _unsent(exc):
                    return False
                log.warning("kept report on %s refused: %s", body.get("task_id"), exc)
            except (requests.RequestException, TimeoutError):
                return False
            with self._in_hand_lock:
                if self._unsent and self._unsent[0][1] is body:
                    self._unsent.pop(0)

    def started(self, work: Work) -> dict[str, Any]:
        return self.report(work.execution_id, "task_started", work.task_id, status="running")

    def start(self, work: Work, stop: threading.Event) -> bool:
        """Report `task_started` until the server says how it went: True once it is applied (the claim
        is acknowledged: this agent has to finish the subtask), False when it is refused or `stop` is set.

        A start whose answer did not come (server or Redis down, not applied in time) may still be
        applied later, acknowledging a claim the agent would then have walked away from, and nothing
        would ever finish it. So the same body, same key, goes again until the answer is known.
        """
        body = self._event_body("task_started", work.task_id, status="running")
        delay = BACKOFF_SECONDS
        while True:
            try:
                self._send(work.execution_id, body)
                return True
            except (requests.RequestException, AgentClientError, TimeoutError) as exc:
                if not _unsent(exc):
                    log.warning("start of %s refused: %s", work.task_id, exc)
                    return False
                log.warning("start of %s not confirmed yet (%s); sending it again", work.task_id, exc)
            if stop.wait(delay):
                return False
            delay = min(delay * 2, MAX_START_BACKOFF_SECONDS)

    def complete(self, work: Work, output_data: dict[str, Any] | None = None,
                 message: str | None = None, *, keep_unsent: bool = False) -> dict[str, Any]:
        return self.report(work.execution_id, "task_complete", work.task_id, status="success",
                           output_data=output_data, message=message, keep_unsent=keep_unsent)

    def error(self, work: Work, error_type: str, error_message: str, *, human_review_required: bool = False,
              suggestions: list[Any] | None = None, blocking: bool = False,
              keep_unsent: bool = False, next_step_options: list[str] | None = None,
              message: str | None = None) -> dict[str, Any]:
        return self.report(work.execution_id, "task_error", work.task_id, status="error", error_type=error_type,
                           error_message=error_message, human_review_required=human_review_required,
                           suggestions=suggestions, blocking=blocking, keep_unsent=keep_unsent,
                           next_step_options=next_step_options, message=message)

    def heartbeat(self, execution_id: str | None = None) -> dict[str, Any]:
        """Alive, working on `execution_id`; without one, alive between executions (logged nowhere)."""
        if execution_id is not None:
            return self.report(execution_id, "heartbeat")
        body = {"agent_timestamp": _now_iso(), "idempotency_key": uuid.uuid4().hex}
        return _json(self._request("POST", f"/api/agents/{self.agent_id}/heartbeat", json=body))

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, handler: Callable[[Work], dict[str, Any] | None], *, stop: threading.Event,
            supported_actions: Iterable[str] | None = None, idle_sleep: float = 1.0,
            max_idle_sleep: float | None = None,
            on_force_pause: Callable[[Work], None] | None = None,
            on_force_cancel: Callable[[Work], None] | None = None) -> int:
        """Poll and work until `stop` is set; return how many subtasks were completed.

        An idle loop waits `idle_sleep` between polls, doubling up to `max_idle_sleep` (default: no
        growth) while nothing comes, and polls again at once after finishing a subtask."""
        actions = list(supported_actions) if supported_actions else None
        completed = 0
        idle = _Backoff(idle_sleep, max_idle_sleep or idle_sleep)
        while not stop.is_set():
            if not self.send_unsent():  # the server is still unreachable: no new work before those
                stop.wait(idle.next())
                continue
            try:
                work = self.poll(actions)
            except (requests.RequestException, AgentClientError) as exc:
                # The server may be restarting: keep the agent alive and try again.
                log.warning("poll failed: %s", exc)
                stop.wait(idle.next())
                continue
            if work is None:
                stop.wait(idle.next())
                continue
            if work.force_cancel or work.force_pause:
                callback = on_force_cancel if work.force_cancel else on_force_pause
                if callback is not None:
                    callback(work)
                stop.wait(idle.reset())
                continue
            if work.task_id is None or not self._take_in_hand(work):
                stop.wait(idle.reset())
                continue
            try:
                completed += self._work_one(handler, work, stop)
            finally:
                idle.reset()
                with self._in_hand_lock:
                    self._in_hand.discard(work.key)
        return completed

    def _take_in_hand(self, work: Work) -> bool:
        """False when another run loop of this client already works on `work`: a redelivery answered
        before that loop's `task_started` was applied. It must not run the handler a second time."""
        with self._in_hand_lock:
            if work.key in self._in_hand:
                log.info("%s is already in hand (redelivered); waiting", work.task_id)
                return False
            self._in_hand.add(work.key)
            return True

    def _work_one(self, handler: Callable[[Work], dict[str, Any] | None], work: Work, stop: threading.Event) -> int:
        """Start (`start`: until the server says whether the claim is this agent's), run the handler,
        report how it went. The last report is kept until it gets through, since once the subtask is
        acknowledged nothing else would ever finish it."""
        if not self.start(work, stop):
            return 0
        try:
            try:
                output = handler(work)
            except HumanReviewNeeded as exc:
                self.error(work, exc.error_type, exc.message, human_review_required=True,
                           suggestions=exc.suggestions, blocking=True, keep_unsent=True,
                           next_step_options=exc.next_step_options or None, message=exc.detail)
                return 0
            except Exception as exc:  # noqa: BLE001 - any handler failure is reported, the loop goes on
                log.exception("handler failed on %s", work.task_id)
                self.error(work, type(exc).__name__, str(exc), keep_unsent=True)
                return 0
            self.complete(work, output_data=output if isinstance(output, dict) else None, keep_unsent=True)
            return 1
        except (requests.RequestException, AgentClientError, TimeoutError) as exc:
            log.warning("reporting on %s failed: %s", work.task_id, exc)
            return 0


class _Backoff:
    """Waits that double from `first` up to `most`; `reset` starts again (and returns `first`)."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most, self.current = first, max(most, first), first

    def next(self) -> float:
        wait, self.current = self.current, min(self.current * 2, self.most)
        return wait

    def reset(self) -> float:
        self.current = self.first
        return self.first


def _unsent(exc: Exception) -> bool:
    """The report may not have arrived, or not been applied yet: worth sending again (same key)."""
    return not isinstance(exc, AgentClientError) or exc.status >= 500


def _retry_after(resp: requests.Response) -> float:
    """A 429's Retry-After in seconds (the server sends whole seconds), kept within reason."""
    try:
        seconds = float(int(resp.headers.get("Retry-After", "")))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, BACKOFF_SECONDS), MAX_RATE_LIMIT_WAIT_SECONDS)


def _json(resp: requests.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"raw": resp.text}
    return body if isinstance(body, dict) else {"body": body}
