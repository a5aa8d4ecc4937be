"""The endpoints, as one Blueprint: health, model info, predictions (single, batch, MLflow protocol), reload.

Every prediction decodes with :mod:`serving.requests` and scores with :class:`serving.scoring.Scoring`;
``/predict/batch`` answers record by record, ``/predict`` and ``/invocations`` all or nothing."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from msgspec import UNSET

from serving import requests
from serving.bundle import CARD_HTML, CARD_MARKDOWN
from serving.config import ServiceConfig
from serving.errors import ApiError
from serving.model import ServedModel
from serving.payloads import (
    encodable,
    json_response,
    parse_json,
    raw_json_response,
    read_body,
    reason_options,
    warn,
)
from serving.reload import ModelHolder
from serving.scoring import Scoring

bp = Blueprint("serving", __name__)


def _holder() -> ModelHolder:
    return current_app.extensions["loanrisk"]


def _config() -> ServiceConfig:
    return current_app.extensions["loanrisk_config"]


def _served() -> ServedModel:
    """The model being served (503 when none is), its version noted in ``g`` for the access line."""
    holder = _holder()
    served = holder.current
    if served is None:
        raise ApiError(503, "model_unavailable", holder.load_error or "no model is loaded")
    g.model_version = served.version
    return served


def _scoring(endpoint: str) -> Scoring:
    served = _served()
    log = current_app.extensions.get("loanrisk_predlog")
    metrics = current_app.extensions["loanrisk_metrics"]
    return Scoring(served, _config(), log, g._get_current_object(), endpoint, metrics)


def _answer(scoring: Scoring, out: dict[str, Any]) -> Response:
    response = json_response(out)
    scoring.commit()
    return response


@bp.get("/health")
def health() -> Response:
    holder = _holder()
    served = holder.current
    if served is not None:
        g.model_version = served.version
    status, body = holder.health
    return raw_json_response(body, status)


@bp.get("/ping")
def ping() -> Response:
    holder = _holder()
    if holder.current is None:
        return json_response({"status": "unavailable", "message": holder.load_error or ""}, 503)
    return json_response({"status": "ok"})


@bp.get("/model/info")
def model_info() -> Response:
    return raw_json_response(_served().info_body)


@bp.get("/model/card")
def model_card() -> Response:
    """The served version's model card: HTML, or Markdown for ``Accept: text/markdown``."""
    served = _served()
    markdown = request.accept_mimetypes.best_match(["text/html", "text/markdown"]) == "text/markdown"
    path = served.directory / (CARD_MARKDOWN if markdown else CARD_HTML)
    if not path.is_file():
        message = f"model version {served.version} has no model card in its bundle"
        raise ApiError(404, "no_model_card", message)
    kind = "text/markdown" if markdown else "text/html"
    return Response(path.read_bytes(), status=200, content_type=f"{kind}; charset=utf-8")


@bp.get("/openapi.json")
def openapi() -> Response:
    return raw_json_response(current_app.extensions["loanrisk_openapi"])


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = current_app.extensions["loanrisk_metrics"].render()
    return Response(body, status=200, content_type=content_type)


@bp.post("/predict")
def predict() -> Response:
    scoring = _scoring("/predict")
    decoded = requests.one_record(read_body())
    options = reason_options(request.args, scoring.config.reason_count)
    scored = scoring.score(decoded, reject=True)
    probability, reasons = scored[0][0], scoring.reasons(scored, options, decoded)
    served, echo = scoring.served, decoded.loan_ids()[0]
    out: dict[str, Any] = {} if echo is UNSET else {"loanId": echo}
    out.update(probability=probability, label=int(probability >= served.threshold), threshold=served.threshold,
               model_name=served.name, model_version=served.version)  # fmt: skip
    if reasons and reasons[0] is not None:
        out["reasons"] = reasons[0]
    warn(out, sorted(decoded.unknown))
    if scoring.warnings:
        out.setdefault("warnings", []).append(scoring.warnings[0])
    return _answer(scoring, out)


@bp.post("/predict/batch")
def predict_batch() -> Response:
    """A prediction per valid record and an error per other one; ``?on_error=reject`` answers the
    first error for the whole batch."""
    scoring = _scoring("/predict/batch")
    on_error = request.args.get("on_error", "record")
    if on_error not in ("record", "reject"):
        message = f"'on_error' must be record or reject; got {encodable(on_error)[:40]!r}"
        raise ApiError(400, "invalid_parameter", message, "on_error")
    options = reason_options(request.args, scoring.config.reason_count)
    decoded = requests.batch(read_body(), scoring.config.max_batch_size)
    scored = scoring.score(decoded, reject=on_error == "reject")
    probabilities, threshold = scored[0], scoring.served.threshold
    predictions: list[dict[str, Any]] = []
    append = predictions.append
    for index, p, echo in zip(decoded.positions, probabilities, decoded.loan_ids(), strict=True):
        prediction = {"index": index, "probability": p, "label": 1 if p >= threshold else 0}
        if echo is not UNSET:
            prediction["loanId"] = echo
        append(prediction)
    for prediction, found in zip(predictions, scoring.reasons(scored, options, decoded) or (), strict=False):
        if found is not None:
            prediction["reasons"] = found
    for k, warning in scoring.warnings.items():
        predictions[k]["warnings"] = [warning]
    out: dict[str, Any] = {"predictions": predictions, "errors": [e.entry() for e in decoded.errors],
                           "count": decoded.size, "scored": len(predictions), "rejected": len(decoded.errors),
                           "threshold": threshold, "model_name": scoring.served.name,
                           "model_version": scoring.served.version}  # fmt: skip
    warn(out, sorted(decoded.unknown))
    return _answer(scoring, out)


@bp.post("/invocations")
def invocations() -> Response:
    """MLflow's scoring protocol, all or nothing; reasons opt-in through ``params``."""
    scoring = _scoring("/invocations")
    limit = scoring.config.max_batch_size
    if request.mimetype in ("text/csv", "application/csv"):
        decoded = requests.csv_records(read_body(), limit)
    else:
        decoded, _ = requests.invocation(read_body(), limit)
    options = reason_options(decoded.params, scoring.config.reason_count, "none", "params.")
    scored = scoring.score(decoded, reject=True)
    reasons = scoring.reasons(scored, options, decoded)
    out = {"predictions": scored[0]} if reasons is None else {"predictions": scored[0], "reasons": reasons}
    return _answer(scoring, out)


def _require_admin() -> None:
    config = _config()
    if not config.reload_enabled:
        message = (
            "model administration is disabled: start the service with LOANRISK_ADMIN_TOKEN set to enable it"
        )
        raise ApiError(403, "reload_disabled", message)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    given, expected = token.strip().encode("utf-8", "replace"), (config.admin_token or "").encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
        message = "send the admin token as 'Authorization: Bearer <token>'"
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="loanrisk"'})


def _reload_directory(holder: ModelHolder) -> str | Path:
    body = read_body()
    directory: str | Path | None = None
    if body.strip():
        payload = parse_json(body)
        if type(payload) is not dict:
            raise ApiError(400, "invalid_request", 'expected a JSON object like {"bundle_dir": "/path"}')
        directory = payload.get("bundle_dir")
        if directory is not None and (type(directory) is not str or not directory.strip()):
            raise ApiError(400, "invalid_request", "bundle_dir must be a directory path", "bundle_dir")
    if directory is None:
        current = holder.current
        directory = _config().bundle_dir or (current.directory if current else None)
    if directory is None:
        message = "no bundle directory configured: send bundle_dir"
        raise ApiError(400, "invalid_request", message, "bundle_dir")
    return directory


@bp.post("/model/reload")
def reload_model() -> Response:
    """Load the bundle here, publish it, and answer 200 once every live worker serves it (503 otherwise)."""
    _require_admin()
    holder = _holder()
    directory = _reload_directory(holder)
    previous = holder.current
    try:
        served, token = holder.reload(directory)
    except Exception as exc:  # BundleError, or an unreadable path: the client named a bundle we cannot load
        raise ApiError(422, "invalid_bundle", str(exc), "bundle_dir") from None
    g.model_version = served.version
    outcome, workers = holder.wait_for_workers(token, _config().reload_timeout)
    summary = {"model_name": served.name, "model_version": served.version,
               "previous_version": previous.version if previous else None,
               "bundle_dir": str(served.directory), "workers": workers}  # fmt: skip
    if outcome == "loaded":
        return json_response({"status": "reloaded", **summary})
    if outcome == "superseded":
        message = "another reload was published while this one was spreading; see GET /model/workers"
        raise ApiError(409, "reload_superseded", message, extra=summary)
    pending = [w for w in workers if not (w.get("token") == token and w.get("state") == "loaded")]
    message = (
        f"{len(pending)} of {len(workers)} workers do not serve version {served.version} after "
        f"{_config().reload_timeout:g} s: "
        + "; ".join(
            f"pid {w.get('pid')}: {w.get('state')} ({w.get('error') or 'no error yet'})" for w in pending
        )
    )
    raise ApiError(503, "reload_incomplete", message, extra=summary)


@bp.get("/model/workers")
def model_workers() -> Response:
    """Each live worker's state and the bundle they were asked to serve."""
    _require_admin()
    holder = _holder()
    return json_response({"target": holder.read_target(), "workers": holder.workers()})
