"""Assertions shared by the API tests."""

from __future__ import annotations


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_json()
    err = resp.get_json()["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str)
    if code:
        assert err["code"] == code
    return err
