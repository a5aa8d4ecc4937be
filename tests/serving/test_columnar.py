"""The fast way for batches (msgspec structs → features column by column → DataFrame) answers exactly as the
checked way (orjson → dicts → build_rows): the same feature values, probabilities, echoes, warnings and errors.

The training-side parity (every test row of the sample, typed and as CSV strings, through every route) is
``test_training_parity.py``; those batches are large enough to take the fast way, which is checked below.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import batches
from serving import bundle as bundle_module
from serving import features as F
from serving.bundle import COLUMNS_FROM, Bundle
from serving.features import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FeatureError,
    build_columns,
    build_rows,
    columns_from,
    columns_from_rows,
)
from serving.scoring import Scoring

pytestmark = pytest.mark.inprocess
# Any value a client may send in a field the features read: typed, CSV text, odd text, huge, NaN, nested.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            " ",
            "True",
            "False",
            "true",
            "FALSE",
            " 1 ",
            "0",
            "1.0",
            "0.0",
            "yes",
            "no",
            "t",
            "f",
            "590.0",
            " 590.0 ",
            "1_000",
            "nan",
            "inf",
            "-0",
            "abc",
            "\u2003 5 ",
            "٥",
            "OH",
            " B ",
            "1e999",
            "2016-02-23T17:29:01.940000",
        ]
    ),  # fmt: skip
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
FIELDS = [src for src, _ in F._READERS] + ["applicationDate", "clarityFraudId"]
FLAGS = [f for f in FIELDS if "clearfraudindicator" in f and "number" not in f]


def outcome_rows(records: list[dict[str, Any]]) -> tuple[str, Any]:
    try:
        return "columns", columns_from_rows(build_rows(records))
    except FeatureError as exc:
        return "error", (exc.field, exc.message, exc.index)


def outcome_columns(records: list[dict[str, Any]]) -> tuple[str, Any]:
    try:
        return "columns", build_columns(records)
    except FeatureError as exc:
        return "error", (exc.field, exc.message, exc.index)


def assert_same_columns(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b) == list(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        x, y = a[name], b[name]
        if name in CATEGORICAL_FEATURES:
            assert type(x) is type(y) is list and x == y, name
        else:
            assert x.dtype == y.dtype == np.float64, name
            assert np.array_equal(x, y, equal_nan=True), (name, x, y)


def assert_same(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] == "error":
        assert a[1] == b[1]
    else:
        assert_same_columns(a[1], b[1])


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=10), min_size=1, max_size=12))
def test_columns_equal_rows_for_any_values(records: list[dict[str, Any]]) -> None:
    """Any mix of values (typed, CSV text, NaN, huge, nested, odd text): the same features, or the same error
    naming the same record and field."""
    assert_same(outcome_columns(records), outcome_rows(records))


def csv_strings(record: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in record.items()}


def variants(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The sample records typed, as CSV strings, and with the cases a client sends that are not the plain one."""
    odd = []
    for i, record in enumerate(records):
        r = dict(record)
        r["payFrequency"] = [" B ", "", None, "weekly", "ü"][i % 5]  # odd categories, blank, missing
        r[FLAGS[0]] = ["True", "false", " 1 ", "", None, True, 0][i % 7]  # booleans as strings and typed
        r["apr"] = [" 590.0 ", "", None, 360, "1e3", float("nan")][i % 6]
        r.pop("clarityFraudId" if i % 3 == 0 else "applicationDate", None)  # missing fields
        r["clearfraudscore"] = None
        odd.append(r)
    return {
        "typed": records,
        "csv-strings": [csv_strings(r) for r in records],
        "mixed": [csv_strings(r) if i % 2 else r for i, r in enumerate(records)],
        "odd": odd,
        "unknown-fields": [{**r, "customerNote": "x", "extra": {"a": [1]}} for r in records],
    }


@pytest.mark.parametrize("form", ["typed", "csv-strings", "mixed", "odd", "unknown-fields"])
def test_columns_equal_rows_on_sample_records(records, form: str) -> None:
    batch = variants(records)[form]
    assert_same(outcome_columns(batch), outcome_rows(batch))


def answers(client, bodies: list[tuple[str, bytes]]) -> list[tuple[int, Any]]:
    out = []
    for path, body in bodies:
        r = client.post(path, data=body, content_type="application/json")
        out.append((r.status_code, orjson.loads(r.data)))
    return out


def bodies_for(batch: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    columns = sorted({k for r in batch for k in r})
    split = {"columns": columns, "data": [[r.get(c) for c in columns] for r in batch]}
    return [
        ("/predict/batch", orjson.dumps({"data": batch})),
        ("/invocations", orjson.dumps({"dataframe_records": batch})),
        ("/invocations", orjson.dumps({"inputs": batch})),
        ("/invocations", orjson.dumps({"dataframe_split": split})),
    ]


@pytest.mark.parametrize("form", ["typed", "csv-strings", "mixed", "odd", "unknown-fields"])
def test_fast_and_checked_ways_answer_alike(make_app, records, form: str, monkeypatch) -> None:
    bodies = bodies_for(variants(records)[form][:40])
    fast = answers(make_app().test_client(), bodies)
    monkeypatch.setattr(Scoring, "score_fast", lambda self, batch: None)
    checked = answers(make_app().test_client(), bodies)
    assert fast == checked  # exactly: same probabilities, labels, loanIds, warnings
    assert all(status == 200 for status, _ in fast)


def test_batches_take_the_fast_way(client, records, monkeypatch) -> None:
    """Batches of plain records are built column by column (and a bundle scores them so too)."""
    seen: list[int] = []

    def spy(column, n):
        seen.append(n)
        return columns_from(column, n)

    monkeypatch.setattr(bundle_module, "columns_from", spy)
    batch = records[:50]
    for path, body in bodies_for(batch):
        assert client.post(path, data=body, content_type="application/json").status_code == 200
    assert seen == [50, 50, 50, 50]
    client.post("/predict", json=records[0])
    client.post("/invocations", json={"dataframe_records": records[: COLUMNS_FROM - 1]})
    assert seen == [50, 50, 50, 50]  # single records and small batches: row by row


def test_bundle_scores_columns_as_rows(bundle: Bundle, records) -> None:
    by_rows = bundle.predict_rows(build_rows(records))
    by_columns = bundle.predict_columns(build_columns(records)).tolist()
    assert by_columns == by_rows  # the same model input, laid out by column: the same probabilities
    assert bundle.predict_records(records) == by_rows


@pytest.mark.parametrize("path", ["/predict/batch", "/invocations", "/invocations split"])
@pytest.mark.parametrize(
    "field, value",
    [("apr", "abc"), ("loanAmount", [1]), ("applicationDate", "yesterday"), ("hasCF", "maybe"),
     ("clarityFraudId", "zz-not-hex"), ("apr", 10**400)],
)  # fmt: skip
def test_a_bad_value_in_a_large_batch_names_field_and_index(client, records, path, field, value) -> None:
    batch = [dict(r) for r in records[:20]]
    batch[13][field] = value
    if field == "clarityFraudId":
        batch[13]["applicationDate"] = "2017-01-05T08:01:33.631000"
    body = {
        "/predict/batch": lambda: {"data": batch},
        "/invocations": lambda: {"dataframe_records": batch},
        "/invocations split": lambda: {
            "dataframe_split": {
                "columns": list(batch[13]),
                "data": [[r.get(c) for c in batch[13]] for r in batch],
            }
        },
    }[path]()
    r = client.post(path.split()[0], data=json.dumps(body), content_type="application/json")  # 10**400 as is
    assert r.status_code == 422, r.data
    answer = r.get_json()
    assert (answer["error"], answer["field"], answer["index"]) == ("invalid_value", field, 13)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [%s], "extra": 1}',  # an unknown key beside the records
        b'{"data": [%s, {"apr": NaN}]}',  # a NaN literal
        b'{"data": [%s, {"apr": 18446744073709551616}]}',  # beyond 64 bits
        b'{"data": [%s, {"loanId": "\\ud800"}]}',  # a lone surrogate
        b'{"data": [%s, {"state": {"a": 1}}]}',  # a nested value
        b'{"data": [%s, {"unknownField": 1}]}',  # an unknown field
        b'{"data": [%s, 5]}',  # not a record
        b'{"dataframe_records": [%s], "inputs": null}',  # two protocol keys
    ],
)
def test_the_fast_decoder_leaves_odd_bodies_to_the_checked_way(records, body: bytes) -> None:
    plain = b",".join(orjson.dumps(r) for r in records[:10])
    raw = body.replace(b"%s", plain)
    assert batches.fast_batch(raw, 1000) is None
    assert batches.fast_invocation(raw, 1000) is None


def test_the_fast_decoder_takes_plain_bodies(records) -> None:
    batch = records[:10]
    decoded = batches.fast_batch(orjson.dumps({"data": batch}), 1000)
    assert decoded is not None and decoded.size == 10
    for name in ("apr", "state", "applicationDate", "clarityFraudId"):
        assert list(decoded.column(name)) == [r.get(name) for r in batch]
    assert batches.fast_batch(orjson.dumps({"data": batch}), 9) is None  # over the limit: the 413 is checked
    split = {"columns": ["apr", "state"], "data": [[590.0, "OH"], [360, None]], "index": [0, 1]}
    decoded = batches.fast_invocation(orjson.dumps({"dataframe_split": split}), 1000)
    assert decoded is not None
    assert list(decoded.column("apr")) == [590.0, 360] and list(decoded.column("leadCost")) == [None, None]
    assert math.isnan(build_columns([{"apr": None}])["apr"][0])


DATES = ["2016-02-23T17:29:01.940000", "2016-02-23T17:29:01+02:00", "2016-02-23T23:59:59Z", "2016-02-23",
         " 2016-02-23 17:29:01 ", "2016-02-23T17:29:01.940000-05:30", "", None]  # fmt: skip
CLARITY_IDS = ["586dfbc60ed09a5cfc2edbee", " 586DFBC60ED09A5CFC2EDBEE ", "12", "0x586dfbc6", "", None, "   ",
               "586dfbc6"]  # fmt: skip


@pytest.mark.parametrize("shift", range(3))
def test_columns_equal_rows_on_odd_dates_and_report_ids(records, shift: int) -> None:
    batch = []
    for i, record in enumerate(records[:40]):
        r = dict(record)
        r["applicationDate"] = DATES[(i + shift) % len(DATES)]
        r["clarityFraudId"] = CLARITY_IDS[(i * 3 + shift) % len(CLARITY_IDS)]
        batch.append(r)
    assert_same(outcome_columns(batch), outcome_rows(batch))
    valid = [dict(r, clarityFraudId="586dfbc60ed09a5cfc2edbee") for r in batch]  # every date form, valid ids
    assert_same(outcome_columns(valid), outcome_rows(valid))
    assert outcome_columns(valid)[0] == "columns"
