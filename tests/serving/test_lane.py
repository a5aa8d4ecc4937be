"""The fast lane (serving/lane.py) answers as Flask's path does, and hands every other request to it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.lane import FastLane
from serving.predlog import read_log

pytestmark = pytest.mark.inprocess

KEY = "lane-test-key-" + secrets.token_hex(16)  # made per run: a literal key would be published


def flask_only(app: Flask) -> FlaskClient:
    """A client of the same app with the lane taken out: every request goes Flask's way."""
    assert isinstance(app.wsgi_app, FastLane)
    app.wsgi_app = app.wsgi_app.flask  # type: ignore[method-assign]
    return app.test_client()


def requests(records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(path with query, JSON body): single records and small and large batches, reasons on and off."""
    one = records[0]
    return [
        ("/predict", one),
        ("/predict?reasons=none", one),
        ("/predict?reasons=all&reason_count=2", one),
        ("/predict?reasons=all&reasons=none", one),  # the first value counts, as in Flask's args
        ("/predict", {**one, "extraField": 1}),  # an unknown field: warned about
        ("/predict", {k: v for k, v in one.items() if k != "loanId"}),
        ("/invocations", {"dataframe_records": [one]}),
        ("/invocations", {"dataframe_records": records[:3], "params": {"reasons": "all"}}),
        ("/invocations", {"dataframe_records": records[:30]}),  # the columnar way
        ("/invocations", {"dataframe_split": {"columns": list(one), "data": [list(one.values())]}}),
    ]


def test_the_lane_answers_as_flask_does(make_app: Callable[..., Flask], records) -> None:
    lane, flask = make_app().test_client(), flask_only(make_app())
    for path, body in requests(records):
        got, want = lane.post(path, json=body), flask.post(path, json=body)
        assert (got.status_code, got.get_json()) == (want.status_code, want.get_json()) == (200, want.json)
        assert sorted(got.headers.keys()) == sorted(want.headers.keys()), path
        assert got.headers["Content-Type"] == want.headers["Content-Type"] == "application/json"
        assert got.headers["Content-Length"] == want.headers["Content-Length"]
        assert got.headers["X-Request-ID"] != want.headers["X-Request-ID"]


def test_a_client_request_id_is_kept(client: FlaskClient, records) -> None:
    answer = client.post("/predict", json=records[0], headers={"X-Request-ID": "lane-1"})
    assert answer.headers["X-Request-ID"] == "lane-1"
    odd = client.post("/predict", json=records[0], headers={"X-Request-ID": "not a token"})
    assert len(odd.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "error"),
    [
        ("/predict", {"data": b"{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ("/predict", {"json": [1, 2]}, 400, "invalid_request"),
        ("/predict", {"json": {"apr": "abc"}}, 422, "invalid_value"),
        ("/predict?reasons=some", {"json": {"apr": 1}}, 400, "invalid_parameter"),
        ("/predict?reasons=%61ll", {"json": {"apr": 1}}, 200, None),  # an escaped query: Flask's way
        ("/invocations", {"json": {"dataframe_records": []}}, 400, "empty_batch"),
        ("/invocations", {"json": {"records": [{}]}}, 400, "invalid_request"),
        ("/invocations", {"data": b"apr\n590\n", "content_type": "text/csv"}, 200, None),
        ("/predict", {"data": b"", "content_type": "application/json"}, 400, "invalid_json"),
    ],
)
def test_other_requests_and_errors_are_answered_by_flask_once(
    make_app: Callable[..., Flask],
    log_lines,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    error: str | None,
) -> None:
    app = make_app()
    got = app.test_client().post(path, **kwargs)
    assert got.status_code == status, got.data
    assert got.get_json().get("error") == error
    access = [json.loads(line) for line in log_lines() if '"loanrisk.access"' in line]
    assert len(access) == 1, access  # one access line: the lane handed over, it did not answer as well
    assert access[0]["status"] == status and access[0]["endpoint"] == path.partition("?")[0]
    assert access[0]["request_id"] == got.headers["X-Request-ID"]


def answered(client: FlaskClient, endpoint: str) -> float:
    """The metrics' count of 200 answers to POST ``endpoint`` (the metrics are the process's: compare)."""
    text = client.get("/metrics").get_data(as_text=True)
    label = f'loanrisk_http_requests_total{{endpoint="{endpoint}",method="POST",status="200"}} '
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(label))


def test_the_lanes_requests_are_counted_and_logged(
    make_app: Callable[..., Flask], records, log_lines
) -> None:
    client = make_app().test_client()
    before = answered(client, "/invocations")
    for _ in range(3):
        assert client.post("/invocations", json={"dataframe_records": records[:2]}).status_code == 200
    assert answered(client, "/invocations") == before + 3
    access = [json.loads(line) for line in log_lines() if '"loanrisk.access"' in line]
    scored = [(a["endpoint"], a["status"], a["rows"], a["model_version"]) for a in access if a["rows"]]
    assert scored == [("/invocations", 200, 2, "1")] * 3


def test_the_prediction_log_holds_each_answered_record_once(
    make_app: Callable[..., Flask], records, tmp_path: Path
) -> None:
    app = make_app(prediction_log_dir=tmp_path / "log", pseudonym_key=KEY)
    client = app.test_client()
    ok = client.post("/predict", json=records[0], headers={"X-Request-ID": "ok-1"})
    # scored, then refused for its params (the columnar way scores before it reads them): nothing logged
    bad = client.post("/invocations", json={"dataframe_records": records[:20], "params": {"reasons": 1}})
    assert (ok.status_code, bad.status_code) == (200, 400)
    log = app.extensions["loanrisk_predlog"]
    assert log.flush()
    log.close()
    logged = list(read_log(tmp_path / "log"))
    assert [(r["request_id"], r["endpoint"]) for r in logged] == [("ok-1", "/predict")]
