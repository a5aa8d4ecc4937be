"""build_row's fast value readers give exactly what the public readers give: same values, types and errors."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import features as F
from serving.features import FeatureError, build_row


def reference_row(record: dict[str, Any]) -> list[Any]:
    """build_row as first written: every field through its public reader, in order."""
    row: list[Any] = []
    get = record.get
    for src, reader in F._READERS:
        try:
            row.append(reader(get(src)))
        except (ValueError, OverflowError) as exc:
            raise FeatureError(src, str(exc)) from None
    try:
        applied = F.read_timestamp(get("applicationDate"))
    except (ValueError, OverflowError) as exc:
        raise FeatureError("applicationDate", str(exc)) from None
    try:
        age = F._report_age_days(get("clarityFraudId"), applied)
    except (ValueError, OverflowError) as exc:
        raise FeatureError("clarityFraudId", str(exc)) from None
    amount, scheduled = row[3], row[4]
    inq30, inq365 = F.read_number(get(F._INQ_30)), F.read_number(get(F._INQ_365))
    row.append(float(applied.hour) if applied else F.NAN)
    row.append(float(applied.weekday()) if applied else F.NAN)
    row.append(age)
    row.append(scheduled / amount if amount and amount > 0 and not math.isnan(scheduled) else F.NAN)
    row.append(inq30 / inq365 if inq365 and inq365 > 0 and not math.isnan(inq30) else F.NAN)
    return row


def outcome(record: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "row", build_row(record)
    except FeatureError as exc:
        return "error", (exc.field, exc.message)


def reference_outcome(record: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "row", reference_row(record)
    except FeatureError as exc:
        return "error", (exc.field, exc.message)


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1] == b[1]
    return len(a[1]) == len(b[1]) and all(
        (type(x) is type(y) and (x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))))
        for x, y in zip(a[1], b[1], strict=True)
    )


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


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=12))
def test_fast_paths_match_the_readers(record: dict[str, Any]) -> None:
    assert same(outcome(record), reference_outcome(record)), record


def test_fast_paths_match_on_sample_records(records) -> None:
    for record in records:
        assert same(outcome(record), reference_outcome(record))
        typed = {k: (True if v == "True" else False if v == "False" else None if v == "" else v)
                 for k, v in record.items()}  # fmt: skip
        assert same(outcome(typed), reference_outcome(typed))
