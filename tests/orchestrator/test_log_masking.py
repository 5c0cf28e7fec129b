"""The logging filter: what a handler writes is masked, whatever the record carried and wherever it came from."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from orchestrator.log_masking import MaskingFilter, install_log_masking

EMAIL, PHONE, PASSWORD = "carol@bittersweet-farm.com", "860-455-9416", "hunter2-secret"
KEY = "agt_" + "k" * 43


@pytest.fixture
def stream_handler() -> Iterator[tuple[logging.Handler, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    parent = logging.getLogger("masking_test")
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    yield handler, out
    parent.removeHandler(handler)


def _leaks(text: str) -> list[str]:
    return [secret for secret in (EMAIL, PHONE, PASSWORD, KEY, "k" * 43) if secret in text]


def test_a_handler_filter_masks_what_child_loggers_propagate(stream_handler) -> None:
    handler, out = stream_handler
    install_log_masking()
    assert sum(isinstance(f, MaskingFilter) for f in handler.filters) == 1
    install_log_masking()  # once per handler, however often it is called
    assert sum(isinstance(f, MaskingFilter) for f in handler.filters) == 1

    child = logging.getLogger("masking_test.effects")
    child.warning("Execution %s blocked: %s (owner %s)", "exec_1", f"write to {EMAIL} or call {PHONE}", "user_1")
    child.info("login failed with %(password)s", {"password": f"password={PASSWORD}"})
    child.info(f"key {KEY}")
    text = out.getvalue()
    assert _leaks(text) == []
    assert "Execution exec_1 blocked: write to c***@bittersweet-farm.com or call ***-***-9416 (owner user_1)" in text
    assert "key ***" in text


def test_exception_text_and_stack_are_masked(stream_handler) -> None:
    handler, out = stream_handler
    handler.addFilter(MaskingFilter())
    log = logging.getLogger("masking_test.errors")
    try:
        raise ValueError(f"duplicate key (email)=({EMAIL}) password={PASSWORD}")
    except ValueError:
        log.exception("insert failed for %s", EMAIL)
    log.info("where", stack_info=True, extra={"ignored": EMAIL})
    text = out.getvalue()
    assert "ValueError: duplicate key (email)=(c***@bittersweet-farm.com) password=***" in text
    assert "Traceback (most recent call last)" in text
    assert _leaks(text) == []


def test_a_broken_format_is_masked_too(stream_handler, capsys) -> None:
    handler, out = stream_handler
    handler.addFilter(MaskingFilter())
    logging.getLogger("masking_test.broken").warning("two %s %s", EMAIL)  # one arg short
    assert _leaks(out.getvalue() + capsys.readouterr().err) == []
    assert "c***@bittersweet-farm.com" in out.getvalue()


def test_records_without_a_handler_go_through_last_resort_masked(capsys) -> None:
    install_log_masking()
    logger = logging.getLogger("masking_test_orphan")
    logger.propagate = False  # no handler anywhere: Python writes it through logging.lastResort
    try:
        logger.warning("no handler for %s", EMAIL)
    finally:
        logger.propagate = True
    err = capsys.readouterr().err
    assert "no handler for c***@bittersweet-farm.com" in err and EMAIL not in err


def test_a_record_masked_by_one_handler_stays_masked_for_the_next(stream_handler) -> None:
    handler, out = stream_handler
    handler.addFilter(MaskingFilter())
    second = io.StringIO()
    other = logging.StreamHandler(second)  # no filter of its own, after the masked one
    logging.getLogger("masking_test").addHandler(other)
    try:
        logging.getLogger("masking_test.x").warning("to %s", EMAIL)
    finally:
        logging.getLogger("masking_test").removeHandler(other)
    assert EMAIL not in out.getvalue() and EMAIL not in second.getvalue()
