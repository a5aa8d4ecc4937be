"""The endpoints, as one Blueprint: health, model info, predictions (single, batch, MLflow protocol), reload.

Two request paths, one answer. Batches of plain records (the common case) go the fast way: body bytes →
msgspec structs → :func:`serving.features.columns_from`, one column at a time → a DataFrame → CatBoost → orjson
bytes. Everything else - single records, small batches, CSV, unknown fields, odd values, and any batch whose
value a reader refuses - goes the checked way: orjson → dicts → :func:`serving.bundle.Bundle.predict_records`,
which names a bad field and its record index. ``/predict``, ``/predict/batch`` and ``/invocations`` share both;
each takes the served model once (:class:`serving.scoring.Scoring`). A JSON body posted to ``/predict`` or
``/invocations`` is answered by :func:`predict_record` and :func:`invocation_json` through the fast lane
(:mod:`serving.lane`), or through the routes here when the lane hands the request to Flask. Reasons (:mod:`serving.reasons`) are computed on the model input the
prediction used, for the records the request's ``reasons`` selects (risky ones by default; opt-in on
``/invocations`` through MLflow's ``params``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from msgspec import UNSET

from serving.batches import fast_batch, fast_invocation
from serving.card import CARD_HTML, CARD_MARKDOWN
from serving.config import ServiceConfig
from serving.features import FeatureError, columns_to_records
from serving.model import ModelHolder, ServedModel
from serving.payloads import (
    ApiError,
    Body,
    check_records,
    check_size,
    csv_records,
    json_response,
    json_type,
    loan_id,
    mlflow_records,
    parse_json,
    raw_json_response,
    read_body,
    reason_options,
    records_column,
    unknown,
    warn,
)
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
    return Scoring(served, _config(), log, g._get_current_object(), endpoint)


def _answer(scoring: Scoring, out: dict[str, Any]) -> Response:
    response = json_response(out)
    scoring.commit()
    return response


# --- health and metadata ---------------------------------------------------------------------------------


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
    """The served version's model card: HTML, or Markdown for ``Accept: text/markdown``; 404 when it has none."""
    served = _served()
    markdown = request.accept_mimetypes.best_match(["text/html", "text/markdown"]) == "text/markdown"
    path = served.directory / (CARD_MARKDOWN if markdown else CARD_HTML)
    if not path.is_file():
        raise ApiError(
            404, "no_model_card", f"model version {served.version} has no model card in its bundle"
        )
    kind = "text/markdown" if markdown else "text/html"
    return Response(path.read_bytes(), status=200, content_type=f"{kind}; charset=utf-8")


@bp.get("/openapi.json")
def openapi() -> Response:
    return raw_json_response(current_app.extensions["loanrisk_openapi"])


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = current_app.extensions["loanrisk_metrics"].render()
    return Response(body, status=200, content_type=content_type)


# --- predictions -----------------------------------------------------------------------------------------


@bp.post("/predict")
def predict() -> Response:
    scoring = _scoring("/predict")
    return _answer(scoring, predict_record(scoring, read_body(), request.args))


def predict_record(scoring: Scoring, body: Body, args: Mapping[str, Any]) -> dict[str, Any]:
    """The answer of /predict: one record's probability, label and reasons."""
    record = parse_json(body)
    if type(record) is not dict:
        message = f"expected a JSON object with the fields of one loan application, got {json_type(record)}"
        raise ApiError(400, "invalid_request", message, None, 0)
    echo = loan_id(record, 0)
    options = reason_options(args, scoring.config.reason_count)
    scored = scoring.score([record])
    probability, reasons = scored[0][0], scoring.reasons(scored, options, records_column([record]))
    served = scoring.served
    out: dict[str, Any] = {}
    if "loanId" in record:
        out["loanId"] = echo
    out["probability"] = probability
    out["label"] = int(probability >= served.threshold)
    out["threshold"] = served.threshold
    out["model_name"] = served.name
    out["model_version"] = served.version
    if reasons and reasons[0] is not None:
        out["reasons"] = reasons[0]
    warn(out, unknown([record]))
    return out


@bp.post("/predict/batch")
def predict_batch() -> Response:
    scoring = _scoring("/predict/batch")
    config = scoring.config
    body = read_body()
    options = reason_options(request.args, config.reason_count)
    batch = fast_batch(body, config.max_batch_size)
    scored = scoring.score_fast(batch)
    if batch is not None and scored is not None:
        reasons = scoring.reasons(scored, options, batch.column)
        return _answer(scoring, _batch_answer(scoring.served, scored[0], batch.loan_ids(), [], reasons))
    payload = parse_json(body)
    if type(payload) is not dict or "data" not in payload:
        raise ApiError(400, "invalid_request", 'expected a JSON object {"data": [records]}', "data")
    records = payload["data"]
    if type(records) is not list:
        message = f"'data' must be a list of records, got {json_type(records)}"
        raise ApiError(400, "invalid_request", message, "data")
    check_size(records, "data", config.max_batch_size)
    check_records(records)
    scored = scoring.score(records)
    ids = [loan_id(r, i) if "loanId" in r else UNSET for i, r in enumerate(records)]
    reasons = scoring.reasons(scored, options, records_column(records))
    return _answer(scoring, _batch_answer(scoring.served, scored[0], ids, unknown(records), reasons))


def _batch_answer(
    served: ServedModel,
    probabilities: list[float],
    ids: list[Any],
    unknown: list[str],
    reasons: list[Any] | None = None,
) -> dict[str, Any]:
    """The answer of /predict/batch: each record's probability, label and loanId (when it gave one), and its
    reasons (when the request's ``reasons`` selects it)."""
    threshold = served.threshold
    predictions: list[dict[str, Any]] = []
    append = predictions.append
    for p, echo in zip(probabilities, ids, strict=True):
        if echo is UNSET:
            append({"probability": p, "label": 1 if p >= threshold else 0})
        else:
            append({"probability": p, "label": 1 if p >= threshold else 0, "loanId": echo})
    for prediction, found in zip(predictions, reasons or (), strict=False):
        if found is not None:
            prediction["reasons"] = found
    out: dict[str, Any] = {
        "predictions": predictions,
        "count": len(predictions),
        "threshold": threshold,
        "model_name": served.name,
        "model_version": served.version,
    }
    warn(out, unknown)
    return out


@bp.post("/invocations")
def invocations() -> Response:
    scoring = _scoring("/invocations")
    body = read_body()
    if request.mimetype in ("text/csv", "application/csv"):
        out = invocation_records(scoring, csv_records(body), "data", None, None)
    else:
        out = invocation_json(scoring, body)
    return _answer(scoring, out)


def invocation_json(scoring: Scoring, body: Body) -> dict[str, Any]:
    """The answer of /invocations to a JSON body (MLflow's scoring protocol)."""
    config = scoring.config
    batch = fast_invocation(body, config.max_batch_size)
    scored = scoring.score_fast(batch)
    if batch is not None and scored is not None:
        options = reason_options(batch.params, config.reason_count, "none", "params.")
        return _invocation_answer(scored[0], scoring.reasons(scored, options, batch.column))
    payload = parse_json(body)
    records, field, columns = mlflow_records(payload)
    # MLflow's inference parameters: {"reasons": "risky" | "all", "reason_count": n}
    return invocation_records(scoring, records, field, columns, payload.get("params"))


def invocation_records(
    scoring: Scoring, records: list[Any], field: str, columns: list[str] | None, params: Any
) -> dict[str, Any]:
    """The answer of /invocations to records (or, with ``columns``, rows) read from the body."""
    config = scoring.config
    check_size(records, field, config.max_batch_size)
    if columns is not None:
        try:
            records = columns_to_records(columns, records)
        except FeatureError as exc:
            raise ApiError(
                400, "invalid_request", f"row {exc.index}: {exc.message}", field, exc.index
            ) from None
    check_records(records, field)
    options = reason_options(params, config.reason_count, "none", "params.")
    scored = scoring.score(records)
    return _invocation_answer(scored[0], scoring.reasons(scored, options, records_column(records)))


def _invocation_answer(probabilities: list[float], reasons: list[Any] | None) -> dict[str, Any]:
    """MLflow's answer, unchanged (``predictions``); ``reasons`` beside it only when the params asked."""
    return (
        {"predictions": probabilities}
        if reasons is None
        else {"predictions": probabilities, "reasons": reasons}
    )


# --- administration --------------------------------------------------------------------------------------


def _require_admin() -> None:
    config = _config()
    if not config.reload_enabled:
        raise ApiError(
            403,
            "reload_disabled",
            "model administration is disabled: start the service with LOANRISK_ADMIN_TOKEN set to enable it",
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    expected = (config.admin_token or "").encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), expected
    ):
        raise ApiError(
            401,
            "unauthorized",
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="loanrisk"'},
        )


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
        raise ApiError(
            400, "invalid_request", "no bundle directory configured: send bundle_dir", "bundle_dir"
        )
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
    summary = {
        "model_name": served.name,
        "model_version": served.version,
        "previous_version": previous.version if previous else None,
        "bundle_dir": str(served.directory),
        "workers": workers,
    }
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
    """Each live worker's state (the admin's view of a reload), and the bundle they were asked to serve."""
    _require_admin()
    holder = _holder()
    return json_response({"target": holder.read_target(), "workers": holder.workers()})
