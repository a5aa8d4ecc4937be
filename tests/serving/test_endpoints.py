"""Every endpoint of the service, through Flask's test client."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from serving.bundle import Bundle
from serving.config import ServiceConfig
from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES


def test_health_reports_model_version(client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "model_name": "loan-risk", "model_version": "1"}


def test_health_is_503_without_a_model(make_app, tmp_path: Path) -> None:
    missing = make_app(bundle_dir=tmp_path / "nowhere").test_client()
    r = missing.get("/health")
    assert r.status_code == 503
    assert r.get_json()["status"] == "unavailable"
    assert "not a model bundle" in r.get_json()["message"]
    assert missing.get("/ping").status_code == 503
    p = missing.post("/predict", json={"apr": "590"})
    assert p.status_code == 503 and p.get_json()["error"] == "model_unavailable"
    none = make_app(bundle_dir=None).test_client()
    assert none.get("/health").status_code == 503


def test_ping(client) -> None:
    r = client.get("/ping")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}


def test_model_info(client, bundle: Bundle) -> None:
    info = client.get("/model/info").get_json()
    assert info["name"] == "loan-risk"
    assert info["version"] == "1"
    assert info["features"] == list(FEATURE_NAMES)
    assert info["categorical_features"] == list(CATEGORICAL_FEATURES)
    assert info["threshold"] == 0.5
    assert info["metrics"] == {"roc_auc": 0.7, "f1": 0.6}
    assert info["data_fingerprint"]["rows"] > 0
    assert info["run_id"] == "test-run"


def test_predict_one_record(client, records, bundle: Bundle) -> None:
    record = records[0]
    r = client.post("/predict", json=record)
    assert r.status_code == 200, r.data
    body = r.get_json()
    expected = bundle.predict_records([record])[0]
    assert abs(body["probability"] - expected) <= 1e-9
    assert body["label"] == int(expected >= 0.5)
    assert body["threshold"] == 0.5
    assert body["model_version"] == "1"
    assert body["loanId"] == record["loanId"]
    assert "warnings" not in body


def test_predict_accepts_csv_strings_and_typed_values_alike(client, records) -> None:
    record = records[1]
    typed: dict[str, Any] = {}
    for key, value in record.items():
        try:
            typed[key] = float(value) if value not in ("", "True", "False") else value
        except ValueError:
            typed[key] = value
        if value == "True":
            typed[key] = True
        elif value == "False":
            typed[key] = False
        elif value == "":
            typed[key] = None
    a = client.post("/predict", json=record).get_json()["probability"]
    b = client.post("/predict", json=typed).get_json()["probability"]
    assert abs(a - b) <= 1e-12


def test_missing_fields_are_missing_values(client, bundle: Bundle) -> None:
    r = client.post("/predict", json={"apr": "590.0"})
    assert r.status_code == 200
    assert abs(r.get_json()["probability"] - bundle.predict_records([{"apr": 590.0}])[0]) <= 1e-12
    assert "loanId" not in r.get_json()
    assert client.post("/predict", json={}).status_code == 200


def test_unknown_fields_are_ignored_and_named(client, records, bundle: Bundle) -> None:
    record = {**records[2], "favouriteColour": "teal", "zz_extra": 1}
    r = client.post("/predict", json=record)
    assert r.status_code == 200
    body = r.get_json()
    assert body["unknown_fields"] == ["favouriteColour", "zz_extra"]
    assert "favouriteColour" in body["warnings"][0]
    assert abs(body["probability"] - bundle.predict_records([records[2]])[0]) <= 1e-12


def test_batch_answers_in_order_and_echoes_loan_id(client, records, bundle: Bundle) -> None:
    batch = records[:25]
    batch[3] = {k: v for k, v in batch[3].items() if k != "loanId"}  # no loanId: none echoed
    r = client.post("/predict/batch", json={"data": batch})
    assert r.status_code == 200, r.data
    body = r.get_json()
    assert body["count"] == 25
    assert body["model_version"] == "1"
    expected = bundle.predict_records(batch)
    for i, (item, p) in enumerate(zip(body["predictions"], expected, strict=True)):
        assert abs(item["probability"] - p) <= 1e-9
        assert item["label"] == int(p >= 0.5)
        if i == 3:
            assert "loanId" not in item
        else:
            assert item["loanId"] == batch[i]["loanId"]


def test_batch_names_unknown_fields(client, records) -> None:
    r = client.post("/predict/batch", json={"data": [records[0], {**records[1], "extra": 1}]})
    assert r.status_code == 200
    assert r.get_json()["unknown_fields"] == ["extra"]


def test_loan_id_numbers_are_echoed_as_strings(client) -> None:
    r = client.post("/predict/batch", json={"data": [{"loanId": 17}, {"loanId": None}]})
    assert [p["loanId"] for p in r.get_json()["predictions"]] == ["17", None]


def _split(records: list[dict[str, Any]]) -> dict[str, Any]:
    columns = sorted({k for r in records for k in r})
    return {"columns": columns, "data": [[r.get(c) for c in columns] for r in records]}


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "inputs", "inputs_columns", "csv"])
def test_invocations_speaks_mlflow(client, records, bundle: Bundle, fmt: str) -> None:
    batch = records[:10]
    expected = bundle.predict_records(batch)
    if fmt == "dataframe_split":
        r = client.post("/invocations", json={"dataframe_split": _split(batch)})
    elif fmt == "dataframe_records":
        r = client.post("/invocations", json={"dataframe_records": batch})
    elif fmt == "inputs":
        r = client.post("/invocations", json={"inputs": batch})
    elif fmt == "inputs_columns":
        split = _split(batch)
        columns = {c: [row[i] for row in split["data"]] for i, c in enumerate(split["columns"])}
        r = client.post("/invocations", json={"inputs": columns})
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=sorted({k for r in batch for k in r}), restval="")
        writer.writeheader()
        writer.writerows(batch)
        r = client.post("/invocations", data=out.getvalue(), content_type="text/csv")
    assert r.status_code == 200, r.data
    predictions = r.get_json()["predictions"]
    assert list(r.get_json()) == ["predictions"]
    assert len(predictions) == len(expected)
    assert max(abs(a - b) for a, b in zip(predictions, expected, strict=True)) <= 1e-9


def test_invocations_accepts_nan_literals_as_python_json_writes_them(client, bundle: Bundle) -> None:
    body = json.dumps(
        {"dataframe_split": {"columns": ["apr", "loanAmount"], "data": [[float("nan"), 500.0]]}}
    )
    assert "NaN" in body
    r = client.post("/invocations", data=body, content_type="application/json")
    assert r.status_code == 200
    assert abs(r.get_json()["predictions"][0] - bundle.predict_records([{"loanAmount": 500.0}])[0]) <= 1e-12


def test_metrics_count_requests_predictions_and_model(client, records) -> None:
    def value(text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = client.get("/metrics").get_data(as_text=True)
    client.post("/predict", json=records[0])
    client.post("/predict/batch", json={"data": records[:7]})
    client.post("/predict", json={"apr": "abc"})
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    ok = 'loanrisk_http_requests_total{endpoint="/predict",method="POST",status="200"}'
    bad = 'loanrisk_http_requests_total{endpoint="/predict",method="POST",status="422"}'
    rows = 'loanrisk_predictions_total{endpoint="/predict/batch"}'
    assert value(text, ok) - value(before, ok) == 1
    assert value(text, bad) - value(before, bad) == 1
    assert value(text, rows) - value(before, rows) == 7
    assert 'loanrisk_http_request_duration_seconds_bucket{endpoint="/predict",le="0.05",method="POST"' in text
    assert 'loanrisk_model_info{model_name="loan-risk",model_version="1"} 1.0' in text


def test_openapi_documents_every_endpoint_and_schema(client, app) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    routes = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert routes == set(doc["paths"])
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rules = [rule for rule in app.url_map.iter_rules() if rule.rule == path]
            assert any(method.upper() in rule.methods for rule in rules), (path, method)
            assert op["responses"]
    schemas = doc["components"]["schemas"]
    for name in ("LoanApplication", "Prediction", "BatchRequest", "BatchResponse", "InvocationsRequest",
                 "InvocationsResponse", "Health", "ModelInfo", "Error", "ReloadRequest", "ReloadResponse"):  # fmt: skip
        assert name in schemas
    assert "apr" in schemas["LoanApplication"]["properties"]
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}:
        assert ref in schemas


def test_unknown_path_and_method_answer_json(client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and r.get_json()["error"] == "method_not_allowed"


def test_request_id_is_echoed(client) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-ID": "bad id!"}).headers["X-Request-ID"]
    assert generated != "bad id!" and len(generated) == 32


def test_reference_mismatch_refuses_the_bundle(make_app, bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    reference = json.loads((broken / "reference.json").read_text())
    reference["probabilities"][0] = 0.123456
    (broken / "reference.json").write_text(json.dumps(reference))
    r = make_app(bundle_dir=broken).test_client().get("/health")
    assert r.status_code == 503
    assert "reference record 0" in r.get_json()["message"]
    ok = make_app(bundle_dir=broken, verify_reference=False).test_client().get("/health")
    assert ok.status_code == 200


def test_config_from_env() -> None:
    config = ServiceConfig.from_env(
        {
            "LOANRISK_BUNDLE_DIR": "/b",
            "LOANRISK_MAX_BATCH_SIZE": "5",
            "LOANRISK_ADMIN_TOKEN": "s3cret",
            "LOANRISK_MAX_BODY_BYTES": "1000",
            "LOANRISK_VERIFY_REFERENCE": "false",
            "LOANRISK_RELOAD_TIMEOUT": "2.5",
            "LOANRISK_RELOAD_SYNC_DIR": "/sync",
        }
    )
    assert (config.reload_timeout, config.reload_sync_dir) == (2.5, Path("/sync"))
    assert config.bundle_dir == Path("/b")
    assert (config.max_batch_size, config.max_body_bytes, config.reload_enabled) == (5, 1000, True)
    assert config.verify_reference is False
    assert "s3cret" not in repr(config)
    defaults = ServiceConfig.from_env({})
    assert defaults.max_batch_size == 10_000 and not defaults.reload_enabled and defaults.bundle_dir is None
    with pytest.raises(ValueError, match="LOANRISK_MAX_BATCH_SIZE"):
        ServiceConfig.from_env({"LOANRISK_MAX_BATCH_SIZE": "many"})
    with pytest.raises(ValueError, match="max_batch_size"):
        ServiceConfig.from_env({"LOANRISK_MAX_BATCH_SIZE": "0"})
    assert defaults.reload_timeout == 10.0 and defaults.reload_sync_dir is None
    with pytest.raises(ValueError, match="LOANRISK_RELOAD_TIMEOUT"):
        ServiceConfig.from_env({"LOANRISK_RELOAD_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="reload_timeout"):
        ServiceConfig.from_env({"LOANRISK_RELOAD_TIMEOUT": "-1"})
