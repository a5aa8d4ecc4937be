"""The access line: one JSON object with the request's fields and none of its personal values, whichever way it is
written (without a LogRecord by default; any other logging set-up, a filter or a handler of another kind, still
gets the record through logging)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from serving.logs import ACCESS_LOGGER, LOGGER_NAME, JsonFormatter, configure_logging, log_access

FIELDS = {
    "request_id": "abc-123",
    "method": "POST",
    "endpoint": "/predict",
    "status": 422,
    "duration_ms": 0.512,
    "rows": 0,
    "model_version": "7",
    "error": "invalid_value",
    "field": "apr",
    "index": 0,
    "anon_ssn": "123-45-6789",  # never written
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The service's JSON handler writing to a buffer, as configure_logging sets it up; restored afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.level, list(logger.handlers), logger.propagate)
    out = io.StringIO()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    configure_logging("INFO", out)
    try:
        yield out
    finally:
        logger.handlers[:] = saved[1]
        logger.setLevel(saved[0])
        logger.propagate = saved[2]


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_access_line_holds_the_request_fields_in_order_and_no_personal_value(stream: io.StringIO) -> None:
    log_access(dict(FIELDS))
    (line,) = _lines(stream)
    assert list(line)[:3] == ["ts", "level", "logger"] and line["level"] == "INFO"
    assert line["logger"] == ACCESS_LOGGER and line["event"] == "request"
    written = {k: v for k, v in line.items() if k not in ("ts", "level", "logger", "event")}
    assert written == {k: v for k, v in FIELDS.items() if k != "anon_ssn"}
    assert list(written) == [k for k in FIELDS if k != "anon_ssn"]  # the request's order


def test_timestamp_format(stream: io.StringIO) -> None:
    log_access({})
    (line,) = _lines(stream)
    assert len(line["ts"]) == 24 and line["ts"][10] == "T" and line["ts"].endswith("Z")


def test_filters_and_other_handlers_take_the_logging_path(stream: io.StringIO) -> None:
    access = logging.getLogger(ACCESS_LOGGER)
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    collect = Collect()
    access.addHandler(collect)
    try:
        log_access({"status": 200})
    finally:
        access.removeHandler(collect)
    assert [r.fields["status"] for r in seen] == [200]  # the foreign handler got a real record
    assert [line["status"] for line in _lines(stream)] == [200]  # and the JSON handler its line, once

    dropped = logging.Filter("nothing.matches")
    access.addFilter(dropped)
    try:
        log_access({"status": 201})
    finally:
        access.removeFilter(dropped)
    assert [line["status"] for line in _lines(stream)] == [200]  # the filter was obeyed


def test_disabled_or_quiet_writes_nothing(stream: io.StringIO) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING)
    log_access({"status": 200})
    logger.setLevel(logging.INFO)
    access = logging.getLogger(ACCESS_LOGGER)
    access.disabled = True
    try:
        log_access({"status": 200})
    finally:
        access.disabled = False
    assert stream.getvalue() == ""


def test_a_broken_stream_never_reaches_the_request(stream: io.StringIO, monkeypatch) -> None:
    stream.close()  # writing raises ValueError now
    monkeypatch.setattr(logging, "raiseExceptions", False)
    log_access({"status": 200})  # reported by the handler, not raised


def test_json_formatter_unchanged() -> None:
    record = logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.fields = {"anon_ssn": "1", "status": 500}
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "boom x" and line["level"] == "ERROR" and line["status"] == 500
    assert "anon_ssn" not in line
