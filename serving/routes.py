"""The endpoints, as one Blueprint; every prediction decodes with :mod:`serving.requests` and scores with
:class:`Scoring` (``/predict/batch`` record by record, ``/predict`` and ``/invocations`` all or nothing)."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from msgspec import UNSET

from serving import requests
from serving.bundle import CARD_HTML, CARD_MARKDOWN
from serving.config import ServiceConfig
from serving.errors import ApiError, FeatureError
from serving.features import columns_from, outside_contract, take
from serving.model import ServedModel
from serving.payloads import json_response, read_body, reason_options, shown, warn
from serving.reasons import explain_selected
from serving.reload import ModelHolder
from serving.requests import Decoded

bp = Blueprint("serving", __name__)


def _holder() -> ModelHolder:
    return current_app.extensions["loanrisk"]


def _config() -> ServiceConfig:
    return current_app.extensions["loanrisk_config"]


def _served() -> ServedModel:
    """The model being served (503 when none is), its version noted in ``g`` for the access line."""
    holder = _holder()
    if (served := holder.current) is None:
        raise ApiError(503, "model_unavailable", holder.load_error or "no model is loaded")
    g.model_version = served.version
    return served


class Scoring:
    """One request's scoring: decoded records → features → CatBoost → reasons. What was scored reaches the
    prediction log only in :meth:`answer`, once the answer is built."""

    def __init__(self, endpoint: str) -> None:
        self.served, self.config, self.endpoint = _served(), _config(), endpoint
        self.warnings: dict[int, str] = {}  # position among the scored records -> warning
        self._pending: tuple[Any, ...] | None = None

    def score(
        self, decoded: Decoded, reject: bool, options: tuple[str, int]
    ) -> tuple[list[float], list[Any] | None]:
        """The valid records' probabilities and their reasons (None: none asked for). ``reject`` answers the
        request's first error; otherwise refused records are left out, each with its error."""
        found: dict[int, FeatureError] = {}
        columns = columns_from(decoded.column, len(decoded.records), found)
        unknown = outside_contract(columns)
        if self.config.unknown_categories == "reject":
            for i, exc in unknown:
                found.setdefault(i, exc)
            unknown = []
        if found or (reject and decoded.errors):
            refused = [exc.answer(decoded.positions[i]) for i, exc in sorted(found.items())]
            if reject:  # the first error in record order, whether decoding or the features found it
                raise min((*decoded.errors, *refused), key=lambda e: e.index or 0)
            keep = [i for i in range(len(decoded.records)) if i not in found]
            columns = take(columns, keep)
            decoded.keep(keep, refused)
            kept = {i: k for k, i in enumerate(keep)}
            unknown = [(kept[i], exc) for i, exc in unknown if i in kept]
        self.warnings = {k: f"field '{exc.field}': {exc.message}; scored as unseen" for k, exc in unknown}
        if decoded.errors:
            current_app.extensions["loanrisk_metrics"].reject(self.endpoint, decoded.errors)
        if not (n := len(decoded.records)):
            return [], None
        served, log = self.served, current_app.extensions.get("loanrisk_predlog")
        g.rows, probabilities = n, served.bundle.predict_input(columns)
        if log is not None:
            self._pending = (log, columns, probabilities, lambda: list(decoded.column("loanId")), n)
        return probabilities, explain_selected(
            served.bundle, columns, probabilities, served.threshold, *options, decoded.column
        )

    def answer(self, out: dict[str, Any]) -> Response:
        """The JSON answer; then what was scored is queued in the prediction log (when the service keeps one)."""
        response = json_response(out)
        if self._pending is not None:
            log, *pending = self._pending
            log.submit(self.served, self.endpoint, g.request_id, *pending)
        return response


@bp.get("/health")
def health() -> Response:
    holder = _holder()
    if (served := holder.current) is not None:
        g.model_version = served.version
    status, body = holder.health
    return json_response(body, status)


@bp.get("/ping")
def ping() -> Response:
    holder = _holder()
    if holder.current is None:
        return json_response({"status": "unavailable", "message": holder.load_error or ""}, 503)
    return json_response({"status": "ok"})


@bp.get("/model/info")
def model_info() -> Response:
    return json_response(_served().info_body)


@bp.get("/model/card")
def model_card() -> Response:
    """The served version's model card: HTML, or Markdown for ``Accept: text/markdown``."""
    served = _served()
    kind = request.accept_mimetypes.best_match(["text/html", "text/markdown"]) or "text/html"
    path = served.directory / (CARD_MARKDOWN if kind == "text/markdown" else CARD_HTML)
    if not path.is_file():
        raise ApiError(
            404, "no_model_card", f"model version {served.version} has no model card in its bundle"
        )
    return Response(path.read_bytes(), status=200, content_type=f"{kind}; charset=utf-8")


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(current_app.extensions["loanrisk_openapi"])


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = current_app.extensions["loanrisk_metrics"].render()
    return Response(body, status=200, content_type=content_type)


@bp.post("/predict")
def predict() -> Response:
    scoring = Scoring("/predict")
    decoded = requests.one_record(read_body())
    options = reason_options(request.args, scoring.config.reason_count)
    (probability,), reasons = scoring.score(decoded, True, options)
    served, echo = scoring.served, decoded.loan_ids()[0]
    out: dict[str, Any] = {} if echo is UNSET else {"loanId": echo}
    out.update(
        probability=probability,
        label=int(probability >= served.threshold),
        threshold=served.threshold,
        model_name=served.name,
        model_version=served.version,
    )
    if reasons and reasons[0] is not None:
        out["reasons"] = reasons[0]
    warn(out, sorted(decoded.unknown))
    if scoring.warnings:
        out.setdefault("warnings", []).append(scoring.warnings[0])
    return scoring.answer(out)


@bp.post("/predict/batch")
def predict_batch() -> Response:
    """A prediction per valid record and an error per other one; ``?on_error=reject``: the first error, for all."""
    scoring = Scoring("/predict/batch")
    if (on_error := request.args.get("on_error", "record")) not in ("record", "reject"):
        message = f"'on_error' must be record or reject; got {shown(on_error)}"
        raise ApiError(400, "invalid_parameter", message, "on_error")
    options = reason_options(request.args, scoring.config.reason_count)
    decoded = requests.batch(read_body(), scoring.config.max_batch_size)
    probabilities, reasons = scoring.score(decoded, on_error == "reject", options)
    threshold = scoring.served.threshold
    predictions: list[dict[str, Any]] = []
    found_all = reasons or [None] * len(probabilities)
    for index, p, echo, found in zip(
        decoded.positions, probabilities, decoded.loan_ids(), found_all, strict=True
    ):
        prediction = {"index": index, "probability": p, "label": 1 if p >= threshold else 0}
        if echo is not UNSET:
            prediction["loanId"] = echo
        if found is not None:
            prediction["reasons"] = found
        predictions.append(prediction)
    for k, warning in scoring.warnings.items():
        predictions[k]["warnings"] = [warning]
    out: dict[str, Any] = {
        "predictions": predictions,
        "errors": [e.entry() for e in decoded.errors],
        "count": decoded.size,
        "scored": len(predictions),
        "rejected": len(decoded.errors),
        "threshold": threshold,
        "model_name": scoring.served.name,
        "model_version": scoring.served.version,
    }
    warn(out, sorted(decoded.unknown))
    return scoring.answer(out)


@bp.post("/invocations")
def invocations() -> Response:
    """MLflow's scoring protocol, all or nothing; reasons opt-in through ``params``."""
    scoring = Scoring("/invocations")
    limit = scoring.config.max_batch_size
    if request.mimetype in ("text/csv", "application/csv"):
        decoded = requests.csv_records(read_body(), limit)
    else:
        decoded, _ = requests.invocation(read_body(), limit)
    options = reason_options(decoded.params, scoring.config.reason_count, "none", "params.")
    probabilities, reasons = scoring.score(decoded, True, options)
    return scoring.answer({"predictions": probabilities} | ({} if reasons is None else {"reasons": reasons}))


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
    """The bundle directory a reload asks for: the body's ``bundle_dir``, else the configured or current one."""
    directory: str | Path | None = None
    if (body := read_body()).strip():
        if type(payload := requests.parse_json(body)) is not dict:
            raise ApiError(400, "invalid_request", 'expected a JSON object like {"bundle_dir": "/path"}')
        directory = payload.get("bundle_dir")
        if directory is not None and (type(directory) is not str or not directory.strip()):
            raise ApiError(400, "invalid_request", "bundle_dir must be a directory path", "bundle_dir")
    if directory is None:
        directory = _config().bundle_dir or (holder.current.directory if holder.current else None)
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
    directory, previous = _reload_directory(holder), holder.current
    try:
        served, token = holder.reload(directory)
    except Exception as exc:  # BundleError, or an unreadable path: the client named a bundle we cannot load
        raise ApiError(422, "invalid_bundle", str(exc), "bundle_dir") from None
    g.model_version = served.version
    timeout = _config().reload_timeout
    outcome, workers = holder.wait_for_workers(token, timeout)
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
    states = "; ".join(
        f"pid {w.get('pid')}: {w.get('state')} ({w.get('error') or 'no error yet'})" for w in pending
    )
    message = f"{len(pending)} of {len(workers)} workers do not serve version {served.version} after {timeout:g} s: "
    raise ApiError(503, "reload_incomplete", message + states, extra=summary)


@bp.get("/model/workers")
def model_workers() -> Response:
    """Each live worker's state and the bundle they were asked to serve."""
    _require_admin()
    return json_response({"target": _holder().read_target(), "workers": _holder().workers()})
