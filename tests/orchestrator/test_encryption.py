"""The keyring, the encrypted column types on the suite's database, and the startup check of the keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from orchestrator.db import Database, make_engine
from orchestrator.encryption import EncryptionKeyError, Keyring, new_key
from orchestrator.encryption_keys import add_key, check_keys
from orchestrator.models import ExecutionEvent, Plan
from orchestrator.settings import Settings, read_encryption_keys
from tests.factories import make_execution, make_user

EMAIL = "carol@bittersweet-farm.com"


def test_round_trip_and_older_keys() -> None:
    old, new = new_key(), new_key()
    token = Keyring([old]).encrypt(EMAIL.encode())
    assert EMAIL not in token and token.startswith("gAAAAA")
    both = Keyring([new, old])
    assert both.decrypt(token) == EMAIL.encode()
    assert not both.is_current(token)
    rotated = both.rotate(token)
    assert both.is_current(rotated) and Keyring([new]).decrypt(rotated) == EMAIL.encode()
    with pytest.raises(EncryptionKeyError, match="cannot be decrypted"):
        Keyring([new_key()]).decrypt(token)
    with pytest.raises(EncryptionKeyError, match="cannot be decrypted"):
        both.decrypt(EMAIL)  # a plaintext value is refused, never passed through


@pytest.mark.parametrize("keys", [[], ["not-a-key"], [new_key(), "x" * 44]])
def test_keys_that_are_not_fernet_keys_are_refused(keys: list[str]) -> None:
    with pytest.raises(EncryptionKeyError, match="Fernet key|no encryption key"):
        Keyring(keys)


def test_settings_generate_a_key_file_once_and_take_the_environment_first(tmp_path: Path) -> None:
    env = {"ORCHESTRATOR_DATA_DIR": str(tmp_path), "SECRET_KEY": "s"}
    first = Settings.from_env(env)
    assert first.encryption_key_file == tmp_path / "encryption_keys"
    assert (tmp_path / "encryption_keys").stat().st_mode & 0o777 == 0o600
    Fernet(first.encryption_keys[0])  # a real key
    assert Settings.from_env(env).encryption_keys == first.encryption_keys
    given = f"{new_key()}, {new_key()}"
    from_env = Settings.from_env({**env, "ENCRYPTION_KEYS": given})
    assert from_env.encryption_keys == tuple(k.strip() for k in given.split(","))
    assert from_env.encryption_key_file is None


def test_a_keyring_follows_its_key_file(tmp_path: Path) -> None:
    settings = Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path), "SECRET_KEY": "s"})
    rotating, reader = Keyring.from_settings(settings), Keyring.from_settings(settings)
    writer = Keyring(settings.encryption_keys, settings.encryption_key_file, reload_every=0)
    add_key(rotating)
    keys = read_encryption_keys(tmp_path / "encryption_keys")
    assert keys[1:] == settings.encryption_keys and rotating.keys == keys
    # A reader meeting a token under the new key reads the file again; a writer looks at it as it writes.
    assert reader.decrypt(rotating.encrypt(b"x")) == b"x" and reader.keys == keys
    assert Keyring(keys[:1]).is_current(writer.encrypt(b"y"))


def test_encrypted_columns_hold_tokens_and_read_back(db: Database) -> None:
    context = {"owner_email": EMAIL, "phone": "555-867-9416", "nested": [1, 2.5, True, None, {"é": "ü"}]}
    with db.unit_of_work() as s:
        owner = make_user(s)
        ex = make_execution(s, owner)
        s.get(Plan, ex.plan_id).context = context
        s.add(ExecutionEvent(id="evt_enc_1", execution_id=ex.id, event_type="note", message=f"mail {EMAIL}",
                             output_data=None))
        plan_id = ex.plan_id
    with db.reading() as s:
        assert s.get(Plan, plan_id).context == context
        ev = s.get(ExecutionEvent, "evt_enc_1")
        assert (ev.message, ev.output_data) == (f"mail {EMAIL}", None)
        raw = s.execute(text("SELECT message, output_data FROM execution_events WHERE id = 'evt_enc_1'")).one()
        raw_context = s.scalar(text("SELECT context FROM plans WHERE id = :id"), {"id": plan_id})
        assert s.scalar(select(ExecutionEvent.id).where(ExecutionEvent.output_data.is_(None),
                                                        ExecutionEvent.id == "evt_enc_1")) == "evt_enc_1"
    assert raw.output_data is None  # None is SQL NULL, not an encrypted "null"
    for stored in (raw.message, raw_context):
        assert stored.startswith("gAAAAA") and EMAIL not in stored and "9416" not in stored


def test_sql_cannot_compare_or_order_an_encrypted_column() -> None:
    for build in (lambda: ExecutionEvent.message == "x", lambda: Plan.context.like("%x%"),
                  lambda: ExecutionEvent.output_data.desc(), lambda: ExecutionEvent.message.in_(["x"])):
        with pytest.raises(TypeError, match="is encrypted"):
            build()


def test_a_core_select_of_an_encrypted_column_runs_again_from_the_statement_cache(db: Database) -> None:
    # On a cache hit SQLAlchemy maps the new statement's columns onto the cached result map, comparing
    # columns with `==`: the comparator must let column-to-column through (bench/faults.py fell here).
    with db.unit_of_work() as s:
        ex = make_execution(s, make_user(s))
        s.add(ExecutionEvent(id="evt_enc_2", execution_id=ex.id, event_type="note", message=f"mail {EMAIL}"))
    for _ in range(3):
        with db.engine.connect() as c:
            rows = c.execute(select(ExecutionEvent.id, ExecutionEvent.message, ExecutionEvent.outcome)
                             .where(ExecutionEvent.id == "evt_enc_2")).all()
        assert [tuple(r) for r in rows] == [("evt_enc_2", f"mail {EMAIL}", None)]
    with pytest.raises(TypeError, match="is encrypted"):
        ExecutionEvent.message != "x"  # noqa: B015 - building it is what raises


def test_an_engine_without_keys_refuses_encrypted_columns(db: Database, migrated: Settings) -> None:
    with db.unit_of_work() as s:
        plan_id = make_execution(s, make_user(s)).plan_id
    engine = make_engine(migrated.database_url, immediate=False)
    try:
        with Session(engine) as s, pytest.raises(EncryptionKeyError, match="no encryption keys"):
            s.get(Plan, plan_id)
    finally:
        engine.dispose()


def _app_with(settings: Settings):
    from web.app import create_app

    return create_app(settings)


def test_keys_that_cannot_read_the_database_stop_the_start(db: Database, migrated: Settings, tmp_path: Path,
                                                           redis) -> None:
    check_keys(db)  # the suite's keys: the check row is written (or read) under them
    other = migrated.replace(encryption_keys=(new_key(),), encryption_key_file=None)
    with pytest.raises(EncryptionKeyError, match="cannot read this database"):
        _app_with(other)
    # A lost key file: a fresh one is generated, as on a first start, and refused here too.
    lost = Settings.from_env({"ORCHESTRATOR_DATA_DIR": str(tmp_path), "DATABASE_URL": migrated.database_url,
                              "REDIS_URL": migrated.redis_url or "", "SECRET_KEY": migrated.secret_key})
    with pytest.raises(EncryptionKeyError, match="cannot read this database"):
        _app_with(lost)
    with pytest.raises(EncryptionKeyError, match="not a Fernet key"):
        _app_with(migrated.replace(encryption_keys=("garbage",), encryption_key_file=None))
    app = _app_with(migrated)  # the right keys start
    app.extensions["db"].dispose()
