"""Bad input gets a 4xx JSON error naming the field and record index; nothing a client sends causes a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.serving.conftest import ADMIN_TOKEN


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.data[:500])
    assert r.content_type == "application/json"
    body = r.get_json()
    assert set(body) == {"error", "message", "field", "index"}
    return body


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b'{"apr": 590,}',
        b"",
        b"   ",
        b"\xff\xfe\x00",
        b"[" * 5000 + b"]" * 5000,
        b"{'apr': 1}",
    ],
)
@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/invocations"])
def test_malformed_json(client, path: str, raw: bytes) -> None:
    body = error(client.post(path, data=raw, content_type="application/json"), 400)
    assert body["error"] == "invalid_json"


def test_wrong_type_names_field_and_index(client, records) -> None:
    body = error(client.post("/predict", json={**records[0], "apr": "abc"}), 422)
    assert (body["error"], body["field"], body["index"]) == ("invalid_value", "apr", 0)
    assert "abc" in body["message"]

    batch = [dict(r) for r in records[:6]]
    batch[4]["loanAmount"] = {"nested": 1}
    body = error(client.post("/predict/batch?on_error=reject", json={"data": batch}), 422)
    assert (body["field"], body["index"]) == ("loanAmount", 4)

    batch[4] = {**records[4], "applicationDate": "yesterday"}
    body = error(client.post("/predict/batch?on_error=reject", json={"data": batch}), 422)
    assert (body["field"], body["index"]) == ("applicationDate", 4)

    batch[4] = {**records[4], "hasCF": "maybe"}
    body = error(client.post("/invocations", json={"dataframe_records": batch}), 422)
    assert (body["field"], body["index"]) == ("hasCF", 4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("apr", [1, 2]),
        ("apr", True),  # a boolean is 1.0: accepted
        ("state", {"a": 1}),
        ("clarityFraudId", "zzzzzzzz0000"),
        ("loanId", {"id": 1}),
        ("applicationDate", 20160101),
        ("apr", 10**400),
        ("applicationDate", "0001-01-01T00:00:00+05:00"),
        ("applicationDate", "9999-12-31T23:59:59-05:00"),
    ],
)
def test_odd_values_never_500(client, field: str, value: Any) -> None:
    raw = json.dumps({field: value, "applicationDate": "2016-02-23T17:29:01", **{field: value}}).encode()
    r = client.post("/predict", data=raw, content_type="application/json")
    assert r.status_code in (200, 422), r.data
    if r.status_code == 422:
        body = error(r, 422)
        assert body["field"] == field and body["index"] == 0


def test_non_object_records(client) -> None:
    body = error(client.post("/predict", json=[1, 2]), 400)
    assert body["error"] == "invalid_request"
    body = error(client.post("/predict/batch?on_error=reject", json={"data": [{}, "x", {}]}), 400)
    assert (body["field"], body["index"]) == ("data", 1)
    body = error(client.post("/predict/batch", json={"data": {"apr": 1}}), 400)
    assert body["field"] == "data"
    body = error(client.post("/predict/batch", json=[{"apr": 1}]), 400)
    assert body["field"] == "data"
    body = error(client.post("/invocations", json={"inputs": [[1, 2]]}), 400)
    assert body["index"] == 0


def test_empty_batch(client) -> None:
    body = error(client.post("/predict/batch", json={"data": []}), 400)
    assert (body["error"], body["field"]) == ("empty_batch", "data")
    body = error(client.post("/invocations", json={"dataframe_records": []}), 400)
    assert body["error"] == "empty_batch"
    body = error(client.post("/invocations", json={"dataframe_split": {"columns": ["apr"], "data": []}}), 400)
    assert body["field"] == "dataframe_split.data"


@pytest.mark.inprocess  # its own limits (tests/serving/test_live_limits.py covers them over HTTP)
def test_batch_over_the_maximum_is_413(make_app) -> None:
    client = make_app(max_batch_size=5).test_client()
    assert client.post("/predict/batch", json={"data": [{}] * 5}).status_code == 200
    body = error(client.post("/predict/batch", json={"data": [{}] * 6}), 413)
    assert (body["error"], body["field"]) == ("batch_too_large", "data")
    assert "5" in body["message"]
    body = error(client.post("/invocations", json={"dataframe_records": [{}] * 6}), 413)
    assert body["error"] == "batch_too_large"


@pytest.mark.inprocess
def test_body_over_the_maximum_is_413(make_app, records) -> None:
    client = make_app(max_body_bytes=2_000).test_client()
    big = json.dumps({"data": records[:3]}).encode()
    assert len(big) > 2_000
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for path in ("/predict", "/predict/batch", "/invocations", "/model/reload"):
        body = error(client.post(path, data=big, content_type="application/json", headers=auth), 413)
        assert body["error"] == "body_too_large"
    assert client.post("/predict", json={"apr": "590"}).status_code == 200


def test_mlflow_protocol_shape_errors(client) -> None:
    body = error(client.post("/invocations", json={"columns": ["apr"], "data": [[1]]}), 400)
    assert "dataframe_split" in body["message"]
    body = error(client.post("/invocations", json={"inputs": [{}], "dataframe_records": [{}]}), 400)
    assert body["error"] == "invalid_request"
    body = error(client.post("/invocations", json={"dataframe_split": {"columns": ["apr", "state"],
                                                                        "data": [[1, "OH"], [2]]}}), 400)  # fmt: skip
    assert (body["field"], body["index"]) == ("dataframe_split.data", 1)
    body = error(client.post("/invocations", json={"dataframe_split": {"columns": [1], "data": [[1]]}}), 400)
    assert body["field"] == "dataframe_split.columns"
    body = error(client.post("/invocations", json={"inputs": {"apr": [1, 2], "state": ["OH"]}}), 400)
    assert body["field"] == "state"
    body = error(client.post("/invocations", data="a,b\n1,2,3\n", content_type="text/csv"), 400)
    assert body["index"] == 0


@pytest.mark.inprocess  # reads the app's log handler (the image's logs are searched in test_serving_image.py)
def test_errors_are_logged_without_values(client, log_lines) -> None:
    client.post(
        "/predict", json={"apr": "secret-looking-value", "anon_ssn": "0123456789abcdef0123456789abcdef"}
    )
    lines = [json.loads(line) for line in log_lines()]
    access = [line for line in lines if line["logger"] == "loanrisk.access"]
    assert access[-1]["status"] == 422 and access[-1]["field"] == "apr" and access[-1]["index"] == 0
    text = "\n".join(log_lines())
    assert "secret-looking-value" not in text
    assert "0123456789abcdef0123456789abcdef" not in text
