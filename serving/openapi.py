"""The OpenAPI document, generated from the request model (:mod:`serving.requests`) and the answer models here
(answers are built as dicts; tests/serving/test_schemathesis.py checks them against these structs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from serving.config import DEFAULT_MAX_BATCH_SIZE, MAX_REASON_COUNT, RECORD_BYTES
from serving.requests import BatchRequest, InvocationsRequest, LoanApplication

Probability = Annotated[float, msgspec.Meta(ge=0, le=1, description="Probability that the loan is risky.")]
Label = Annotated[Literal[0, 1], msgspec.Meta(description="1 = risky (probability >= threshold), 0 = good.")]
_UNSET = msgspec.UNSET


class Reason(msgspec.Struct):
    """One principal reason for the score: a code of the model's reviewed table, whose features together
    raised the risk by ``contribution`` (SHAP, log-odds)."""

    code: str
    text: str
    feature: str
    value: Any
    contribution: Annotated[float, msgspec.Meta(gt=0)]


Reasons = Annotated[list[Reason], msgspec.Meta(max_length=MAX_REASON_COUNT)]


class _Answer(msgspec.Struct, omit_defaults=True, kw_only=True):
    threshold: float
    model_version: str | None
    model_name: str | msgspec.UnsetType = _UNSET
    warnings: list[str] | msgspec.UnsetType = _UNSET
    unknown_fields: list[str] | msgspec.UnsetType = _UNSET


class Prediction(_Answer, omit_defaults=True):
    probability: Probability
    label: Label
    loanId: str | None | msgspec.UnsetType = _UNSET
    reasons: Reasons | msgspec.UnsetType = _UNSET


class BatchPrediction(msgspec.Struct, omit_defaults=True):
    index: int
    probability: Probability
    label: Label
    loanId: str | None | msgspec.UnsetType = _UNSET
    reasons: Reasons | msgspec.UnsetType = _UNSET


class RecordError(msgspec.Struct):
    """A record that was not scored: its index in the request, the field at fault and why."""

    index: int
    field: str | None
    error: str
    message: str


class BatchResponse(_Answer, omit_defaults=True):
    predictions: list[BatchPrediction]
    errors: list[RecordError]
    count: int
    scored: int
    rejected: int


class InvocationsResponse(msgspec.Struct, omit_defaults=True):
    predictions: list[Probability]
    reasons: list[Reasons | None] | msgspec.UnsetType = _UNSET


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "degraded", "unavailable"]
    model_name: str | None | msgspec.UnsetType = _UNSET
    model_version: str | None | msgspec.UnsetType = _UNSET
    wanted_version: str | None | msgspec.UnsetType = _UNSET
    error: str | None | msgspec.UnsetType = _UNSET
    message: str | msgspec.UnsetType = _UNSET


class ModelInfo(msgspec.Struct, omit_defaults=True):
    name: str
    version: str | None
    features: list[str]
    categorical_features: list[str]
    threshold: float
    metrics: dict[str, float | None] | msgspec.UnsetType = _UNSET
    data_fingerprint: dict[str, Any] | msgspec.UnsetType = _UNSET
    params: dict[str, Any] | msgspec.UnsetType = _UNSET
    run_id: str | None | msgspec.UnsetType = _UNSET
    feature_version: str | msgspec.UnsetType = _UNSET
    bundle_format: int | msgspec.UnsetType = _UNSET
    created_at: str | None | msgspec.UnsetType = _UNSET
    reason_codes: dict[str, Any] | None | msgspec.UnsetType = _UNSET
    decision_policy: dict[str, Any] | msgspec.UnsetType = _UNSET
    calibrator: dict[str, Any] | None | msgspec.UnsetType = _UNSET
    model_card: bool | msgspec.UnsetType = _UNSET
    notes: list[str] | msgspec.UnsetType = _UNSET


class ReloadRequest(msgspec.Struct, omit_defaults=True):
    bundle_dir: str | msgspec.UnsetType = _UNSET


class WorkerState(msgspec.Struct, omit_defaults=True):
    pid: int
    state: Literal["loading", "loaded", "failed"]
    worker: str | msgspec.UnsetType = _UNSET
    token: str | None | msgspec.UnsetType = _UNSET
    wanted_version: str | None | msgspec.UnsetType = _UNSET
    model_version: str | None | msgspec.UnsetType = _UNSET
    bundle_dir: str | None | msgspec.UnsetType = _UNSET
    error: str | None | msgspec.UnsetType = _UNSET
    attempts: int | msgspec.UnsetType = _UNSET
    updated_at: float | msgspec.UnsetType = _UNSET


class ReloadResponse(msgspec.Struct, omit_defaults=True):
    status: Literal["reloaded"]
    model_version: str | None
    workers: list[WorkerState]
    model_name: str | msgspec.UnsetType = _UNSET
    previous_version: str | None | msgspec.UnsetType = _UNSET
    bundle_dir: str | msgspec.UnsetType = _UNSET


class ReloadIncomplete(msgspec.Struct, omit_defaults=True):
    error: Literal["reload_incomplete", "reload_superseded"]
    message: str
    workers: list[WorkerState]
    model_version: str | None | msgspec.UnsetType = _UNSET
    model_name: str | msgspec.UnsetType = _UNSET
    previous_version: str | None | msgspec.UnsetType = _UNSET
    bundle_dir: str | msgspec.UnsetType = _UNSET
    field: str | None | msgspec.UnsetType = _UNSET
    index: int | None | msgspec.UnsetType = _UNSET


class Workers(msgspec.Struct):
    target: dict[str, Any] | None
    workers: list[WorkerState]


class Error(msgspec.Struct, omit_defaults=True):
    """Every error answer: a stable code, a message, and the field and record index at fault when known."""

    error: str
    message: str
    field: str | None | msgspec.UnsetType = _UNSET
    index: int | None | msgspec.UnsetType = _UNSET


MODELS = (LoanApplication, BatchRequest, InvocationsRequest, ReloadRequest, Prediction, BatchResponse,
          InvocationsResponse, Health, ModelInfo, ReloadResponse, ReloadIncomplete, Workers, Error)  # fmt: skip
_ERRORS = {
    400: "Malformed JSON or a request of the wrong shape (names the field and record index).",
    401: "Missing or wrong admin token.",
    403: "Model reload is disabled (no admin token configured).",
    404: "The served bundle has no model card.",
    413: "Body larger than the body limit, or more records than the batch limit.",
    422: "A field holds a value outside the contract (names the field and record index).",
    503: "No model is loaded.",
}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json("Error", _ERRORS[c]) for c in codes}


def _operation(
    op_id: str, summary: str, responses: dict[str, Any], body: str | None = None, **extra: Any
) -> Any:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses, **extra}
    if body is not None:
        out["requestBody"] = {
            "required": body != "ReloadRequest",
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return out


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def openapi_document(max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_body_bytes: int = 0) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every endpoint, its limits stated (a body limit of 0: the service's default)."""
    max_body_bytes = max_body_bytes or max_batch_size * RECORD_BYTES
    _, schemas = msgspec.json.schema_components(MODELS, ref_template="#/components/schemas/{name}")
    limits = f" At most {max_batch_size} records and {max_body_bytes} bytes per request."
    reasons = [
        _query(
            "reasons", {"enum": ["risky", "all", "none"], "default": "risky"}, "Which records get reasons."
        ),
        _query(
            "reason_count", {"type": "integer", "minimum": 1, "maximum": MAX_REASON_COUNT}, "Reasons each."
        ),
    ]
    batch_params = [
        *reasons,
        _query(
            "on_error",
            {"enum": ["record", "reject"], "default": "record"},
            "record: score every valid record and list the others in errors; reject: "
            "answer the first error for the whole batch (422/400).",
        ),
    ]
    scored = _errors(400, 413, 422, 503)
    invocations = _operation(
        "invocations",
        "MLflow's scoring protocol (all or nothing)." + limits,
        {"200": _json("InvocationsResponse", "Probabilities, in request order."), **scored},
        "InvocationsRequest",
    )
    invocations["requestBody"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    admin = [{"bearerAuth": []}]
    paths = {
        "/health": {
            "get": _operation(
                "health",
                "Liveness and readiness.",
                {"200": _json("Health", "A model is loaded."), "503": _json("Health", "No model is loaded.")},
            )
        },
        "/ping": {
            "get": _operation(
                "ping",
                "MLflow's health check.",
                {"200": _json("Health", "A model is loaded."), "503": _json("Health", "No model.")},
            )
        },
        "/model/info": {
            "get": _operation(
                "modelInfo",
                "The model served.",
                {"200": _json("ModelInfo", "The model's metadata."), **_errors(503)},
            )
        },
        "/model/card": {
            "get": _operation(
                "modelCard",
                "The model card (HTML, or Markdown for Accept: text/markdown).",
                {
                    "200": {
                        "description": "The model card.",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404, 503),
                },
            )
        },
        "/predict": {
            "post": _operation(
                "predict",
                "Score one loan application.",
                {"200": _json("Prediction", "The prediction."), **scored},
                "LoanApplication",
                parameters=reasons,
            )
        },
        "/predict/batch": {
            "post": _operation(
                "predictBatch",
                "Score many applications, record by record." + limits,
                {
                    "200": _json(
                        "BatchResponse", "A prediction per valid record and an error per other one, by index."
                    ),
                    **scored,
                },
                "BatchRequest",
                parameters=batch_params,
            )
        },
        "/invocations": {"post": invocations},
        "/model/reload": {
            "post": _operation(
                "reloadModel",
                "Load a bundle, then swap it in on every worker.",
                {
                    "200": _json("ReloadResponse", "Every live worker serves the new model."),
                    **_errors(400, 401, 403, 413, 422),
                    "409": _json("ReloadIncomplete", "Another reload was published meanwhile."),
                    "503": _json("ReloadIncomplete", "Not every worker serves the new model in time."),
                },
                "ReloadRequest",
                security=admin,
            )
        },
        "/model/workers": {
            "get": _operation(
                "modelWorkers",
                "Each live worker's state.",
                {"200": _json("Workers", "Every live worker's state."), **_errors(401, 403)},
                security=admin,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics.",
                {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document.",
                {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loan default risk service",
            "version": "2",
            "description": "Probability that a loan application is risky, from a CatBoost model bundle.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
