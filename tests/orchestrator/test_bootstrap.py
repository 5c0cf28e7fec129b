from __future__ import annotations

from sqlalchemy import select

from orchestrator.bootstrap import ensure_admin
from orchestrator.credentials import check_password, find_credential
from orchestrator.db import Database
from orchestrator.models import User


def test_admin_token_creates_then_rotates(db: Database) -> None:
    ensure_admin(db, "admin", "tok-one", password="pw-1")
    ensure_admin(db, "admin", "tok-one")  # idempotent
    with db.reading() as s:
        users = s.scalars(select(User)).all()
        assert [u.username for u in users] == ["admin"] and users[0].is_admin
        assert find_credential(s, "tok-one").user_id == users[0].id
        assert check_password(users[0], "pw-1") and not check_password(users[0], "pw-2")
    ensure_admin(db, "admin", "tok-two")
    with db.reading() as s:
        assert find_credential(s, "tok-one") is None  # the old env token no longer works
        assert find_credential(s, "tok-two") is not None
