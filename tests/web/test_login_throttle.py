"""The dashboard's login over HTTP: throttled per username and per client address (429 with
Retry-After), the same work for unknown and known usernames, and hostile forms answered 4xx."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

import orchestrator.credentials
import orchestrator.users
from orchestrator.credentials import hash_password
from tests.conftest import make_test_app
from tests.factories import make_user

PER_USERNAME = 3
PER_ADDRESS = 5


APP_SETTINGS = {"login_rate_limit_per_username": f"{PER_USERNAME}/minute",  # the `app` fixture's
                "login_rate_limit_per_address": f"{PER_ADDRESS}/minute"}


def make_app(settings):
    """Another web process on the same settings."""
    return make_test_app(settings.replace(**APP_SETTINGS))


@pytest.fixture
def users(db) -> None:
    with db.unit_of_work() as s:
        make_user(s, "mark", password_hash=hash_password("right-password"))
        make_user(s, "eve", password_hash=hash_password("eves-password"))
        make_user(s, "nopass")  # made without a password: can never log in


def csrf(client) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/login").get_data(as_text=True))
    assert match
    return match.group(1)


def login(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login", data={"username": username, "password": password, "csrf_token": csrf(client)},
                       environ_base={"REMOTE_ADDR": address})


def test_a_username_is_throttled_from_any_address(client, users) -> None:
    for n in range(PER_USERNAME):
        assert login(client, "mark", "wrong", address=f"10.0.1.{n}").status_code == 401
    refused = login(client, "mark", "right-password", address="10.0.1.99")
    assert refused.status_code == 429
    assert "Too many attempts" in refused.get_data(as_text=True)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert client.get("/executions").status_code == 302  # not logged in
    assert login(client, "eve", "eves-password", address="10.0.1.99").status_code == 302


def test_a_username_is_counted_whatever_its_case_and_spaces(client, users) -> None:
    for name in ("mark", "MARK", " Mark "):
        assert login(client, name, "wrong").status_code == 401
    assert login(client, "mArk", "right-password").status_code == 429


def test_an_address_is_throttled_for_any_username(client, users) -> None:
    for n in range(PER_ADDRESS):
        assert login(client, f"someone{n}", "wrong", address="10.0.2.1").status_code == 401
    assert login(client, "mark", "right-password", address="10.0.2.1").status_code == 429
    assert login(client, "mark", "right-password", address="10.0.2.2").status_code == 302


def test_two_web_processes_share_the_count(migrated, client, users) -> None:
    other = make_app(migrated).test_client()
    try:
        statuses = [login([client, other][n % 2], "mark", "wrong").status_code for n in range(PER_USERNAME + 1)]
    finally:
        other.application.extensions["db"].dispose()
    assert statuses == [401] * PER_USERNAME + [429]


@pytest.fixture
def hash_checks(monkeypatch) -> list[str]:
    """Every password hash verification made, wherever it is made."""
    calls: list[str] = []
    real = orchestrator.users.check_password_hash

    def spy(pwhash: str, password: str) -> bool:
        calls.append(password)
        return real(pwhash, password)

    monkeypatch.setattr(orchestrator.users, "check_password_hash", spy)
    monkeypatch.setattr(orchestrator.credentials, "check_password_hash", spy)
    return calls


@pytest.mark.parametrize(("username", "password", "status"), [
    ("mark", "right-password", 302),
    ("mark", "wrong", 401),
    ("nobody", "wrong", 401),
    ("nopass", "wrong", 401),
    ("mark\x00", "wrong", 401),
    ("\u202emark", "wrong", 401),
])
def test_known_and_unknown_usernames_cost_one_hash_check_each(client, users, hash_checks, username: str,
                                                              password: str, status: int) -> None:
    """The same work, hence the same time, whether the username exists or not (checked by counting the
    hash verifications, not by timing)."""
    assert login(client, username, password).status_code == status
    assert hash_checks == [password]


def test_a_throttled_attempt_costs_no_hash_check(client, users, hash_checks) -> None:
    for _ in range(PER_USERNAME):
        login(client, "mark", "wrong")
    hash_checks.clear()
    assert login(client, "mark", "right-password").status_code == 429
    assert hash_checks == []


MEGABYTE = "x" * (1024 * 1024)
FORM = "application/x-www-form-urlencoded"


def body(username: str, password: str = "pw", extra: str = "") -> str:
    return f"username={username}&password={password}&csrf_token=@{extra}"


MULTIPART = "".join(f'--XyZ\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                    for name, value in [("username", MEGABYTE), ("password", "pw"), ("csrf_token", "@")])
MULTIPART += "--XyZ--\r\n"

# (body with "@" for the CSRF token, content type)
HOSTILE = {
    "nul_in_username": (body("admin%00"), FORM),
    "nul_in_password": (body("admin", "pw%00"), FORM),
    "nul_alone": (body("%00", "%00"), FORM),
    "lone_surrogate_bytes": (body("%ED%A0%80", "%ED%A0%80"), FORM),
    "invalid_utf8": (body("%FF%FE", "%C3"), FORM),
    "megabyte_username": (body(MEGABYTE), FORM),
    "megabyte_password": (body("admin", MEGABYTE), FORM),
    "missing_username": ("password=pw&csrf_token=@", FORM),
    "missing_password": ("username=admin&csrf_token=@", FORM),
    "missing_everything": ("", FORM),
    "repeated_fields": (body("admin", "pw", "&username=mark&password=other&username=eve"), FORM),
    "empty_values": (body("", ""), FORM),
    "json": ('{"username": "admin", "password": "pw", "csrf_token": "@"}', "application/json"),
    "plain_text": (body("admin"), "text/plain"),
    "multipart_without_boundary": (body("admin"), "multipart/form-data"),
    "xml": ("<login><username>admin</username></login>", "application/xml"),
    "no_content_type": (body("admin"), None),
    "percent_garbage": ("username=%%%&password=%zz&csrf_token=@", FORM),
    "multipart_megabyte_field": (MULTIPART, "multipart/form-data; boundary=XyZ"),
    "multipart_truncated": (MULTIPART[:200], "multipart/form-data; boundary=XyZ"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_login_forms_are_answered_4xx(client, users, name: str) -> None:
    raw, content_type = HOSTILE[name]
    data = raw.replace("@", quote(csrf(client)))
    resp = client.post("/login", data=data.encode("utf-8"), content_type=content_type)
    assert 400 <= resp.status_code < 500, resp.status_code
    assert client.get("/executions").status_code == 302  # nobody logged in


def test_the_hostile_list_holds_when_throttled_too(client, users) -> None:
    for name in sorted(HOSTILE):
        raw, content_type = HOSTILE[name]
        resp = client.post("/login", data=raw.replace("@", quote(csrf(client))).encode(), content_type=content_type)
        assert 400 <= resp.status_code < 500, (name, resp.status_code)


def test_forms_that_do_not_parse_leave_the_counts_in_redis(migrated, client, users) -> None:
    """A body the login cannot parse is the client's error, not Redis's: counting goes on in Redis,
    where another web process sees it."""
    for name in ("multipart_megabyte_field", "multipart_truncated", "json"):
        raw, content_type = HOSTILE[name]
        resp = client.post("/login", data=raw.replace("@", quote(csrf(client))).encode(), content_type=content_type,
                           environ_base={"REMOTE_ADDR": "10.0.9.1"})
        assert 400 <= resp.status_code < 500, (name, resp.status_code)
    for n in range(PER_USERNAME):
        assert login(client, "mark", "wrong", address=f"10.0.8.{n}").status_code == 401
    other = make_app(migrated)
    try:
        assert login(other.test_client(), "mark", "right-password", address="10.0.8.99").status_code == 429
    finally:
        other.extensions["db"].dispose()
