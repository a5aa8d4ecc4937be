"""Structured JSON logs: one object per line on stderr.

Only fields passed explicitly (``extra={"fields": {...}}``) are written, and personal fields of the loan files
(``anon_ssn`` and the identifiers) are dropped even then: request bodies never reach a log line.
"""

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


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields}`` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                if key not in PERSONAL_FIELDS and key not in out:
                    out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:  # text that is not Unicode (a lone surrogate): written escaped
            return json.dumps(out, default=str)


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
