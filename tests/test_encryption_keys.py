"""Encryption at rest over a database's life: migration 0006 encrypting what is stored (and its downgrade
decrypting it), and `orchestrator keys rotate` moving every value to a new key while older processes run on."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import migrations
from orchestrator.db import Database
from orchestrator.encryption import EncryptionKeyError, Keyring, new_key
from orchestrator.encryption_keys import add_key, check_keys, encrypted_columns, reencrypt
from orchestrator.event_log import record_event
from orchestrator.models import ExecutionEvent, ExecutionSubtask, ExecutionTask, Plan, PlanSubtask, utcnow
from orchestrator.models.base import JSONType
from orchestrator.settings import Settings, read_encryption_keys
from tests.conftest import settings_env
from tests.database_dump import database_dump
from tests.factories import block_subtask, make_execution, make_user

ROOT = Path(__file__).resolve().parent.parent
EMAIL, PHONE = "carol@bittersweet-farm.com", "555-867-9416"
N_EVENTS = 2001


@pytest.fixture
def scratch(scratch_url: str, tmp_path: Path, redis_url: str) -> Iterator[Settings]:  # noqa: F811
    """An empty database of the suite's kind with a data folder (and key file) of its own, migrated."""
    settings = Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": scratch_url,
                                  "REDIS_URL": redis_url, "SECRET_KEY": "scratch-secret"})
    yield settings


def _populate(db: Database, n_events: int = 3) -> str:
    """A blocked execution and its events, every encrypted column holding an email or a phone number."""
    with db.unit_of_work() as s:
        ex = make_execution(s, make_user(s), status="RUNNING", n_subtasks=2)
        s.get(Plan, ex.plan_id).context = {"owner": EMAIL}
        block_subtask(s, ex.id, "task_0_a", error=f"{EMAIL} bounced")
        for i in range(n_events):
            record_event(s, ex.id, "note", utcnow(), message=f"call {PHONE} #{i}", output_data={"to": EMAIL, "i": i})
        return ex.id


def _snapshot(db: Database) -> dict[str, Any]:
    """Every encrypted value as the application reads it."""
    with db.reading() as s:
        return {
            "plans": sorted((p.id, json.dumps(p.context)) for p in s.scalars(sa.select(Plan))),
            "params": sorted((p.id, json.dumps(p.params)) for p in s.scalars(sa.select(PlanSubtask))),
            "tasks": sorted((t.id, t.error_message, json.dumps(t.suggestions), json.dumps(t.next_step_options))
                            for t in s.scalars(sa.select(ExecutionTask))),
            "subtasks": sorted((t.id, t.error, json.dumps(t.result_data))
                               for t in s.scalars(sa.select(ExecutionSubtask))),
            "events": sorted((e.id, e.message, json.dumps(e.output_data))
                             for e in s.scalars(sa.select(ExecutionEvent))),
        }


def _tokens(db: Database) -> list[str]:
    """Every stored value of every encrypted column, as the database holds it."""
    found = []
    with db.engine.connect() as conn:
        for table, cols in encrypted_columns():
            raw = sa.table(table.name, *(sa.column(c.name, sa.Text()) for c in cols))
            for row in conn.execute(sa.select(raw)):
                found += [v for v in row if v is not None]
    return found


def _keys_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "keys", *args], env=settings_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_rotate_moves_every_value_to_a_new_key_then_drops_the_old(scratch: Settings) -> None:
    migrations.upgrade(scratch.database_url)
    db, reader, writer = Database(scratch), Database(scratch), Database(scratch)  # three processes' keyrings
    try:
        check_keys(db)
        _populate(db)
        before = _snapshot(db)
        first = scratch.encryption_keys[0]

        done = _keys_cli(scratch, "rotate", "--grace", "0")
        assert done.returncode == 0, done.stderr
        assert "plans: 1/1 rows, 1 values re-encrypted" in done.stdout
        assert "execution_events: 4/4 rows, 8 values re-encrypted" in done.stdout, done.stdout
        keys = read_encryption_keys(scratch.encryption_key_file)
        assert len(keys) == 2 and keys[1] == first
        assert all(Keyring(keys[:1]).is_current(t) for t in _tokens(db))
        # A process that started before the rotation reads the re-encrypted rows (it reloads the file)...
        assert _snapshot(reader) == before and reader.keyring.keys == keys
        # ...and one that writes encrypts under the new key once it has looked at the file again.
        writer.keyring.reload_every = 0
        with writer.unit_of_work() as s:
            record_event(s, _any_execution(s), "note", utcnow(), message=f"late {EMAIL}")
        before = _snapshot(db)

        dropped = _keys_cli(scratch, "rotate", "--resume", "--drop-old", "--grace", "0")
        assert dropped.returncode == 0, dropped.stderr
        assert "dropped 1 older keys" in dropped.stdout
        assert read_encryption_keys(scratch.encryption_key_file) == keys[:1]
        only_new = Keyring(keys[:1])
        assert all(only_new.decrypt(t) for t in _tokens(db))
        assert _snapshot(reader) == before
        again = _keys_cli(scratch, "rotate", "--resume")
        assert again.returncode == 0 and "done: 0 values re-encrypted" in again.stdout
    finally:
        for d in (db, reader, writer):
            d.dispose()


def _any_execution(s: sa.orm.Session) -> str:
    return s.scalar(sa.select(ExecutionEvent.execution_id).limit(1))


def test_an_interrupted_rotation_resumes_where_it_stopped(scratch: Settings) -> None:
    migrations.upgrade(scratch.database_url)
    db = Database(scratch)
    try:
        _populate(db, n_events=20)
        before = _snapshot(db)
        add_key(db.keyring)
        batches = []

        def stop_after_two(table: str, done: int, total: int, rotated: int) -> None:
            batches.append(table)
            if table == "execution_events" and len([b for b in batches if b == table]) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            reencrypt(db, batch_size=5, progress=stop_after_two)
        newest = Keyring(db.keyring.keys[:1])
        current = [newest.is_current(t) for t in _tokens(db)]
        assert any(current) and not all(current)
        assert _snapshot(db) == before  # half-rotated, all readable
        moved = reencrypt(db, batch_size=5)
        assert moved == current.count(False)
        assert all(newest.is_current(t) for t in _tokens(db))
        assert reencrypt(db, batch_size=5) == 0
    finally:
        db.dispose()


def test_a_write_made_while_a_batch_rotates_is_kept(scratch: Settings) -> None:
    """A worker that writes a value between the rotation's read and its update wins: the update applies
    only while the value is the one it read. (SQLite's write lock lets nobody in between: PostgreSQL only.)"""
    if scratch.is_sqlite:
        pytest.skip("on SQLite a rotation batch holds the write lock from its read to its commit")
    migrations.upgrade(scratch.database_url)
    db, worker = Database(scratch), Database(scratch)
    worker.keyring.reload_every = float("inf")  # a worker that has not looked at the key file since
    try:
        _populate(db, n_events=1)
        stored = len(_tokens(db))
        add_key(db.keyring)
        newest = Keyring(db.keyring.keys[:1])
        with db.engine.connect() as conn:
            note, token = conn.execute(sa.text("SELECT id, message FROM execution_events "
                                               "WHERE event_type = 'note'")).one()
        rotate = db.keyring.rotate

        def rotate_while_the_worker_writes(value: str) -> str:
            if value == token:  # the batch has read the note and is about to update it
                with worker.unit_of_work() as s:
                    s.get(ExecutionEvent, note).message = f"rewritten {PHONE}"
            return rotate(value)

        db.keyring.rotate = rotate_while_the_worker_writes  # type: ignore[method-assign]
        assert reencrypt(db) == stored - 1  # every value but the one the worker rewrote meanwhile
        db.keyring.rotate = rotate  # type: ignore[method-assign]
        with db.reading() as s:
            assert s.get(ExecutionEvent, note).message == f"rewritten {PHONE}"
        assert [t for t in _tokens(db) if not newest.is_current(t)] != []  # the worker's, under the old key
        assert reencrypt(db) == 1
        assert all(newest.is_current(t) for t in _tokens(db))
    finally:
        db.dispose()
        worker.dispose()


def test_rotate_refuses_keys_that_cannot_read_the_database(scratch: Settings) -> None:
    migrations.upgrade(scratch.database_url)
    db = Database(scratch)
    try:
        check_keys(db)
    finally:
        db.dispose()
    scratch.encryption_key_file.write_text(new_key() + "\n")  # the key file lost and made anew
    done = _keys_cli(scratch, "rotate")
    assert done.returncode == 1 and "cannot read this database" in done.stderr
    given = _keys_cli(scratch.replace(encryption_keys=(new_key(),), encryption_key_file=None), "rotate")
    assert given.returncode == 1


# -- migration 0006 ----------------------------------------------------------------------------------------

def _json_table(name: str, *json_cols: str, text_cols: tuple[str, ...] = (), other: tuple[str, ...] = ()) -> Any:
    return sa.table(name, *(sa.column(c) for c in other), *(sa.column(c, JSONType) for c in json_cols),
                    *(sa.column(c, sa.Text()) for c in text_cols))


def _seed_before_0006(url: str) -> dict[str, Any]:
    """Rows as revision 0005 stored them: plaintext JSON and text."""
    t0 = utcnow()
    stored = {"context": {"owner": EMAIL}, "params": {"to": EMAIL, "phone": PHONE},
              "message": f"call {PHONE}", "output_data": {"reply": EMAIL}, "suggestions": [f"Call {PHONE}"]}
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            t0 = t0.replace(tzinfo=None)
        conn.execute(sa.text("INSERT INTO users (id, username, is_admin, is_active, created_at) "
                             "VALUES ('u', 'u', false, true, :t)"), {"t": t0})
        conn.execute(_json_table("plans", "context", other=("id", "goal", "owner_id", "source", "created_at"))
                     .insert().values(id="p", goal="g", owner_id="u", source="api", created_at=t0,
                                      context=stored["context"]))
        conn.execute(sa.text("INSERT INTO plan_tasks (plan_id, id, position, title, description, priority, decomposed, "
                             "prerequisite_task_ids, is_blocking, created_at) "
                             "VALUES ('p', 't', 0, 'T', '', 1, false, '[]', false, :t)"), {"t": t0})
        conn.execute(_json_table("plan_subtasks", "params", "retry_policy", "prerequisite_subtask_ids",
                                 "success_criteria", other=("plan_id", "id", "task_id", "position", "title",
                                                            "timeout_hours", "created_at"))
                     .insert().values(plan_id="p", id="s", task_id="t", position=0, title="S", timeout_hours=1,
                                      created_at=t0, params=stored["params"], retry_policy={},
                                      prerequisite_subtask_ids=[], success_criteria=[]))
        conn.execute(sa.text("INSERT INTO executions (id, plan_id, owner_id, status, status_message, tasks_total, "
                             "tasks_completed, pause_requested, cancel_requested, created_at) "
                             "VALUES ('x', 'p', 'u', 'BLOCKED', :m, 1, 0, false, false, :t)"),
                     {"t": t0, "m": f"Blocked: {EMAIL} bounced"})
        events = _json_table("execution_events", "output_data", "suggestions", "outcome", text_cols=("message",),
                             other=("id", "execution_id", "source", "event_type", "human_review_required",
                                    "timestamp"))
        # More rows than one of 0006's batches (1,000), so that it pages through them.
        conn.execute(events.insert(), [
            {"id": f"evt_{i:04d}", "execution_id": "x", "source": "agent", "event_type": "note",
             "human_review_required": False, "timestamp": t0, "message": stored["message"],
             "output_data": stored["output_data"] if i else None, "suggestions": stored["suggestions"],
             "outcome": {"status": "BLOCKED"}} for i in range(N_EVENTS)])
    engine.dispose()
    return stored


def test_0006_encrypts_what_is_stored_and_its_downgrade_decrypts_it(scratch: Settings) -> None:
    url = scratch.database_url
    migrations.upgrade(url, "0005")
    stored = _seed_before_0006(url)
    assert EMAIL.encode() in database_dump(url)  # the dump would show them before 0006
    keyring = Keyring.from_settings(scratch)
    migrations.upgrade(url, "0006", keyring=keyring)
    dump = database_dump(url)
    assert EMAIL.encode() not in dump and PHONE.encode() not in dump
    db = Database(scratch)
    try:
        check_keys(db)  # 0006 wrote the check row under the keys it encrypted with
        with db.reading() as s:
            assert s.get(Plan, "p").context == stored["context"]
            assert s.get(PlanSubtask, ("p", "s")).params == stored["params"]
            events = s.scalars(sa.select(ExecutionEvent).order_by(ExecutionEvent.id)).all()
            assert [(e.message, e.output_data, e.suggestions, e.outcome) for e in events] == [
                (stored["message"], stored["output_data"] if i else None, stored["suggestions"], {"status": "BLOCKED"})
                for i in range(N_EVENTS)]
        with db.engine.connect() as conn:  # the JSON null the old type stored for None is SQL NULL now
            assert conn.scalar(sa.text("SELECT output_data FROM execution_events WHERE id = 'evt_0000'")) is None
        with pytest.raises(EncryptionKeyError):
            check_keys(Database(scratch.replace(encryption_keys=(new_key(),), encryption_key_file=None)))
    finally:
        db.dispose()
    migrations.upgrade(url, keyring=keyring)  # on to head: what `check` compares with the models
    migrations.check(url)

    with pytest.raises(EncryptionKeyError):  # wrong keys: the downgrade fails whole, nothing changed
        migrations.downgrade(url, "0005", keyring=Keyring([new_key()]))
    assert EMAIL.encode() not in database_dump(url)
    migrations.downgrade(url, "0005", keyring=keyring)
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert conn.scalar(sa.select(_json_table("plans", "context").c.context)) == stored["context"]
            assert conn.scalar(sa.select(_json_table("plan_subtasks", "params").c.params)) == stored["params"]
            assert conn.scalar(sa.text("SELECT status_message FROM executions")) == f"Blocked: {EMAIL} bounced"
            ev = _json_table("execution_events", "output_data", "suggestions", text_cols=("message",), other=("id",))
            assert conn.execute(sa.select(ev.c.message, ev.c.output_data, ev.c.suggestions)
                                .where(ev.c.id == "evt_0001")).one() == (stored["message"], stored["output_data"],
                                                                      stored["suggestions"])
            assert not sa.inspect(conn).has_table("encryption_check")
    finally:
        engine.dispose()
    migrations.upgrade(url, keyring=keyring)
    migrations.check(url)
