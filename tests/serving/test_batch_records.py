"""One bad record in a batch costs only itself: /predict/batch answers record by record (issue 25), through the
one request path every endpoint takes (issue 22)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from serving.predlog import read_log
from serving.privacy import Pseudonymiser

CLARITY_DATE = ".underwritingdataclarity.clearfraud.clearfraudinquiry.thirtydaysago"


def _batch(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [dict(records[i % len(records)], loanId=f"LL-I-{i:08d}") for i in range(n)]


# (index, field, the bad value as JSON text: lone surrogates and Infinity are not expressible as Python JSON)
BAD = [
    (3, "applicationDate", '"not-a-date"'),
    (50, "apr", "[1]"),  # wrong type
    (97, "apr", "1e999999"),  # non-finite
    (120, "loanAmount", "-5"),  # outside the contract's range
    (233, "state", '"\\ud800"'),  # lone surrogate
    (400, "nPaidOff", '"many"'),
    (512, "payFrequency", '"Z"'),  # a category outside the dataset contract
    (640, "clarityFraudId", '"zz-not-hex"'),
    (777, CLARITY_DATE, "Infinity"),
    (999, "leadCost", '"-1"'),  # a string outside the range
]


def _body(records: list[dict[str, Any]]) -> bytes:
    texts = []
    bad = {i: (field, value) for i, field, value in BAD}
    for i, record in enumerate(records):
        text = json.dumps(record)
        if i in bad:
            field, value = bad[i]
            text = text[:-1] + f", {json.dumps(field)}: {value}}}"
        texts.append(text)
    return ('{"data": [' + ", ".join(texts) + "]}").encode()


@pytest.fixture
def strict(make_app: Callable[..., Flask]) -> Any:
    """The service that refuses categories outside the dataset contract (LOANRISK_UNKNOWN_CATEGORIES=reject)."""
    return make_app(unknown_categories="reject").test_client()


def test_a_batch_with_ten_bad_records_scores_the_other_990_as_alone(strict, records) -> None:
    client, batch = strict, _batch(records, 1000)
    answer = client.post("/predict/batch", data=_body(batch), content_type="application/json")
    assert answer.status_code == 200, answer.get_data(as_text=True)[:500]
    out = answer.get_json()
    assert (out["count"], out["scored"], out["rejected"]) == (1000, 990, 10)
    assert [(e["index"], e["field"]) for e in out["errors"]] == [(i, f) for i, f, _ in BAD]
    assert all(e["message"].startswith(f"record {e['index']}") for e in out["errors"])
    bad = {i for i, _, _ in BAD}
    valid = [r for i, r in enumerate(batch) if i not in bad]
    alone = client.post("/predict/batch", json={"data": valid}).get_json()
    assert [p["index"] for p in out["predictions"]] == [i for i in range(1000) if i not in bad]
    assert [p["loanId"] for p in out["predictions"]] == [r["loanId"] for r in valid]
    assert [p["probability"] for p in out["predictions"]] == [p["probability"] for p in alone["predictions"]]
    assert [p.get("reasons") for p in out["predictions"]] == [p.get("reasons") for p in alone["predictions"]]


def test_by_default_an_unknown_category_is_scored_with_a_warning_naming_its_record(client, records) -> None:
    answer = client.post("/predict/batch", data=_body(_batch(records, 1000)), content_type="application/json")
    out = answer.get_json()
    assert (answer.status_code, out["scored"], out["rejected"]) == (200, 991, 9)
    assert 512 not in [e["index"] for e in out["errors"]]
    (unseen,) = [p for p in out["predictions"] if "warnings" in p]
    assert unseen["index"] == 512 and unseen["warnings"][0].startswith("field 'payFrequency': 'Z' is not")
    single = client.post("/predict", json=dict(records[0], state="ZZ")).get_json()
    assert any(w.startswith("field 'state': 'ZZ'") for w in single["warnings"])


def test_on_error_reject_answers_the_first_error_for_the_whole_batch(client, records) -> None:
    answer = client.post(
        "/predict/batch?on_error=reject", data=_body(_batch(records, 1000)), content_type="application/json"
    )
    assert answer.status_code == 422  # the first bad record, though decoding refuses record 50 first
    assert (answer.get_json()["index"], answer.get_json()["field"]) == (3, "applicationDate")
    only_values = _batch(records, 20)
    only_values[7]["apr"] = "-3"
    answer = client.post("/predict/batch?on_error=reject", json={"data": only_values})
    assert answer.status_code == 422
    assert (answer.get_json()["index"], answer.get_json()["field"]) == (7, "apr")


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_a_non_finite_or_negative_value_is_a_422_naming_the_field_on_every_endpoint(
    client, records, path
) -> None:
    for field, value in (("apr", "1e999999"), ("loanAmount", "-5"), ("loanAmount", '"-5"')):
        record = json.dumps(records[0])[:-1] + f', "{field}": {value}}}'
        body = record if path == "/predict" else '{"dataframe_records": [' + record + "]}"
        answer = client.post(path, data=body, content_type="application/json")
        assert answer.status_code == 422, (field, value, answer.get_data(as_text=True))
        assert answer.get_json()["field"] == field


def test_rejected_records_are_counted_by_reason(client, records) -> None:
    batch = _batch(records, 5)
    batch[1]["apr"] = "abc"
    client.post("/predict/batch", json={"data": batch})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'loanrisk_rejected_records_total{endpoint="/predict/batch",error="invalid_value"}' in text


def test_the_prediction_log_holds_only_the_scored_records(
    make_app: Callable[..., Flask], records, tmp_path: Path
) -> None:
    key = "batch-records-test-key-" + secrets.token_hex(16)
    app = make_app(prediction_log_dir=tmp_path / "log", pseudonym_key=key)
    batch = _batch(records, 40)
    batch[3]["applicationDate"], batch[30]["apr"] = "not-a-date", "abc"
    out = app.test_client().post("/predict/batch", json={"data": batch}).get_json()
    assert (out["scored"], out["rejected"]) == (38, 2)
    log = app.extensions["loanrisk_predlog"]
    assert log.flush()
    log.close()
    token = Pseudonymiser(key.encode()).token
    logged = list(read_log(tmp_path / "log"))
    assert [line["id"] for line in logged] == [
        token(r["loanId"]) for i, r in enumerate(batch) if i not in (3, 30)
    ]
    assert [line["probability"] for line in logged] == [p["probability"] for p in out["predictions"]]


def test_a_valid_batch_decodes_at_once_to_what_record_by_record_gives(records) -> None:
    """All-valid bodies are decoded in one call (serving.requests._at_once); one bad record sends the body
    record by record. Both give the same records, and the count is checked before either decodes them."""
    from serving import requests

    good = records[:20]
    spoilt = [*good, {"loanAmount": -5}]
    for make, decode in (
        (lambda rs: {"data": rs}, lambda b: requests.batch(b, 100)),
        (lambda rs: {"dataframe_records": rs}, lambda b: requests.invocation(b, 100)[0]),
    ):
        whole = decode(json.dumps(make(good)).encode())
        one_by_one = decode(json.dumps(make(spoilt)).encode())
        assert [e.index for e in one_by_one.errors] == [20] and not whole.errors
        assert whole.records == one_by_one.records and whole.positions == one_by_one.positions
        assert whole.size == 20 and one_by_one.size == 21
    with pytest.raises(requests.ApiError) as refused:
        requests.batch(json.dumps({"data": [{}] * 101}).encode(), 100)
    assert (refused.value.status, refused.value.code) == (413, "batch_too_large")
    assert (
        requests._at_once(json.dumps({"data": [{}] * 101}).encode(), requests._DECODE_ALL_BATCH, 100) is None
    )
