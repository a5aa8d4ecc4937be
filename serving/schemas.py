"""Request and response schemas of the service (JSON Schema, OpenAPI 3.0 dialect) and its OpenAPI document.

The handlers in :mod:`serving.routes` check requests by hand (faster than a validator, and the image carries
none); these schemas document exactly what they accept and answer, and ``GET /openapi.json`` serves them.

Over 400 lines on purpose: it is declarations only, one schema per request and answer and then the document
that links them, read top to bottom like a table; split, the contract would be read in several places.
"""

from __future__ import annotations

from typing import Any

from serving.config import MAX_REASON_COUNT
from serving.features import (
    CATEGORICAL_FEATURES,
    CLARITY_COLUMNS,
    FEATURE_NAMES,
    INDICATOR_FIELDS,
    INQUIRY_FIELDS,
    LOAN_COLUMNS,
    NUMERIC_INDICATORS,
    clarity_column,
)

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1"

# --- one loan application --------------------------------------------------------------------------------

_NUMBER = {
    "anyOf": [{"type": "number"}, {"type": "string"}],
    "nullable": True,
    "description": 'A number, or its CSV text ("590.0"); null or "" is a missing value.',
}
_FLAG = {
    "anyOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string"}],
    "nullable": True,
    "description": 'true/false, 1/0 or their CSV text ("True", "False"); null or "" is a missing value.',
}
_TEXT = {"type": "string", "nullable": True}
_TIMESTAMP = {
    "type": "string",
    "nullable": True,
    "description": "ISO 8601 time, e.g. 2016-02-23T17:29:01.940000 (taken as UTC when it has no offset).",
}

_LOAN_NUMBERS = ("apr", "nPaidOff", "loanAmount", "originallyScheduledPaymentAmount", "leadCost")
_LOAN_FLAGS = ("originated", "approved", "isFunded", "hasCF")
_LOAN_TIMES = ("applicationDate", "originatedDate")


def _field_schema(name: str) -> dict[str, Any]:
    if name in _LOAN_NUMBERS or name == "clearfraudscore":
        return dict(_NUMBER)
    if name in _LOAN_FLAGS:
        return dict(_FLAG)
    if name in _LOAN_TIMES:
        return dict(_TIMESTAMP)
    if name in {clarity_column("clearfraudinquiry", f) for f in INQUIRY_FIELDS}:
        return dict(_NUMBER)
    if name in {clarity_column("clearfraudindicator", f) for f in NUMERIC_INDICATORS}:
        return dict(_NUMBER)
    if name in {clarity_column("clearfraudindicator", f) for f in INDICATOR_FIELDS}:
        return dict(_FLAG)
    if name == clarity_column("clearfraudidentityverification", "overallmatchreasoncode"):
        return dict(_NUMBER)
    return dict(_TEXT)


LOAN_APPLICATION: dict[str, Any] = {
    "type": "object",
    "description": (
        "One loan application with the field names of loan.csv and clarity_underwriting_variables.csv "
        "(a CSV row posted as JSON works as is). Missing fields are missing values; outcome and identifier "
        "fields are never used as features; unknown fields are ignored and named in the answer's warnings."
    ),
    "properties": {name: _field_schema(name) for name in (*LOAN_COLUMNS, *CLARITY_COLUMNS)},
    "additionalProperties": True,
    "example": {
        "loanId": "LL-I-07399092",
        "payFrequency": "B",
        "apr": "590.0",
        "applicationDate": "2016-02-23T17:29:01.940000",
        "nPaidOff": "0.0",
        "loanAmount": "500.0",
        "originallyScheduledPaymentAmount": "978.27",
        "state": "IL",
        "leadType": "bvMandatory",
        "leadCost": "6",
        "clarityFraudId": "5669ef78e4b0c9d3936440e6",
        "hasCF": "1",
        "clearfraudscore": "879.0",
    },
}

_PROBABILITY = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "description": "Probability that the loan is risky.",
}
_LABEL = {"type": "integer", "enum": [0, 1], "description": "1 = risky (probability >= threshold), 0 = good."}
_VERSION = {"type": "string", "nullable": True, "description": "Registry version of the model served."}
_WARNINGS = {"type": "array", "items": {"type": "string"}}
_UNKNOWN = {
    "type": "array",
    "items": {"type": "string"},
    "description": "Unknown field names that were ignored.",
}
_LOAN_ID = {"type": "string", "nullable": True, "description": "The request's loanId, echoed."}
MAX_REASONS = MAX_REASON_COUNT
REASON: dict[str, Any] = {
    "type": "object",
    "description": (
        "One principal reason for the score: a reason code of the model's reviewed table (GET /model/info), "
        "whose features together raised the risk by `contribution` (SHAP, log-odds)."
    ),
    "required": ["code", "text", "feature", "value", "contribution"],
    "properties": {
        "code": {"type": "string", "example": "LR07"},
        "text": {"type": "string", "example": "Number of recent credit inquiries"},
        "feature": {"type": "string", "description": "The code's feature that contributed most."},
        "value": {
            "description": "That feature's value as the request sent it (derived features: the model's value)."
        },
        "contribution": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
    },
}
_REASONS = {
    "type": "array",
    "maxItems": MAX_REASONS,
    "items": {"$ref": "#/components/schemas/Reason"},
    "description": (
        "Present for a record the request's `reasons` selects (default: those labelled risky), largest "
        "contribution first; absent when the model's bundle has no reason-code table."
    ),
}
REASON_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "reasons",
        "in": "query",
        "required": False,
        "description": "Which records get reasons: risky (labelled 1, the default), all, or none.",
        "schema": {"type": "string", "enum": ["risky", "all", "none"], "default": "risky"},
    },
    {
        "name": "reason_count",
        "in": "query",
        "required": False,
        "description": "Most reasons per record (default: the service's LOANRISK_REASON_COUNT, 4).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_REASONS},
    },
]

PREDICTION: dict[str, Any] = {
    "type": "object",
    "required": ["probability", "label", "threshold", "model_version"],
    "properties": {
        "loanId": _LOAN_ID,
        "probability": _PROBABILITY,
        "label": _LABEL,
        "threshold": {"type": "number"},
        "model_name": {"type": "string"},
        "model_version": _VERSION,
        "reasons": _REASONS,
        "warnings": _WARNINGS,
        "unknown_fields": _UNKNOWN,
    },
}

BATCH_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "array",
            "minItems": 1,
            "items": {"$ref": "#/components/schemas/LoanApplication"},
            "description": "Loan applications; at most the service's maximum batch size (413 beyond).",
        }
    },
}

BATCH_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["predictions", "model_version", "threshold", "count"],
    "properties": {
        "predictions": {
            "type": "array",
            "description": "One answer per record, in request order.",
            "items": {
                "type": "object",
                "required": ["probability", "label"],
                "properties": {
                    "loanId": _LOAN_ID,
                    "probability": _PROBABILITY,
                    "label": _LABEL,
                    "reasons": _REASONS,
                },
            },
        },
        "count": {"type": "integer", "minimum": 0},
        "threshold": {"type": "number"},
        "model_name": {"type": "string"},
        "model_version": _VERSION,
        "warnings": _WARNINGS,
        "unknown_fields": _UNKNOWN,
    },
}

INVOCATIONS_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": (
        "MLflow's scoring protocol (as `mlflow models serve`): exactly one of dataframe_split, "
        "dataframe_records, inputs or instances, with raw loan application fields."
    ),
    "properties": {
        "dataframe_split": {
            "type": "object",
            "required": ["columns", "data"],
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "data": {"type": "array", "items": {"type": "array", "items": {}}},
                "index": {"type": "array", "items": {}},
            },
        },
        "dataframe_records": {"type": "array", "items": {"$ref": "#/components/schemas/LoanApplication"}},
        "inputs": {
            "description": "A list of records, or an object of columns (name -> list of values).",
            "anyOf": [
                {"type": "array", "items": {"$ref": "#/components/schemas/LoanApplication"}},
                {"type": "object", "additionalProperties": True},
            ],
        },
        "instances": {"type": "array", "items": {"$ref": "#/components/schemas/LoanApplication"}},
        "params": {
            "type": "object",
            "description": "MLflow's inference parameters. Reasons are opt-in here: `reasons` risky or all.",
            "properties": {
                "reasons": {"type": "string", "enum": ["risky", "all", "none"], "default": "none"},
                "reason_count": {"type": "integer", "minimum": 1, "maximum": MAX_REASONS},
            },
        },
    },
}

INVOCATIONS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["predictions"],
    "properties": {
        "predictions": {"type": "array", "items": _PROBABILITY},
        "reasons": {
            "type": "array",
            "description": "Only when params.reasons asked: per record, its reasons or null when not selected.",
            "items": {**_REASONS, "nullable": True},
        },
    },
}

HEALTH: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {
            "type": "string",
            "enum": ["ok", "degraded", "unavailable"],
            "description": "degraded: this worker serves model_version but could not load wanted_version.",
        },
        "model_name": {"type": "string", "nullable": True},
        "model_version": _VERSION,
        "wanted_version": _VERSION,
        "error": {"type": "string", "nullable": True},
        "message": {"type": "string"},
    },
}

MODEL_INFO: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "features", "categorical_features", "threshold"],
    "properties": {
        "name": {"type": "string"},
        "version": _VERSION,
        "features": {"type": "array", "items": {"type": "string"}, "example": list(FEATURE_NAMES[:3])},
        "categorical_features": {
            "type": "array",
            "items": {"type": "string"},
            "example": list(CATEGORICAL_FEATURES[:3]),
        },
        "threshold": {"type": "number"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number", "nullable": True}},
        "data_fingerprint": {"type": "object", "additionalProperties": True},
        "params": {"type": "object", "additionalProperties": True},
        "run_id": {"type": "string", "nullable": True},
        "feature_version": {"type": "string"},
        "bundle_format": {"type": "integer"},
        "created_at": {"type": "string", "nullable": True},
        "reason_codes": {
            "type": "object",
            "nullable": True,
            "description": "The bundle's reason-code table; null for a bundle without one (see notes).",
            "properties": {
                "version": {"type": "string"},
                "file": {"type": "string"},
                "codes": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["code", "text", "features"],
                        "properties": {
                            "code": {"type": "string"},
                            "text": {"type": "string"},
                            "features": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "decision_policy": {
            "type": "object",
            "additionalProperties": True,
            "description": "How the threshold was chosen (policy f1 or expected_cost, and its inputs).",
        },
        "calibrator": {
            "type": "object",
            "nullable": True,
            "additionalProperties": True,
            "description": "The calibrator applied to every served probability (isotonic or Platt); null: none.",
        },
        "model_card": {"type": "boolean", "description": "Whether GET /model/card has a card to serve."},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}

RELOAD_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": "Optional body; without bundle_dir the configured bundle directory is read again.",
    "properties": {"bundle_dir": {"type": "string", "description": "Bundle directory on the server."}},
}

WORKER_STATE: dict[str, Any] = {
    "type": "object",
    "required": ["pid", "state"],
    "properties": {
        "worker": {"type": "string"},
        "pid": {"type": "integer"},
        "state": {"type": "string", "enum": ["loading", "loaded", "failed"]},
        "token": {"type": "string", "nullable": True, "description": "The reload this worker works on."},
        "wanted_version": _VERSION,
        "model_version": _VERSION,
        "bundle_dir": {"type": "string", "nullable": True},
        "error": {"type": "string", "nullable": True},
        "attempts": {"type": "integer"},
        "updated_at": {"type": "number"},
    },
}

RELOAD_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["status", "model_version", "workers"],
    "properties": {
        "status": {"type": "string", "enum": ["reloaded"]},
        "model_name": {"type": "string"},
        "model_version": _VERSION,
        "previous_version": _VERSION,
        "bundle_dir": {"type": "string"},
        "workers": {"type": "array", "items": {"$ref": "#/components/schemas/WorkerState"}},
    },
}

RELOAD_INCOMPLETE: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message", "workers"],
    "description": "The bundle is published, but not every worker serves it (yet): each worker's state.",
    "properties": {
        **RELOAD_RESPONSE["properties"],
        "error": {"type": "string", "enum": ["reload_incomplete", "reload_superseded"]},
        "message": {"type": "string"},
        "field": {"type": "string", "nullable": True},
        "index": {"type": "integer", "nullable": True},
    },
}

WORKERS: dict[str, Any] = {
    "type": "object",
    "required": ["target", "workers"],
    "properties": {
        "target": {
            "type": "object",
            "nullable": True,
            "description": "The bundle the last reload published to every worker (null before any reload).",
            "properties": {
                "token": {"type": "string"},
                "bundle_dir": {"type": "string"},
                "model_version": _VERSION,
                "published_by": {"type": "integer"},
                "published_at": {"type": "number"},
            },
        },
        "workers": {"type": "array", "items": {"$ref": "#/components/schemas/WorkerState"}},
    },
}

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "A stable error code, e.g. invalid_value, invalid_json."},
        "message": {"type": "string"},
        "field": {"type": "string", "nullable": True, "description": "The field at fault, when one is."},
        "index": {
            "type": "integer",
            "nullable": True,
            "description": "The record at fault (0-based), when known.",
        },
    },
}

PING: dict[str, Any] = {"type": "object", "properties": {"status": {"type": "string"}}}

SCHEMAS: dict[str, dict[str, Any]] = {
    "LoanApplication": LOAN_APPLICATION,
    "Prediction": PREDICTION,
    "Reason": REASON,
    "BatchRequest": BATCH_REQUEST,
    "BatchResponse": BATCH_RESPONSE,
    "InvocationsRequest": INVOCATIONS_REQUEST,
    "InvocationsResponse": INVOCATIONS_RESPONSE,
    "Health": HEALTH,
    "ModelInfo": MODEL_INFO,
    "ReloadRequest": RELOAD_REQUEST,
    "ReloadResponse": RELOAD_RESPONSE,
    "ReloadIncomplete": RELOAD_INCOMPLETE,
    "WorkerState": WORKER_STATE,
    "Workers": WORKERS,
    "Error": ERROR,
    "Ping": PING,
}


# --- the document ----------------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON or a request of the wrong shape (names the field and record index).",
        401: "Missing or wrong admin token.",
        403: "Model reload is disabled (no admin token configured).",
        404: "The served bundle has no model card (trained before cards).",
        413: "Body larger than the maximum body size, or more records than the maximum batch size.",
        415: "Unsupported content type.",
        422: "A field holds a value of the wrong type (names the field and record index).",
        503: "No model is loaded.",
    }
    return {str(c): _json("Error", text[c]) for c in codes}


def _body(schema_name: str, required: bool = True, csv: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(schema_name)}}
    if csv:
        content["text/csv"] = {
            "schema": {"type": "string", "description": "A header line, then one line per record."}
        }
    return {"required": required, "content": content}


def openapi_document(
    title: str = "Loan default risk service", version: str = API_VERSION, max_batch_size: int | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of every endpoint and schema."""
    batch_note = f" At most {max_batch_size} records." if max_batch_size else ""
    predict_errors = _errors(400, 413, 422, 503)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Probability that a loan application is risky, from a CatBoost model bundle.",
        },
        "paths": {
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and readiness: 200 with the model version when a model is loaded.",
                    "responses": {
                        "200": _json("Health", "A model is loaded."),
                        "503": _json("Health", "No model is loaded."),
                    },
                }
            },
            "/ping": {
                "get": {
                    "operationId": "ping",
                    "summary": "MLflow scoring protocol health check.",
                    "responses": {
                        "200": _json("Ping", "A model is loaded."),
                        "503": _json("Health", "No model."),
                    },
                }
            },
            "/model/info": {
                "get": {
                    "operationId": "modelInfo",
                    "summary": "The model served: name, version, features, threshold, metrics, data fingerprint.",
                    "responses": {"200": _json("ModelInfo", "The model's metadata."), **_errors(503)},
                }
            },
            "/model/card": {
                "get": {
                    "operationId": "modelCard",
                    "summary": "The served version's model card: self-contained HTML, or Markdown with "
                    "'Accept: text/markdown'.",
                    "responses": {
                        "200": {
                            "description": "The model card.",
                            "content": {
                                "text/html": {"schema": {"type": "string"}},
                                "text/markdown": {"schema": {"type": "string"}},
                            },
                        },
                        **_errors(404, 503),
                    },
                }
            },
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Score one loan application (with reasons when it is labelled risky).",
                    "parameters": REASON_PARAMETERS,
                    "requestBody": _body("LoanApplication"),
                    "responses": {"200": _json("Prediction", "The prediction."), **predict_errors},
                }
            },
            "/predict/batch": {
                "post": {
                    "operationId": "predictBatch",
                    "parameters": REASON_PARAMETERS,
                    "summary": "Score many loan applications; answers in request order." + batch_note,
                    "requestBody": _body("BatchRequest"),
                    "responses": {"200": _json("BatchResponse", "The predictions."), **predict_errors},
                }
            },
            "/invocations": {
                "post": {
                    "operationId": "invocations",
                    "summary": "MLflow scoring protocol (dataframe_split, dataframe_records, inputs, or CSV)."
                    + batch_note,
                    "requestBody": _body("InvocationsRequest", csv=True),
                    "responses": {
                        "200": _json("InvocationsResponse", "Probabilities, in request order."),
                        **_errors(400, 413, 415, 422, 503),
                    },
                }
            },
            "/model/reload": {
                "post": {
                    "operationId": "reloadModel",
                    "summary": "Load a bundle fully, then swap it in; in-flight requests finish on the old one.",
                    "security": [{"bearerAuth": []}],
                    "requestBody": _body("ReloadRequest", required=False),
                    "responses": {
                        "200": _json("ReloadResponse", "Every live worker serves the new model."),
                        **_errors(400, 401, 403, 413, 422),
                        "409": _json("ReloadIncomplete", "Another reload was published meanwhile."),
                        "503": _json(
                            "ReloadIncomplete",
                            "Not every worker serves the new model within LOANRISK_RELOAD_TIMEOUT.",
                        ),
                    },
                }
            },
            "/model/workers": {
                "get": {
                    "operationId": "modelWorkers",
                    "summary": "Each live worker's state: the version it serves, the one wanted, any load error.",
                    "security": [{"bearerAuth": []}],
                    "responses": {"200": _json("Workers", "Every live worker's state."), **_errors(401, 403)},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
