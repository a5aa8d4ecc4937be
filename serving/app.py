"""The prediction service: a Flask application factory (``gunicorn 'serving.app:create_app()'``)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving.config import ServiceConfig
from serving.contract import KNOWN_FIELDS
from serving.errors import ApiError
from serving.logs import LOGGER_NAME, configure_logging, log_access
from serving.metrics import get_metrics
from serving.openapi import openapi_document
from serving.payloads import STRUCTURAL_FIELDS, json_response
from serving.predlog import start as start_prediction_log
from serving.reload import ModelHolder
from serving.routes import bp

logger = logging.getLogger(LOGGER_NAME)
# a client's X-Request-ID is kept when it is a plain token
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(config: ServiceConfig | Mapping[str, Any] | None = None) -> Flask:
    """The Flask app; ``config`` is a :class:`ServiceConfig`, a mapping of its fields, or None (env vars).
    Every answer is timed, counted and logged in one JSON access line (no body, no personal field); every error
    is a JSON answer ``{"error", "message", "field", "index"}``."""
    if not isinstance(config, ServiceConfig):
        config = ServiceConfig.from_env() if config is None else ServiceConfig(**dict(config))
    configure_logging(config.log_level)
    metrics = get_metrics()
    prediction_log = start_prediction_log(config, metrics)  # first: a log that cannot start stops us
    holder = ModelHolder(config, metrics)
    holder.start()

    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions.update(
        loanrisk=holder,
        loanrisk_config=config,
        loanrisk_metrics=metrics,
        loanrisk_predlog=prediction_log,
        loanrisk_openapi=orjson.dumps(openapi_document(config.max_batch_size, config.max_body_bytes)),
    )
    app.register_blueprint(bp)

    @app.before_request
    def _start() -> None:
        g.t0 = time.perf_counter()
        rid = request.environ.get("HTTP_X_REQUEST_ID", "")
        # first: the prediction log has it
        g.request_id = rid if _REQUEST_ID.match(rid) else os.urandom(16).hex()

    @app.after_request
    def _finish(response: Response) -> Response:
        now, state, status = time.perf_counter(), g._get_current_object(), response.status_code
        endpoint = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        elapsed, rows = now - getattr(state, "t0", now), getattr(state, "rows", 0)
        metrics.observe_request(endpoint, request.method, status, elapsed, rows if status == 200 else 0)
        rid = getattr(state, "request_id", None) or os.urandom(16).hex()
        fields: dict[str, Any] = {
            "request_id": rid,
            "method": request.method[:16],
            "endpoint": endpoint,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "rows": rows,
            "model_version": getattr(state, "model_version", None),
        }
        log_access({**fields, **(getattr(state, "error", None) or {})})
        response.headers["X-Request-ID"] = rid
        return response

    app.register_error_handler(ApiError, _error_response)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None
        return _error_response(ApiError(status, code, exc.description or exc.name, headers=headers))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else None
        logger.error("unhandled error", exc_info=exc, extra={"fields": {"endpoint": endpoint}})
        return _error_response(ApiError(500, "internal_error", "the service failed to answer; see its logs"))

    return app


def _error_response(exc: ApiError) -> Response:
    field = exc.field
    logged = field if field is None or field in KNOWN_FIELDS or field in STRUCTURAL_FIELDS else "<other>"
    g.error = {"error": exc.code, "field": logged, "index": exc.index}
    return json_response(exc.entry() | (exc.extra or {}), exc.status, exc.headers)
