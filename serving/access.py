"""One answered request, recorded: its request id, its metrics and its access-log line."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from serving.logs import log_access

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(environ: Mapping[str, Any]) -> str:
    """The client's ``X-Request-ID`` when it is a plain token (<= 128 of ``A-Za-z0-9._:-``), else a new one."""
    rid = environ.get("HTTP_X_REQUEST_ID", "")
    return rid if _REQUEST_ID.match(rid) else os.urandom(16).hex()


def finish_request(metrics: Any, state: Any, endpoint: str, method: str, status: int, elapsed: float) -> str:
    """Count an answered request and write its access line from ``state`` (Flask's ``g``); returns
    the request id its answer carries."""
    rows = getattr(state, "rows", 0)
    metrics.observe_request(endpoint, method, status, elapsed, rows if status == 200 else 0)
    rid = getattr(state, "request_id", None) or os.urandom(16).hex()
    fields: dict[str, Any] = {
        "request_id": rid,
        "method": method[:16],
        "endpoint": endpoint,
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "rows": rows,
        "model_version": getattr(state, "model_version", None),
    }
    err = getattr(state, "error", None)
    if err is not None:
        fields.update(err)
    log_access(fields)
    return rid
