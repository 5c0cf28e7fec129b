"""Fixtures shared by the API tests."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.factories import make_user_with_token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class People:
    """Mark and Eve, two operators, and Root, an admin: their user ids and API tokens."""

    mark_id: str
    eve_id: str
    tokens: dict[str, str]

    def headers(self, **more_tokens: str) -> dict[str, dict[str, str]]:
        """Authorization headers by name: "mark", "eve", "admin", and any token passed by name."""
        return {name: bearer(token) for name, token in {**self.tokens, **more_tokens}.items()}


@pytest.fixture
def people(db) -> People:
    with db.unit_of_work() as s:
        mark, mark_token = make_user_with_token(s, "mark")
        eve, eve_token = make_user_with_token(s, "eve")
        root, admin_token = make_user_with_token(s, "root")
        root.is_admin = True
    return People(mark.id, eve.id, {"mark": mark_token, "eve": eve_token, "admin": admin_token})
