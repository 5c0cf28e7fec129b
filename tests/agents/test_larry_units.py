"""Larry's parts on their own: the prospects CSV (guide §7's "CSV parsing"), SMTP outcomes against a
real SMTP server, the calendar invite, and the Twilio-style phone provider against a local stub."""

from __future__ import annotations

import json
import multiprocessing
import threading
from base64 import b64decode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from larry import mail, prospects
from larry.config import LarryConfig
from larry.phone import CallFailed, CallRequest, RecordingProvider, TwilioProvider
from orchestrator_sdk import HumanReviewNeeded

from tests.agents.conftest import Mailbox, write_csv
from tests.processes import free_port

ROWS = [("Carol Smith", "Bittersweet Farm", "carol@bittersweet.test", "860-455-9416", "new", "breeder", "fair"),
        ("Dan Ortiz", "Ortiz Kennels", "dan@ortiz.test", "", "contacted", "", "web")]


# -- CSV ------------------------------------------------------------------------------------------

def test_rows_load_with_their_extra_columns_and_duplicates_dropped(tmp_path) -> None:
    path = write_csv(tmp_path / "p.csv", [*ROWS, ("Carol S.", "Bittersweet", "CAROL@Bittersweet.test", "", "", "", "")])
    rows = prospects.load_prospects(path)
    assert [(r.name, r.email, r.status, r.line) for r in rows] == [
        ("Carol Smith", "carol@bittersweet.test", "new", 2), ("Dan Ortiz", "dan@ortiz.test", "contacted", 3)]
    assert rows[0].extra == {"source": "fair"} and rows[0].first_name == "Carol"


def test_every_bad_row_is_reported_with_its_line_number(tmp_path) -> None:
    path = write_csv(tmp_path / "p.csv", [ROWS[0], ("", "Nameless", "x@y.test", "", "new", "", ""),
                                          ("Eve", "Park", "not-an-email", "12", "maybe", "", ""),
                                          ("Fay", "F", "fay@f.test", "", "new", "", "", "surplus")])
    with pytest.raises(prospects.ProspectError) as err:
        prospects.load_prospects(path)
    assert err.value.problems == [
        "line 3: the name is empty", "line 4: 'not-an-email' is not an email address",
        "line 4: '12' is not a phone number",
        f"line 4: status 'maybe' is not one of {', '.join(prospects.STATUSES)}",
        "line 5: more cells than columns"]


@pytest.mark.parametrize("text, problem", [
    ("name,email\nCarol,carol@x.test\n", "line 1: the header lacks business, phone, status, notes"),
    ("", "line 1: the header lacks name, business, email, phone, status, notes"),
])
def test_a_header_without_the_columns_is_refused(text: str, problem: str) -> None:
    with pytest.raises(prospects.ProspectError) as err:
        prospects.parse_prospects(text)
    assert err.value.problems == [problem]


def test_an_unreadable_file_is_an_error_not_a_crash(tmp_path) -> None:
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(prospects.ProspectError, match="cannot read"):
        prospects.load_prospects(tmp_path / "bin.csv")
    with pytest.raises(prospects.ProspectError, match="cannot read"):
        prospects.load_prospects(tmp_path / "missing.csv")


def test_a_status_change_keeps_the_rest_of_the_file_and_leaves_no_temporary_file(tmp_path) -> None:
    path = write_csv(tmp_path / "p.csv", ROWS)
    assert prospects.update_status(path, "CAROL@bittersweet.test", "proposal_sent", "proposal emailed")
    assert not prospects.update_status(path, "nobody@x.test", "contacted")
    text = path.read_text().splitlines()
    assert text[0] == "name,business,email,phone,status,notes,source"
    assert text[1] == "Carol Smith,Bittersweet Farm,carol@bittersweet.test,860-455-9416,proposal_sent," \
                      "breeder; proposal emailed,fair"
    assert text[2] == "Dan Ortiz,Ortiz Kennels,dan@ortiz.test,,contacted,,web"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.csv.lock"]
    with pytest.raises(ValueError):
        prospects.update_status(path, "dan@ortiz.test", "won")


def _bump(path: str, email: str, n: int) -> None:
    for i in range(n):
        prospects.update_status(path, email, "contacted", f"n{i}")


def test_parallel_processes_never_lose_each_others_changes(tmp_path) -> None:
    path = write_csv(tmp_path / "p.csv", ROWS)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(str(path), email, 15)) for email in ("carol@bittersweet.test",
                                                                                  "dan@ortiz.test")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    rows = {r.email: r for r in prospects.load_prospects(path)}
    assert rows["carol@bittersweet.test"].notes.count("; n") == 15  # every change of both processes is there
    assert rows["dan@ortiz.test"].notes.count("n") == 15


# -- SMTP -----------------------------------------------------------------------------------------

@pytest.fixture
def smtp_server():
    box = Mailbox()
    port = free_port()
    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret")

    controller = Controller(box, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    yield box, port, logins
    controller.stop()


def message(to: str) -> Any:
    return mail.build_message("larry@prospecting.test", [to], "Hello", "Hi there")


def test_mail_is_delivered_with_login(smtp_server) -> None:
    box, port, logins = smtp_server
    cfg = LarryConfig(smtp_host="127.0.0.1", smtp_port=port, smtp_user="larry", smtp_password="s3cret")
    mail.send(cfg, message("carol@bittersweet.test"))
    assert [m["To"] for m in box.messages] == ["carol@bittersweet.test"] and logins == [("larry", "s3cret")]


def test_a_refused_recipient_needs_a_person_with_the_guides_options(smtp_server) -> None:
    _, port, _ = smtp_server
    with pytest.raises(HumanReviewNeeded) as err:
        mail.send(LarryConfig(smtp_host="127.0.0.1", smtp_port=port), message("carol@bounce.test"),
                  phone="860-455-9416")
    exc = err.value
    assert exc.error_type == "external_dependency_blocked" and "bounced" in exc.message and "550" in exc.message
    assert exc.next_step_options == ["approve_alternative_email", "approve_phone_call", "skip_task",
                                     "cancel_execution"]
    assert exc.suggestions[1] == "Call directly at 860-455-9416" and "info@bounce.test" in exc.suggestions[0]


def test_an_unreachable_server_is_a_passing_failure() -> None:
    with pytest.raises(mail.MailTemporarilyFailed, match="unreachable"):
        mail.send(LarryConfig(smtp_host="127.0.0.1", smtp_port=free_port()), message("carol@bittersweet.test"),
                  timeout=5)


def test_a_deferred_recipient_is_retried_later() -> None:
    class Deferring(Mailbox):
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                              rcpt_options: list[str]) -> str:
            return "450 4.2.0 Mailbox busy, try again later"

    port = free_port()
    controller = Controller(Deferring(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with pytest.raises(mail.MailTemporarilyFailed, match="deferred"):
            mail.send(LarryConfig(smtp_host="127.0.0.1", smtp_port=port), message("carol@bittersweet.test"))
    finally:
        controller.stop()


def test_smtp_settings_come_from_the_environment() -> None:
    cfg = LarryConfig.from_env({"SMTP_HOST": "mail.test", "SMTP_TLS": "starttls", "SMTP_USER": "u",
                                "SMTP_PASSWORD": "p", "LARRY_FROM": "larry@x.test"})
    assert (cfg.smtp_host, cfg.smtp_port, cfg.smtp_tls, cfg.sender) == ("mail.test", 587, "starttls", "larry@x.test")
    assert LarryConfig.from_env({"SMTP_TLS": "ssl"}).smtp_port == 465
    with pytest.raises(ValueError, match="SMTP_TLS"):
        LarryConfig.from_env({"SMTP_TLS": "tls1.0"})


# -- phone ----------------------------------------------------------------------------------------

def test_the_default_provider_records_the_call_and_says_it_placed_none(tmp_path) -> None:
    out = RecordingProvider().call(CallRequest("+1 860 455 9416", "Discovery call", "Carol", tmp_path / "calls"))
    assert out["call_placed"] is False and "No telephony" in out["note"]
    assert json.loads(Path(out["call_record"]).read_text())["to"] == "+1 860 455 9416"
    assert Path(out["transcript"]).read_text().startswith("# Call with Carol")


def test_the_twilio_provider_posts_the_call_to_the_api(tmp_path) -> None:
    seen: list[tuple[str, dict[str, str], str]] = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append((self.path, dict(self.headers), body))
            status = 201 if "AC123" in self.path else 401
            payload = json.dumps({"sid": "CA42", "status": "queued"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{stub.server_port}"
    try:
        out = TwilioProvider(api, "AC123", "tok", "+15550001111").call(
            CallRequest("+18604559416", "Follow up <proposal>", "Carol", tmp_path))
        path, headers, body = seen[0]
        assert path == "/2010-04-01/Accounts/AC123/Calls.json"
        assert b64decode(headers["Authorization"].split()[1]) == b"AC123:tok"
        assert "To=%2B18604559416" in body and "From=%2B15550001111" in body and "%26lt%3Bproposal" in body
        assert (out["call_placed"], out["call_sid"], out["call_status"]) == (True, "CA42", "queued")
        with pytest.raises(CallFailed, match="401"):
            TwilioProvider(api, "ACbad", "tok", "+1555").call(CallRequest("+1860", "x", None, tmp_path))
    finally:
        stub.shutdown()


# -- the command ----------------------------------------------------------------------------------

def test_larry_prospect_refuses_a_bad_csv_with_its_line_numbers(tmp_path, capsys, monkeypatch) -> None:
    from larry.cli import main

    path = write_csv(tmp_path / "p.csv", [ROWS[0], ("Eve", "Park", "eve-at-park", "", "new", "", "")])
    assert main(["prospect", str(path), "--server", "http://127.0.0.1:1", "--token", "t"]) == 2
    assert "line 3: 'eve-at-park' is not an email address" in capsys.readouterr().err
    monkeypatch.delenv("ORCHESTRATOR_TOKEN", raising=False)
    assert main(["prospect", str(path), "--server", "http://127.0.0.1:1"]) == 2  # no token
    write_csv(path, ROWS)
    assert main(["prospect", str(path), "--server", f"http://127.0.0.1:{free_port()}", "--token", "t",
                 "--workspace", str(tmp_path / "ws")]) == 1
    assert "cannot reach" in capsys.readouterr().err
