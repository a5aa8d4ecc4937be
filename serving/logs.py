"""Structured JSON logs: one object per line on stderr, only fields passed in ``extra={"fields": ...}``, never
the personal fields. :func:`log_access` writes the access line straight to plain JSON stream handlers,
skipping the ``LogRecord``; any other logging set-up takes the logging path."""

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
_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text
_access = logging.getLogger(ACCESS_LOGGER)


def _json(created: float, level: str, name: str, event: str, fields: Any) -> dict[str, Any]:
    global _second
    seconds, second = int(created), _second
    if second[0] != seconds:
        second = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    ts = f"{second[1]}.{int((created - seconds) * 1000):03d}Z"
    out: dict[str, Any] = {"ts": ts, "level": level, "logger": name, "event": event}
    if isinstance(fields, dict):
        out |= {k: v for k, v in fields.items() if k not in PERSONAL_FIELDS and k not in out}
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
        out = _json(record.created, record.levelname, record.name, record.getMessage(), fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return _dumps(out)


def _json_streams(logger: logging.Logger | None) -> list[logging.StreamHandler] | None:
    """The handlers an INFO record of ``logger`` reaches if all are plain JSON stream handlers; else None."""
    found: list[logging.StreamHandler] = []
    while logger is not None:
        plain = all(
            type(h) is logging.StreamHandler
            and type(h.formatter) is JsonFormatter
            and not h.filters
            and h.level <= logging.INFO
            for h in logger.handlers
        )
        if logger.filters or not plain:
            return None
        found += logger.handlers
        logger = logger.parent if logger.propagate else None
    return found


def log_access(fields: dict[str, Any]) -> None:
    """One request's access line, as ``logger.info("request", extra={"fields": fields})`` writes it."""
    if not _access.isEnabledFor(logging.INFO):
        return
    handlers = _json_streams(_access)
    if handlers is None:
        _access.info("request", extra={"fields": fields})
        return
    line = _dumps(_json(time.time(), "INFO", ACCESS_LOGGER, "request", fields)) + "\n"
    for handler in handlers:
        with handler.lock:
            try:
                handler.stream.write(line)
                handler.flush()
            except Exception:  # as StreamHandler.emit: reported, never raised to the request
                args = (ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None)
                handler.handleError(_access.makeRecord(*args, extra={"fields": fields}))


def configure_logging(level: str | int = "INFO", stream: Any = None) -> logging.Logger:
    """Attach one JSON handler to the ``loanrisk`` logger (idempotent); returns that logger."""
    logger = logging.getLogger(LOGGER_NAME)
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    logger.setLevel(level if isinstance(level, int) else logging.INFO)
    for handler in logger.handlers:
        if getattr(handler, "_loanrisk_json", False):
            if stream is not None and isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)
            return logger
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._loanrisk_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    return logger
