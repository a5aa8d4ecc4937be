"""HTTP answers equal in-process ``Bundle.predict_records`` (|Δ| <= 1e-9) for every labelled row, every route."""

from __future__ import annotations

from typing import Any

import pytest

from serving.bundle import Bundle

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def expected(bundle: Bundle, records: list[dict[str, Any]]) -> list[float]:
    return bundle.predict_records(records)


def assert_close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst <= TOLERANCE, worst


def test_predict_one_by_one(client, records, expected) -> None:
    got = []
    for record in records:
        r = client.post("/predict", json=record)
        assert r.status_code == 200, r.data
        got.append(r.get_json()["probability"])
    assert_close(got, expected)


def test_predict_batch(client, records, expected) -> None:
    r = client.post("/predict/batch", json={"data": records})
    assert r.status_code == 200
    predictions = r.get_json()["predictions"]
    assert_close([p["probability"] for p in predictions], expected)
    assert [p["loanId"] for p in predictions] == [rec["loanId"] for rec in records]


def test_invocations_dataframe_split(client, records, expected) -> None:
    columns = sorted({k for r in records for k in r})
    split = {"columns": columns, "data": [[r.get(c) for c in columns] for r in records]}
    r = client.post("/invocations", json={"dataframe_split": split})
    assert r.status_code == 200
    assert_close(r.get_json()["predictions"], expected)


def test_invocations_dataframe_records(client, records, expected) -> None:
    r = client.post("/invocations", json={"dataframe_records": records})
    assert r.status_code == 200
    assert_close(r.get_json()["predictions"], expected)


def test_invocations_inputs(client, records, expected) -> None:
    r = client.post("/invocations", json={"inputs": records})
    assert r.status_code == 200
    assert_close(r.get_json()["predictions"], expected)


def test_labels_follow_the_threshold(client, records, expected, bundle: Bundle) -> None:
    r = client.post("/predict/batch", json={"data": records})
    labels = [p["label"] for p in r.get_json()["predictions"]]
    assert labels == [int(p >= bundle.meta.threshold) for p in expected]
    assert 0 < sum(labels) < len(labels)
