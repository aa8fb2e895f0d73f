"""JSON-lines logging keeps what an operator needs from a failure: its type and message."""

from __future__ import annotations

import io
import json
import logging

from enclave_net.jsonlog import json_logging, log_event


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_exception_keeps_its_type_message_and_place() -> None:
    stream = io.StringIO()
    log = logging.getLogger("enclave_net.test_jsonlog")
    with json_logging("info", stream=stream):
        try:
            int("²")
        except ValueError:
            log.exception("API handler failed")
    [line] = _lines(stream)
    assert line["event"] == "API handler failed" and line["level"] == "error"
    exception = line["exception"]
    assert isinstance(exception, dict)
    assert exception["type"] == "ValueError"
    assert exception["message"] == "invalid literal for int() with base 10: '²'"
    where = exception["where"]
    assert where.startswith("test_jsonlog.py:") and where.endswith(" in " + _this_test())


def _this_test() -> str:
    return test_an_exception_keeps_its_type_message_and_place.__name__


def test_a_library_exception_is_named_with_its_module() -> None:
    stream = io.StringIO()
    with json_logging("info", stream=stream):
        try:
            json.loads("{")
        except json.JSONDecodeError:
            logging.getLogger("enclave_net.test_jsonlog").exception("parse failed")
    exception = _lines(stream)[0]["exception"]
    assert isinstance(exception, dict)
    assert exception["type"] == "json.decoder.JSONDecodeError"
    assert exception["message"].startswith("Expecting property name")


def test_fields_and_no_exception() -> None:
    stream = io.StringIO()
    log = logging.getLogger("enclave_net.test_jsonlog")
    with json_logging("info", stream=stream):
        log_event(log, logging.INFO, "ready", listen="unix:/x")
    [line] = _lines(stream)
    assert line["listen"] == "unix:/x" and "exception" not in line
