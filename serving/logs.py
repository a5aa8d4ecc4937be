"""Structured JSON logs: one object per line on stderr, only fields passed in ``extra={"fields": ...}``, never
the personal fields. :func:`log_access` writes the access line straight to plain JSON stream handlers, skipping
the ``LogRecord``; any other logging set-up takes the logging path."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson

LOGGER_NAME = "loanrisk"
ACCESS_LOGGER = "loanrisk.access"

# Never written, whatever a caller passes.
PERSONAL_FIELDS = frozenset({"anon_ssn", "ssn", "loanId", "clarityFraudId", "underwritingid"})

_HANDLER_FLAG = "_loanrisk_json_handler"
_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _utc_timestamp(created: float) -> str:
    global _second
    seconds = int(created)
    cached, text = _second
    if cached != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{int((created - seconds) * 1000):03d}Z"


def _document(created: float, level: str, name: str, event: str, fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": _utc_timestamp(created), "level": level, "logger": name, "event": event}
    if isinstance(fields, dict):
        for key, value in fields.items():
            if key not in PERSONAL_FIELDS and key not in out:
                out[key] = value
    return out


def _dumps(out: dict[str, Any]) -> str:
    try:
        return orjson.dumps(out, default=str).decode()
    except orjson.JSONEncodeError:  # text that is not Unicode (a lone surrogate): written escaped
        return json.dumps(out, default=str)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields}`` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        out = _document(record.created, record.levelname, record.name, record.getMessage(), fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return _dumps(out)


_access = logging.getLogger(ACCESS_LOGGER)


def _json_streams(logger: logging.Logger) -> list[logging.StreamHandler] | None:
    """The handlers an INFO record of ``logger`` reaches when all are plain JSON stream handlers
    without filters; else None."""
    found: list[logging.StreamHandler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                type(handler) is not logging.StreamHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or handler.level > logging.INFO
            ):
                return None
            found.append(handler)
        if not current.propagate:
            break
        current = current.parent
    return found


def log_access(fields: dict[str, Any]) -> None:
    """One request's access line, as ``logger.info("request", extra={"fields": fields})`` writes it."""
    if not _access.isEnabledFor(logging.INFO):
        return
    handlers = _json_streams(_access)
    if handlers is None:
        _access.info("request", extra={"fields": fields})
        return
    line = _dumps(_document(time.time(), "INFO", ACCESS_LOGGER, "request", fields)) + "\n"
    for handler in handlers:
        handler.acquire()
        try:
            handler.stream.write(line)
            handler.flush()
        except Exception:  # as StreamHandler.emit: a broken stream is reported, never raised to the request
            extra = {"fields": fields}
            handler.handleError(
                _access.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None, extra=extra)
            )
        finally:
            handler.release()


def configure_logging(level: str | int = "INFO", stream: Any = None) -> logging.Logger:
    """Attach one JSON handler to the ``loanrisk`` logger (idempotent); returns that logger."""
    logger = logging.getLogger(LOGGER_NAME)
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            level = logging.INFO
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, _HANDLER_FLAG, False):
            if stream is not None and isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)
            return logger
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.propagate = False
    return logger
