"""Sending mail through SMTP (`smtplib`), and what its failures mean for the subtask.

A refusal (the server refuses the recipient, or answers 5xx: a bounce) will not change on retry: a
person has to decide, so it becomes a blocking `HumanReviewNeeded` with suggestions and the guide's
next-step options. Anything passing (a 4xx, a connection that fails or drops) is `MailTemporarilyFailed`,
an ordinary error that the subtask's retry policy tries again.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from orchestrator_sdk import HumanReviewNeeded

from larry.config import LarryConfig

BOUNCE_OPTIONS = ["approve_alternative_email", "approve_phone_call", "skip_task", "cancel_execution"]


class MailTemporarilyFailed(Exception):  # noqa: N818 - reads as what happened
    """A transient failure (4xx, connection): the retry policy sends again."""


def build_message(sender: str, to: list[str], subject: str, body: str, *, cc: list[str] | None = None,
                  attachments: list[tuple[str, bytes, str]] | None = None) -> EmailMessage:
    """A message; `attachments` are (filename, content, MIME type such as "text/calendar; method=REQUEST")."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(to), subject
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Date"], msg["Message-ID"] = formatdate(localtime=False), make_msgid(domain=sender.split("@")[-1])
    msg.set_content(body)
    for filename, content, mime in attachments or []:
        maintype, _, rest = mime.partition("/")
        subtype, *params = [p.strip() for p in rest.split(";")]
        extra = dict(p.split("=", 1) for p in params if "=" in p)
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename, params=extra)
    return msg


def _connect(cfg: LarryConfig, timeout: float) -> smtplib.SMTP:
    if cfg.smtp_tls == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=timeout,
                                              context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout)
        if cfg.smtp_tls == "starttls":
            smtp.starttls(context=ssl.create_default_context())
    if cfg.smtp_user and cfg.smtp_password:
        smtp.login(cfg.smtp_user, cfg.smtp_password)
    return smtp


def send(cfg: LarryConfig, msg: EmailMessage, *, phone: str | None = None, timeout: float = 30.0) -> None:
    """Send `msg`; raise `HumanReviewNeeded` on a refusal, `MailTemporarilyFailed` on a passing failure."""
    to = msg.get_all("To", []) + msg.get_all("Cc", [])
    try:
        with _connect(cfg, timeout) as smtp:
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()), (550, b""))
        if code < 500:
            raise MailTemporarilyFailed(f"recipient deferred ({code})") from exc
        raise refused(", ".join(exc.recipients), code, reply, phone) from exc
    except smtplib.SMTPAuthenticationError as exc:  # settings to fix, not an address
        raise HumanReviewNeeded(f"The SMTP server refused Larry's login ({exc.smtp_code}): check SMTP_USER and "
                                "SMTP_PASSWORD, then retry.", ["Fix the SMTP credentials and retry"],
                                error_type="configuration_error",
                                next_step_options=["retry_task", "skip_task", "cancel_execution"]) from exc
    except smtplib.SMTPResponseException as exc:  # sender refused, data refused...
        if exc.smtp_code >= 500:
            raise refused(", ".join(to), exc.smtp_code, exc.smtp_error, phone) from exc
        raise MailTemporarilyFailed(f"the SMTP server answered {exc.smtp_code}") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise MailTemporarilyFailed(f"SMTP server unreachable: {type(exc).__name__}: {exc}") from exc


def refused(address: str, code: int, reply: bytes | str, phone: str | None) -> HumanReviewNeeded:
    """The guide's bounce: a blocking error with what a person could do next."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    domain = address.split("@")[-1] if "@" in address else None
    suggestions = [f"Try an alternative email address (e.g. info@{domain} from the website footer)"
                   if domain else "Try an alternative email address"]
    suggestions.append(f"Call directly at {phone}" if phone else "Find a phone number and call instead")
    suggestions.append("Find the email address via LinkedIn or Facebook")
    return HumanReviewNeeded(
        f"The email address ({address}) bounced: the server refused it ({code} {text}). Invalid or deactivated.",
        suggestions, error_type="external_dependency_blocked", next_step_options=BOUNCE_OPTIONS,
        detail="Unable to send email. Contact verification needed.")
