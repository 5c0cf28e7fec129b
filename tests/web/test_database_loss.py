"""A database blip never answers 500: a lost connection is retried once on a fresh one, and a database
out of reach answers 503 "unavailable" with Retry-After.

The termination tests need PostgreSQL (`pg_terminate_backend`, as a failover or a restart does it) and
only ever terminate backends of the test database itself: other runs share the server. The rest run
on both databases.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_lib
import requests
from flask import Flask
from orchestrator_sdk.client import SignedAuth
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from orchestrator.db import Database, is_unreachable, make_engine
from orchestrator.models import ExecutionSubtask, User
from orchestrator.settings import Settings
from tests.factories import make_user, make_user_with_token
from tests.web.helpers import assert_error
from tests.workers.helpers import queued_execution

postgres_only = pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                                   reason="terminating backends is a PostgreSQL thing")
TERMINATE_OTHERS = text(
    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()")
CLOSED_PORT_URL = "postgresql://postgres@127.0.0.1:1/orchestrator"


def terminate(database_url: str, query: Any = TERMINATE_OTHERS, **params: Any) -> int:
    """Run a pg_terminate_backend query on a connection of its own; it waits (5 s at most) until each
    backend is gone, so the next statement meets a dead connection, not a dying one."""
    admin = make_engine(database_url)
    try:
        with admin.connect() as conn:
            return int(conn.execute(query, params).scalar_one())
    finally:
        admin.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _app(settings: Settings) -> Flask:
    from web.app import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def app(migrated: Settings, db: Database, redis: redis_lib.Redis) -> Iterator[Flask]:
    # No worker drains here: event POSTs answer 202 at once instead of waiting for an outcome.
    flask_app = _app(migrated.replace(ingest_reply_wait_ms=50))
    yield flask_app
    flask_app.extensions["db"].dispose()


def warm_pool(engine: Engine, n: int = 3) -> None:
    """Leave `n` connections in the pool, as a busy process has."""
    conns = [engine.connect() for _ in range(n)]
    for conn in conns:
        conn.execute(text("SELECT 1"))
    for conn in conns:
        conn.close()


def count_failed_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    failed: list[int] = []
    real = engine.dialect.do_ping

    def ping(dbapi_conn: Any) -> bool:
        try:
            return real(dbapi_conn)
        except Exception:
            failed.append(1)
            raise

    monkeypatch.setattr(engine.dialect, "do_ping", ping)
    return failed


# (1) Backends terminated between requests: the pool's pre-ping replaces them.

@postgres_only
def test_after_every_backend_is_terminated_the_api_answers_normally(app, client, db, migrated) -> None:
    scene = queued_execution(db)
    with db.unit_of_work() as s:
        _, operator = make_user_with_token(s)
    warm_pool(app.extensions["db"].engine)
    assert terminate(migrated.database_url) >= 3

    poll = client.get(f"/api/agents/{scene.agent_id}/work", headers=bearer(scene.agent_key))
    assert poll.status_code == 200, poll.get_json()
    assert poll.get_json()["next_task"]["task_id"] == "task_0_a"
    listed = client.get("/api/executions", headers=bearer(operator))
    assert listed.status_code == 200, listed.get_json()
    posted = client.post(f"/api/executions/{scene.execution_id}/events", headers=bearer(scene.agent_key),
                         json={"agent_id": scene.agent_id, "event_type": "task_started", "task_id": "task_0_a"})
    assert posted.status_code in (201, 202), posted.get_json()


@postgres_only
def test_one_dead_connection_found_renews_the_whole_pool(db, migrated, monkeypatch) -> None:
    """After a failover every pooled connection is dead. The first checkout's ping finds one; SQLAlchemy
    then marks all connections opened before it stale, so the others are replaced without a ping each."""
    fresh = Database(migrated)
    try:
        warm_pool(fresh.engine, 3)
        assert terminate(migrated.database_url) >= 3
        failed = count_failed_pings(fresh.engine, monkeypatch)
        pids = set()
        for _ in range(3):
            conns = [fresh.engine.connect() for _ in range(3)]  # all three pooled ones at once
            pids |= {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in conns}
            for conn in conns:
                conn.close()
        assert failed == [1] and len(pids) == 3
    finally:
        fresh.dispose()


# (1b) A connection lost in the middle of a transaction: `Database.transaction` retries it once.

def _kill_own_backend_once(engine: Engine, database_url: str, when: Callable[[str], bool]) -> list[int]:
    """Terminate the backend of the connection about to run the first statement that `when` picks:
    the statement then meets a dead connection, as one in flight during a failover does."""
    killed: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _kill(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if killed or not when(statement):
            return
        pid = conn.connection.dbapi_connection.info.backend_pid
        killed.append(pid)
        terminate(database_url, text("SELECT pg_terminate_backend(:pid, 5000)::int"), pid=pid)

    return killed


@postgres_only
@pytest.mark.parametrize("dies_at", [
    lambda sql: "FOR UPDATE" in sql,  # the claim's first lock
    lambda sql: sql.lstrip().startswith("UPDATE"),  # its first write: later, but still before the COMMIT
], ids=["claiming", "flushing"])
def test_a_poll_whose_connection_dies_mid_transaction_is_retried(app, client, db, migrated, caplog,
                                                                 dies_at) -> None:
    scene = queued_execution(db)
    # The agent's key is cached by a first request, so the dying statement is the claim's, not auth's.
    client.get("/api/executions", headers=bearer(scene.agent_key))
    killed = _kill_own_backend_once(app.extensions["db"].engine, migrated.database_url, dies_at)
    with caplog.at_level(logging.WARNING):
        resp = client.get(f"/api/agents/{scene.agent_id}/work", headers=bearer(scene.agent_key))
    assert len(killed) == 1
    assert resp.status_code == 200, resp.get_json()
    assert "database connection lost" in caplog.text and "unhandled error" not in caplog.text
    with db.reading() as s:  # the first try left nothing behind: one claim, not two
        running = s.scalars(select(ExecutionSubtask.plan_subtask_id).where(
            ExecutionSubtask.execution_id == scene.execution_id, ExecutionSubtask.status == "RUNNING")).all()
    assert running == ["task_0_a"]


@postgres_only
def test_a_read_whose_connection_dies_mid_request_is_a_503(app, client, db, migrated) -> None:
    with db.unit_of_work() as s:
        _, operator = make_user_with_token(s)
    client.get("/api/plans", headers=bearer(operator))  # caches the token
    _kill_own_backend_once(app.extensions["db"].engine, migrated.database_url, lambda sql: "executions" in sql)
    resp = client.get("/api/executions", headers=bearer(operator))
    assert_unavailable(resp)
    assert client.get("/api/executions", headers=bearer(operator)).status_code == 200  # the next one works


@postgres_only
def test_backends_terminated_under_load_never_answer_500(db, migrated, live_server) -> None:
    """The incident: agents polling and operators listing while every backend is terminated, again and
    again. In-flight reads may answer 503 (they cannot be run twice); nothing answers 500."""
    scenes = [queued_execution(db) for _ in range(4)]
    with db.unit_of_work() as s:
        _, operator = make_user_with_token(s)
    codes: Counter[int] = Counter()
    stop = threading.Event()

    def client_loop(scene: Any) -> None:
        with requests.Session() as http:
            while not stop.is_set():
                for path, auth in ((f"/api/agents/{scene.agent_id}/work", scene.auth),
                                   ("/api/executions", SignedAuth(operator))):
                    codes[http.get(live_server.url + path, auth=auth, timeout=30).status_code] += 1

    threads = [threading.Thread(target=client_loop, args=(scene,)) for scene in scenes]
    for thread in threads:
        thread.start()
    try:
        for _ in range(4):
            time.sleep(0.3)
            terminate(migrated.database_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert set(codes) <= {200, 204, 503}, codes
    assert codes[503] < (codes[200] + codes[204]) / 20, codes


# (2) The database out of reach: 503 "unavailable" with Retry-After, on either database's run.

def assert_unavailable(resp: Any) -> None:
    assert_error(resp, 503, "unavailable")
    assert int(resp.headers["Retry-After"]) > 0
    body = resp.get_data(as_text=True)
    for leak in ("Traceback", "SELECT", "psycopg", "127.0.0.1", "sqlalchemy"):
        assert leak not in body


def test_an_unreachable_database_is_a_503_with_retry_after(migrated, redis, caplog) -> None:
    unreachable = _app(migrated.replace(database_url=CLOSED_PORT_URL))
    client = unreachable.test_client()
    try:
        with caplog.at_level(logging.WARNING):
            for path in ("/api/agents/agent_x/work", "/api/executions"):
                assert_unavailable(client.get(path, headers=bearer("some-token")))
    finally:
        unreachable.extensions["db"].dispose()
    logged = [r for r in caplog.records if r.name == "web.errors"]
    assert logged and all(r.levelno == logging.WARNING and r.exc_info is None for r in logged)
    assert all("database unavailable" in r.getMessage() and "SELECT" not in r.getMessage() for r in logged)
    assert "unhandled error" not in caplog.text


def _raising(app: Flask, exc: BaseException) -> Any:
    def boom() -> None:
        raise exc

    app.add_url_rule("/test/boom", view_func=boom)
    return app.test_client().get("/test/boom")


def _statement_error(cls: type, message: str, **kw: Any) -> Any:
    return cls("SELECT secret FROM agents WHERE id = %(id)s", {"id": "agent_x"}, Exception(message), **kw)


@pytest.mark.parametrize("exc", [
    PoolTimeout("QueuePool limit of size 10 overflow 20 reached, connection timed out, timeout 30.00"),
    _statement_error(OperationalError, "consuming input failed: server closed the connection unexpectedly"),
    _statement_error(OperationalError, "anything", connection_invalidated=True),
    redis_lib.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
], ids=["pool timeout", "connection lost", "invalidated", "redis"])
def test_what_is_out_of_reach_is_a_503(app, exc, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert_unavailable(_raising(app, exc))
    assert "unhandled error" not in caplog.text and "secret" not in caplog.text


@pytest.mark.parametrize("exc", [
    _statement_error(OperationalError, "no such table: agents"),
    _statement_error(IntegrityError, "duplicate key value violates unique constraint"),
], ids=["operational", "integrity"])
def test_any_other_database_error_stays_a_500(app, exc, caplog) -> None:
    resp = _raising(app, exc)
    assert_error(resp, 500, "internal_error")
    assert "Retry-After" not in resp.headers and "secret" not in resp.get_data(as_text=True)
    assert "unhandled error" in caplog.text
    assert not is_unreachable(exc)


# (3) The retry-once logic of `Database.transaction`.

def _lost(message: str = "server closed the connection unexpectedly") -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception(message), connection_invalidated=True)


def _users(db: Database) -> int:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(User))


def test_a_lost_connection_is_retried_once_from_scratch(db) -> None:
    calls: list[int] = []

    def work(session: Any) -> str:
        calls.append(1)
        make_user(session, f"carol_{len(calls)}")
        if len(calls) == 1:
            raise _lost()
        return "done"

    assert db.transaction(work) == "done"
    assert len(calls) == 2 and _users(db) == 1  # the first try's row went with its transaction


def test_a_second_lost_connection_propagates(db) -> None:
    calls: list[int] = []

    def work(_session: Any) -> None:
        calls.append(1)
        raise _lost()

    with pytest.raises(OperationalError) as caught:
        db.transaction(work, attempts=5)
    assert caught.value.connection_invalidated and len(calls) == 2


def test_a_connection_lost_in_the_commits_final_flush_is_retried(db) -> None:
    """The COMMIT never went out: the transaction rolled back whole, like one lost inside `work`."""
    calls: list[int] = []
    failures = [_lost()]

    def fail_once(_session: Any) -> None:
        if failures:
            raise failures.pop()

    def work(session: Any) -> None:
        calls.append(1)
        make_user(session, f"carol_{len(calls)}")

    event.listen(db._sessions, "before_commit", fail_once)
    try:
        db.transaction(work)
    finally:
        event.remove(db._sessions, "before_commit", fail_once)
    assert len(calls) == 2 and _users(db) == 1


def test_a_connection_lost_during_the_commit_is_not_retried(db, monkeypatch) -> None:
    """The COMMIT went out before the connection went: it may have happened, so running the work
    again could do it twice."""
    calls: list[int] = []
    dbapi_error = db.engine.dialect.loaded_dbapi.OperationalError

    def commit(_dbapi_conn: Any) -> None:
        raise dbapi_error("server closed the connection unexpectedly")

    def work(session: Any) -> None:
        calls.append(1)
        make_user(session)

    monkeypatch.setattr(db.engine.dialect, "do_commit", commit)
    with pytest.raises(OperationalError) as caught:
        db.transaction(work)
    monkeypatch.undo()
    assert is_unreachable(caught.value) and len(calls) == 1


def test_a_caller_may_widen_the_retry_to_lost_connections(db) -> None:
    calls: list[int] = []

    def work(_session: Any) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise _lost()
        return len(calls)

    assert db.transaction(work, attempts=3, retry_if=lambda exc: exc.connection_invalidated) == 3


def test_other_errors_are_not_retried(db) -> None:
    calls: list[int] = []

    def work(_session: Any) -> None:
        calls.append(1)
        raise _statement_error(OperationalError, "no such table: agents")

    with pytest.raises(OperationalError):
        db.transaction(work)
    assert len(calls) == 1


def test_connection_loss_is_recognised_without_the_invalidated_flag() -> None:
    from orchestrator.db import is_connection_lost

    for message in ("terminating connection due to administrator command",
                    "consuming input failed: server closed the connection unexpectedly",
                    "the connection is closed"):
        assert is_connection_lost(_statement_error(OperationalError, message))
    refused = _statement_error(OperationalError, 'connection failed: connection to server at "127.0.0.1", port 1 '
                                                 "failed: Connection refused")
    assert not is_connection_lost(refused) and is_unreachable(refused)
    assert not is_unreachable(_statement_error(OperationalError, "database is locked"))
