"""The prediction service: a Flask application factory.

Request path (no pandas): body bytes → orjson → :func:`serving.features.build_rows` → CatBoost → orjson bytes.
The model lives in a :class:`ModelHolder`; a handler takes the current :class:`ServedModel` once and uses it
to the end, so a reload (load the new bundle fully, then swap one reference) never disturbs a request in flight.

Under gunicorn with several workers, a reload received by one worker is published through a small sync file
(``LOANRISK_RELOAD_SYNC_FILE``, set up by ``serving/gunicorn_conf.py``); the other workers notice it on their
next request and load the same bundle in the background, then swap.
"""

from __future__ import annotations

import csv
import hmac
import io
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from serving.bundle import Bundle, BundleError, load_bundle
from serving.config import ServiceConfig
from serving.features import KNOWN_FIELDS, FeatureError, build_row, build_rows, columns_to_records
from serving.logs import ACCESS_LOGGER, LOGGER_NAME, configure_logging
from serving.metrics import Metrics, get_metrics
from serving.schemas import openapi_document

REFERENCE_TOLERANCE = 1e-6
REFERENCE_LIMIT = 200
MAX_UNKNOWN_NAMED = 50
SYNC_CHECK_INTERVAL_S = 0.25
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# Field names an error may carry that are ours, not the client's (logs name no other client-chosen key).
_STRUCTURAL_FIELDS = frozenset(
    {"data", "bundle_dir", *_MLFLOW_KEYS, "dataframe_split.data", "dataframe_split.columns"}
)

logger = logging.getLogger(LOGGER_NAME)
access_logger = logging.getLogger(ACCESS_LOGGER)


class ApiError(Exception):
    """A client error answered as ``{"error", "message", "field", "index"}`` with a 4xx status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.index, self.headers = field, index, headers


def _feature_error(exc: FeatureError, index: int | None = None) -> ApiError:
    idx = exc.index if exc.index is not None else index
    where = f"record {idx}, " if idx is not None else ""
    return ApiError(422, "invalid_value", f"{where}field '{exc.field}': {exc.message}", exc.field, idx)


# --- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """A loaded bundle plus what every answer repeats, precomputed."""

    bundle: Bundle
    name: str
    version: str | None
    threshold: float
    directory: Path
    info_body: bytes
    health_body: bytes

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ServedModel:
        meta = bundle.meta
        info = {
            "name": meta.model_name,
            "version": meta.model_version,
            "features": list(meta.features),
            "categorical_features": list(meta.categorical_features),
            "threshold": float(meta.threshold),
            "metrics": meta.metrics,
            "data_fingerprint": meta.data_fingerprint,
            "params": meta.params,
            "run_id": meta.run_id,
            "feature_version": meta.feature_version,
            "bundle_format": meta.bundle_format,
            "created_at": meta.created_at,
        }
        health = {"status": "ok", "model_name": meta.model_name, "model_version": meta.model_version}
        return cls(
            bundle=bundle,
            name=meta.model_name,
            version=meta.model_version,
            threshold=float(meta.threshold),
            directory=bundle.directory,
            info_body=orjson.dumps(info, default=str),
            health_body=orjson.dumps(health),
        )


def check_reference(
    bundle: Bundle, limit: int = REFERENCE_LIMIT, tolerance: float = REFERENCE_TOLERANCE
) -> int:
    """Score the bundle's reference records and compare with training's probabilities; returns rows checked.

    Raises :class:`BundleError` when this code does not reproduce what training computed (a feature skew).
    Without a reference it scores one all-missing row, which also warms the model up.
    """
    reference = bundle.reference()
    if not reference or not reference.get("records"):
        bundle.predict_rows([build_row({})])
        return 0
    records = reference["records"][:limit]
    expected = reference.get("probabilities") or []
    try:
        got = bundle.predict_records(records)
    except FeatureError as exc:
        raise BundleError(
            f"{bundle.directory}: reference record unreadable by this service ({exc})"
        ) from None
    for i, (e, p) in enumerate(zip(expected, got, strict=False)):
        if e is None or not math.isfinite(float(e)) or abs(float(e) - p) > tolerance:
            raise BundleError(
                f"{bundle.directory}: reference record {i} scores {p:.9f} here but {e} in training "
                "(training and serving features differ)"
            )
    return len(records)


class ModelHolder:
    """The current model; swapped whole by :meth:`load`, read once per request through :attr:`current`."""

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.load_error: str | None = None
        self._load_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._sync_token: str | None = None
        self._sync_seen: int | None = None
        self._next_sync_check = 0.0
        self._syncing = False

    # loading
    def load(self, directory: str | Path, origin: str) -> ServedModel:
        """Load and check a bundle fully, then swap it in; raises :class:`BundleError` and keeps the old one."""
        with self._load_lock:
            t0 = time.perf_counter()
            try:
                bundle = load_bundle(directory, thread_count=self.config.model_threads)
                checked = check_reference(bundle) if self.config.verify_reference else 0
                served = ServedModel.from_bundle(bundle)
            except BundleError as exc:
                self.metrics.reloads.labels("failed").inc()
                logger.error("model load failed", extra={"fields": {"origin": origin, "error": str(exc)}})
                raise
            except Exception as exc:  # a corrupt model file, unreadable directory, odd path, ...
                self.metrics.reloads.labels("failed").inc()
                logger.error("model load failed", extra={"fields": {"origin": origin, "error": repr(exc)}})
                raise BundleError(f"{directory}: cannot load bundle ({type(exc).__name__}: {exc})") from exc
            previous = self.current
            self.current = served  # the swap: requests in flight keep the model they took
            self.load_error = None
            self.metrics.set_model(
                served.name, served.version, (previous.name, previous.version or "") if previous else None
            )
            self.metrics.reloads.labels("ok").inc()
            logger.info(
                "model loaded",
                extra={
                    "fields": {
                        "origin": origin,
                        "model_name": served.name,
                        "model_version": served.version,
                        "previous_version": previous.version if previous else None,
                        "bundle_dir": str(served.directory),
                        "reference_rows_checked": checked,
                        "load_ms": round((time.perf_counter() - t0) * 1000, 1),
                    }
                },
            )
            return served

    # sharing reloads between gunicorn workers
    def _read_sync(self) -> dict[str, Any] | None:
        path = self.config.reload_sync_file
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("bundle_dir"), str) else None

    def initial_directory(self) -> Path | None:
        """The bundle a starting worker serves: the last reload published to its siblings, else the setting."""
        data = self._read_sync()
        if data is not None:
            self._sync_token = data.get("token")
            return Path(data["bundle_dir"])
        return self.config.bundle_dir

    def publish(self, served: ServedModel) -> None:
        path = self.config.reload_sync_file
        if path is None:
            return
        token = uuid.uuid4().hex
        data = {
            "bundle_dir": str(served.directory.resolve()),
            "token": token,
            "model_version": served.version,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
            with self._sync_lock:
                self._sync_token = token
                self._sync_seen = path.stat().st_mtime_ns
        except OSError as exc:
            logger.warning(
                "could not publish reload to other workers", extra={"fields": {"error": repr(exc)}}
            )

    def maybe_sync(self) -> None:
        """Pick up a reload another worker published (checked at most every 0.25 s, loaded in background)."""
        path = self.config.reload_sync_file
        if path is None:
            return
        now = time.monotonic()
        if now < self._next_sync_check or not self._sync_lock.acquire(blocking=False):
            return
        try:
            self._next_sync_check = now + SYNC_CHECK_INTERVAL_S
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                return
            if mtime == self._sync_seen or self._syncing:
                return
            data = self._read_sync()
            self._sync_seen = mtime
            if data is None or data.get("token") == self._sync_token:
                return
            self._syncing = True
            threading.Thread(target=self._sync_load, args=(data,), name="bundle-sync", daemon=True).start()
        finally:
            self._sync_lock.release()

    def _sync_load(self, data: dict[str, Any]) -> None:
        try:
            self.load(data["bundle_dir"], origin="sync")
            self._sync_token = data.get("token")
        except BundleError:
            pass  # logged by load(); keep serving the current model
        finally:
            self._syncing = False


# --- request helpers ---------------------------------------------------------------------------------------


def _json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(obj, default=str), status=status, headers=headers, mimetype="application/json"
    )


def _raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/json")


def _read_body() -> bytes:
    """The request body, at most ``MAX_CONTENT_LENGTH`` bytes (413 beyond), with or without Content-Length."""
    limit = request.max_content_length or sys.maxsize
    length = request.content_length
    too_large = ApiError(413, "body_too_large", f"request body is larger than the limit of {limit} bytes")
    if length is not None:
        if length > limit:
            raise too_large
        if length:
            data = _read_gunicorn_body(request.environ.get("wsgi.input"), length)
            if data is not None:
                return data
        try:
            return request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # no Content-Length and no chunked framing: no body (WSGI)
    data = request.environ["wsgi.input"].read(limit + 1)  # chunked: the server de-chunks
    if len(data) > limit:
        raise too_large
    return data


def _read_gunicorn_body(stream: Any, length: int) -> bytes | None:
    """Read a Content-Length body from gunicorn's reader in one call, or None when that does not apply.

    gunicorn's ``Body.read`` pulls the body 1 KiB at a time through Python code: ~13 ms for a 5 MB batch of
    1,000 records, against ~3 ms when its ``LengthReader`` is asked for the whole length at once. Only used
    while the Body has buffered nothing (the first read); any other server goes through werkzeug.
    """
    reader = getattr(stream, "reader", None)
    buffered = getattr(stream, "buf", None)
    if type(reader).__name__ != "LengthReader" or buffered is None or buffered.tell() != 0:
        return None
    data = reader.read(length)
    if len(data) != length:
        raise ApiError(400, "incomplete_body", f"request body ended after {len(data)} of {length} bytes")
    return data


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "invalid_json", "request body is empty: send a JSON document")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # Python's json accepts NaN/Infinity, as json.dumps of a pandas row writes them
            return json.loads(body)
        except Exception:
            raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None


def _check_records(records: list[Any], field: str = "data") -> None:
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise ApiError(
                400,
                "invalid_record",
                f"record {i}: expected a JSON object of field names to values, got {_json_type(record)}",
                field,
                i,
            )


def _check_size(records: list[Any], field: str, limit: int) -> None:
    if not records:
        raise ApiError(400, "empty_batch", f"'{field}' holds no records: send at least one", field, None)
    if len(records) > limit:
        raise ApiError(
            413,
            "batch_too_large",
            f"{len(records)} records in '{field}'; the limit is {limit} per request",
            field,
        )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _loan_id(record: dict[str, Any], index: int) -> Any:
    value = record.get("loanId")
    if value is None or type(value) is str:
        return value
    if type(value) in (int, float):
        return str(value)
    raise ApiError(
        422, "invalid_value", f"record {index}, field 'loanId': expected a string", "loanId", index
    )


def _unknown(records: list[dict[str, Any]]) -> list[str]:
    names: set[str] = set()
    known = KNOWN_FIELDS.issuperset  # a C loop over the keys, no allocation, for the common all-known case
    for record in records:
        if not known(record):
            names.update(k for k in record if k not in KNOWN_FIELDS)
    return sorted(names)


def _warn(out: dict[str, Any], unknown: list[str]) -> None:
    if unknown:
        shown = unknown[:MAX_UNKNOWN_NAMED]
        more = f" and {len(unknown) - len(shown)} more" if len(unknown) > len(shown) else ""
        out["unknown_fields"] = shown
        out["warnings"] = [f"ignored unknown fields: {', '.join(shown)}{more}"]


def _csv_records(body: bytes) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_csv", f"CSV body is not UTF-8: {exc}") from None
    try:
        records = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise ApiError(400, "invalid_csv", f"malformed CSV: {exc}") from None
    for i, record in enumerate(records):
        if None in record:
            raise ApiError(400, "invalid_csv", f"CSV row {i} has more values than the header", "data", i)
    return records


def _mlflow_records(payload: Any) -> tuple[list[Any], str, list[str] | None]:
    """Records (or, for dataframe_split, rows plus their columns) from MLflow's scoring protocol."""
    if type(payload) is not dict:
        raise ApiError(
            400, "invalid_request", f"expected a JSON object with one of {', '.join(_MLFLOW_KEYS)}"
        )
    keys = [k for k in _MLFLOW_KEYS if k in payload]
    if len(keys) != 1:
        raise ApiError(
            400,
            "invalid_request",
            f"expected exactly one of {', '.join(_MLFLOW_KEYS)}; got {', '.join(keys) or 'none'}",
            keys[0] if keys else None,
        )
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        if type(value) is not dict:
            raise ApiError(
                400, "invalid_request", "dataframe_split must be an object with columns and data", key
            )
        columns, data = value.get("columns"), value.get("data")
        if type(columns) is not list or not all(type(c) is str for c in columns):
            raise ApiError(
                400, "invalid_request", "dataframe_split.columns must be a list of names", f"{key}.columns"
            )
        if type(data) is not list:
            raise ApiError(
                400, "invalid_request", "dataframe_split.data must be a list of rows", f"{key}.data"
            )
        if len(set(columns)) != len(columns):
            raise ApiError(400, "invalid_request", "dataframe_split.columns repeats a name", f"{key}.columns")
        return data, f"{key}.data", columns
    if type(value) is list:
        return value, key, None
    if key == "inputs" and type(value) is dict:
        lists = [v for v in value.values() if type(v) is list]
        if not lists:
            return [value], key, None  # one record given as an object of scalars
        if len(lists) != len(value):
            raise ApiError(400, "invalid_request", "inputs: give every column as a list, or none", key)
        length = len(lists[0])
        for name, column in value.items():
            if len(column) != length:
                raise ApiError(400, "invalid_request", f"inputs: column '{name}' has {len(column)} values, "
                               f"expected {length}", name)  # fmt: skip
        names = list(value)
        return [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)], key, None
    raise ApiError(400, "invalid_request", f"{key} must be a list of records", key)


# --- the application ---------------------------------------------------------------------------------------


def create_app(config: ServiceConfig | Mapping[str, Any] | None = None) -> Flask:
    """The Flask app; ``config`` is a :class:`ServiceConfig`, a mapping of its fields, or None (env vars)."""
    if config is None:
        config = ServiceConfig.from_env()
    elif not isinstance(config, ServiceConfig):
        config = ServiceConfig(**dict(config))
    configure_logging(config.log_level)
    metrics = get_metrics()
    holder = ModelHolder(config, metrics)

    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.extensions["loanrisk"] = holder
    app.extensions["loanrisk_config"] = config
    openapi_body = orjson.dumps(openapi_document(max_batch_size=config.max_batch_size))

    directory = holder.initial_directory()
    if directory is None:
        holder.load_error = "no model bundle configured (set LOANRISK_BUNDLE_DIR or POST /model/reload)"
        logger.warning("no model loaded", extra={"fields": {"reason": holder.load_error}})
    else:
        try:
            holder.load(directory, origin="start")
        except BundleError as exc:
            holder.load_error = str(exc)

    def served_model() -> ServedModel:
        served = holder.current
        if served is None:
            raise ApiError(503, "model_unavailable", holder.load_error or "no model is loaded")
        g.model_version = served.version
        return served

    def score(served: ServedModel, records: list[Any]) -> list[float]:
        """Model rows for the records (a bad field is a 4xx naming it), scored and counted."""
        try:
            rows = build_rows(records)
        except FeatureError as exc:
            raise _feature_error(exc) from None
        probabilities = served.bundle.predict_rows(rows)
        count(len(rows))
        return probabilities

    def count(n: int) -> None:
        g.rows = n

    # --- hooks: timing, metrics and one JSON log line per request ---
    @app.before_request
    def _start() -> None:
        g.t0 = time.perf_counter()
        holder.maybe_sync()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("t0", time.perf_counter())
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "<unmatched>"
        method = request.method
        rows = g.get("rows", 0)
        metrics.observe_request(
            endpoint, method, response.status_code, elapsed, rows if response.status_code == 200 else 0
        )
        rid = request.headers.get("X-Request-ID", "")
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        response.headers["X-Request-ID"] = rid
        if access_logger.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "request_id": rid,
                "method": method[:16],
                "endpoint": endpoint,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 3),
                "rows": rows,
                "model_version": g.get("model_version"),
            }
            err = g.get("error")
            if err is not None:
                fields.update(err)
            access_logger.info("request", extra={"fields": fields})
        return response

    # --- errors: always JSON ---
    def _error_response(status: int, code: str, message: str, field: str | None = None, index: int | None = None,
                        headers: Mapping[str, str] | None = None) -> Response:  # fmt: skip
        logged_field = (
            field if field is None or field in KNOWN_FIELDS or field in _STRUCTURAL_FIELDS else "<other>"
        )
        g.error = {"error": code, "field": logged_field, "index": index}
        body = {"error": code, "message": message, "field": field, "index": index}
        return _json_response(body, status, headers)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.message, exc.field, exc.index, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _error_response(
                413, "body_too_large", f"request body is larger than {config.max_body_bytes} bytes"
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        headers = {"Allow": ", ".join(exc.valid_methods)} if getattr(exc, "valid_methods", None) else None
        return _error_response(status, code, exc.description or exc.name, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"endpoint": request.url_rule.rule if request.url_rule else None}},
        )
        return _error_response(500, "internal_error", "the service failed to answer; see its logs")

    # --- endpoints ---
    @app.get("/health")
    def health() -> Response:
        served = holder.current
        if served is None:
            body = {"status": "unavailable", "error": "model_unavailable", "message": holder.load_error or ""}
            return _json_response(body, 503)
        g.model_version = served.version
        return _raw_json_response(served.health_body)

    @app.get("/ping")
    def ping() -> Response:
        if holder.current is None:
            return _json_response({"status": "unavailable", "message": holder.load_error or ""}, 503)
        return _json_response({"status": "ok"})

    @app.get("/model/info")
    def model_info() -> Response:
        return _raw_json_response(served_model().info_body)

    @app.post("/predict")
    def predict() -> Response:
        served = served_model()
        record = _parse_json(_read_body())
        if type(record) is not dict:
            raise ApiError(
                400,
                "invalid_request",
                f"expected a JSON object with the fields of one loan application, got {_json_type(record)}",
                None,
                0,
            )
        loan_id = _loan_id(record, 0)
        try:
            row = build_row(record)
        except FeatureError as exc:
            raise _feature_error(exc, 0) from None
        probability = served.bundle.predict_rows([row])[0]
        count(1)
        out: dict[str, Any] = {}
        if "loanId" in record:
            out["loanId"] = loan_id
        out["probability"] = probability
        out["label"] = int(probability >= served.threshold)
        out["threshold"] = served.threshold
        out["model_name"] = served.name
        out["model_version"] = served.version
        _warn(out, _unknown([record]))
        return _json_response(out)

    @app.post("/predict/batch")
    def predict_batch() -> Response:
        served = served_model()
        payload = _parse_json(_read_body())
        if type(payload) is not dict or "data" not in payload:
            raise ApiError(400, "invalid_request", 'expected a JSON object {"data": [records]}', "data")
        records = payload["data"]
        if type(records) is not list:
            raise ApiError(400, "invalid_request", f"'data' must be a list of records, got {_json_type(records)}",
                           "data")  # fmt: skip
        _check_size(records, "data", config.max_batch_size)
        _check_records(records)
        probabilities = score(served, records)
        threshold = served.threshold
        predictions: list[dict[str, Any]] = []
        append = predictions.append
        for i, (record, p) in enumerate(zip(records, probabilities, strict=True)):
            if "loanId" in record:
                append({"probability": p, "label": 1 if p >= threshold else 0, "loanId": _loan_id(record, i)})
            else:
                append({"probability": p, "label": 1 if p >= threshold else 0})
        out: dict[str, Any] = {
            "predictions": predictions,
            "count": len(predictions),
            "threshold": threshold,
            "model_name": served.name,
            "model_version": served.version,
        }
        _warn(out, _unknown(records))
        return _json_response(out)

    @app.post("/invocations")
    def invocations() -> Response:
        served = served_model()
        body = _read_body()
        if request.mimetype in ("text/csv", "application/csv"):
            records, field, columns = _csv_records(body), "data", None
        else:
            records, field, columns = _mlflow_records(_parse_json(body))
        _check_size(records, field, config.max_batch_size)
        if columns is not None:
            try:
                records = columns_to_records(columns, records)
            except FeatureError as exc:
                raise ApiError(
                    400, "invalid_request", f"row {exc.index}: {exc.message}", field, exc.index
                ) from None
        _check_records(records, field)
        return _json_response({"predictions": score(served, records)})

    @app.post("/model/reload")
    def reload_model() -> Response:
        if not config.reload_enabled:
            raise ApiError(
                403,
                "reload_disabled",
                "model reload is disabled: start the service with LOANRISK_ADMIN_TOKEN set to enable it",
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
        body = _read_body()
        directory: str | Path | None = None
        if body.strip():
            payload = _parse_json(body)
            if type(payload) is not dict:
                raise ApiError(400, "invalid_request", 'expected a JSON object like {"bundle_dir": "/path"}')
            directory = payload.get("bundle_dir")
            if directory is not None and (type(directory) is not str or not directory.strip()):
                raise ApiError(400, "invalid_request", "bundle_dir must be a directory path", "bundle_dir")
        if directory is None:
            current = holder.current
            directory = config.bundle_dir or (current.directory if current else None)
        if directory is None:
            raise ApiError(
                400, "invalid_request", "no bundle directory configured: send bundle_dir", "bundle_dir"
            )
        previous = holder.current
        try:
            served = holder.load(directory, origin="reload")
        except BundleError as exc:
            raise ApiError(422, "invalid_bundle", str(exc), "bundle_dir") from None
        holder.publish(served)
        g.model_version = served.version
        return _json_response(
            {
                "status": "reloaded",
                "model_name": served.name,
                "model_version": served.version,
                "previous_version": previous.version if previous else None,
                "bundle_dir": str(served.directory),
            }
        )

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, status=200, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return _raw_json_response(openapi_body)

    return app
