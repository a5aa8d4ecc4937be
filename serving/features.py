"""Raw loan application → model input: the one feature code path of training, serving and batch scoring.
Only decision-time fields are read: outcomes and identifiers never become features (``clarityFraudId`` gives
only the age of the fraud report). Every caller builds columns (:func:`columns_from`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter, itemgetter, sub
from typing import Any

import numpy as np

# The field names are the dataset contract's; the column names are re-exported for this module's readers.
from serving.contract import (  # noqa: F401
    CATEGORIES,
    CLARITY_COLUMNS,
    IDENTITY_FIELDS,
    INDICATOR_FIELDS,
    INQUIRY_FIELDS,
    LOAN_COLUMNS,
    NUMERIC_INDICATORS,
    RANGES,
    clarity_column,
)
from serving.readers import (
    _EPOCH,
    MISSING_CATEGORY,
    NAN,
    FeatureError,
    _report_age_days,
    read_category,
    read_flag,
    read_number,
    read_timestamp,
)

FEATURE_VERSION = "1"

# Descriptions repeat their code one-to-one; the code is the feature.
REDUNDANT_IDENTITY = ("ssnnamereasoncodedescription", "nameaddressreasoncodedescription",
                      "phonematchtypedescription")  # fmt: skip


Reader = Callable[[Any], Any]

# The loan file's features, each its source field's name; then the clarity file's and its score.
_LOAN_READERS: dict[str, Reader] = {
    "payFrequency": read_category, "apr": read_number, "nPaidOff": read_number, "loanAmount": read_number,
    "originallyScheduledPaymentAmount": read_number, "state": read_category, "leadType": read_category,
    "leadCost": read_number, "hasCF": read_flag,
}  # fmt: skip
_IDENTITY = [f for f in IDENTITY_FIELDS if f not in REDUNDANT_IDENTITY]
_SOURCES: list[tuple[str, str, Reader]] = [
    *((f, f, reader) for f, reader in _LOAN_READERS.items()),
    *((f"inquiry_{f}", clarity_column("clearfraudinquiry", f), read_number) for f in INQUIRY_FIELDS),
    *(
        (
            f"indicator_{f}",
            clarity_column("clearfraudindicator", f),
            read_number if f in NUMERIC_INDICATORS else read_flag,
        )
        for f in INDICATOR_FIELDS
    ),
    *(
        (
            f"identity_{f}",
            clarity_column("clearfraudidentityverification", f),
            read_number if f == "overallmatchreasoncode" else read_category,
        )
        for f in _IDENTITY
    ),
    ("clearfraudscore", "clearfraudscore", read_number),
]
DERIVED_FEATURES = ("application_hour", "application_weekday", "report_age_days", "payment_to_amount",
                    "inquiries_recent_share")  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = tuple(name for name, *_ in _SOURCES) + DERIVED_FEATURES
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(name for name, _, r in _SOURCES if r is read_category)
CATEGORICAL_INDICES: tuple[int, ...] = tuple(FEATURE_NAMES.index(c) for c in CATEGORICAL_FEATURES)
# The source field each direct feature reads (the derived features are computed from several, or from an id).
FEATURE_SOURCES: dict[str, str] = {name: src for name, src, _ in _SOURCES}
SOURCE_FIELDS: frozenset[str] = frozenset(FEATURE_SOURCES.values()) | {"applicationDate", "clarityFraudId"}
NUMBER_SOURCES: frozenset[str] = frozenset(src for _, src, reader in _SOURCES if reader is read_number)
FLAG_SOURCES: frozenset[str] = frozenset(src for _, src, reader in _SOURCES if reader is read_flag)

# The columnar builder: each field's values converted together by C-level maps; a column with an unusual value
# goes value by value through the readers, and a refused value is an error for its record (NaN in the column).

Column = Sequence[Any]
Errors = dict[int, FeatureError]
_F64 = np.float64
_NONE = type(None)
_FLOATS = frozenset({float})
_FLOATS_OR_NONE = frozenset({float, _NONE})
_TEXT = frozenset({str})
_TEXT_OR_NONE = frozenset({str, _NONE})
_NUMBER_MISSING: dict[Any, float] = {None: NAN, "": NAN}
# True == 1 == 1.0 and False == 0 == 0.0: one key serves the bool, the int and the float (read_flag agrees).
_FLAG_VALUES: dict[Any, float] = {True: 1.0, False: 0.0, None: NAN, "True": 1.0, "False": 0.0, "true": 1.0,
                                  "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "": NAN}  # fmt: skip
_NONE_AS_EMPTY = {None: ""}
_EMPTY_AS_ZERO = {"": "0"}
_EMPTY_AS_MISSING = {"": MISSING_CATEGORY}
_NONE_AS_MISSING = {None: MISSING_CATEGORY}
_FIRST_8 = slice(0, 8)
_REFUSED = (ValueError, OverflowError, TypeError)


def _each(values: Column, reader: Reader, src: str, errors: Errors, fill: Any) -> list[Any]:
    """``reader`` applied value by value; a refused value is ``fill`` and an error for its record."""
    out = []
    for i, v in enumerate(values):
        try:
            out.append(reader(v))
        except _REFUSED as exc:  # 1e400-sized ints, year-0 dates, lists
            errors.setdefault(i, FeatureError(src, str(exc), i))
            out.append(fill)
    return out


_FEW = 8


def _in_range(column: np.ndarray, src: str, errors: Errors) -> np.ndarray:
    """The column with values outside the field's range (or infinite) refused: NaN, and an error each."""
    low, high = RANGES[src]  # finite: an infinity is outside every range
    if len(column) < _FEW:  # a few values: Python's comparisons cost less than NumPy's calls
        if all(low <= v <= high or v != v for v in column.tolist()):
            return column
    bad = (column < low) | (column > high)  # NaN, a missing value, compares False both ways
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            v = float(column[i])
            wanted = "a finite number" if math.isinf(v) else f"a number from {low:g} to {high:g}"
            errors.setdefault(i, FeatureError(src, f"expected {wanted}, got {v:g}", i))
        column[bad] = NAN
    return column


def _number_column(values: Column, n: int, src: str, errors: Errors) -> np.ndarray:
    kinds = set(map(type, values))
    if kinds <= _FLOATS:
        out = np.fromiter(values, _F64, n)
    elif kinds <= _FLOATS_OR_NONE:
        out = np.array(values, dtype=_F64)  # None -> NaN
    else:
        try:  # text, ints, bools: float() in C, "" and None missing
            out = np.fromiter(map(float, map(_NUMBER_MISSING.get, values, values)), _F64, n)
        except _REFUSED:  # " ", a list, "abc": value by value
            out = np.array(_each(values, read_number, src, errors, NAN), dtype=_F64)
    return _in_range(out, src, errors)


def _flag_column(values: Column, n: int, src: str, errors: Errors) -> np.ndarray:
    try:
        return np.fromiter(map(_FLAG_VALUES.__getitem__, values), _F64, n)
    except (KeyError, TypeError):  # " yes ", NaN, 0.5, a list: value by value
        return np.array(_each(values, read_flag, src, errors, NAN), dtype=_F64)


def _category_column(values: Column, n: int, src: str, errors: Errors) -> list[str]:
    kinds = set(map(type, values))
    if kinds <= _TEXT:
        out = list(map(str.strip, values))
    elif kinds <= _TEXT_OR_NONE:
        out = list(map(str.strip, map(_NONE_AS_MISSING.get, values, values)))
    else:
        return _each(values, read_category, src, errors, MISSING_CATEGORY)
    return list(map(_EMPTY_AS_MISSING.get, out, out)) if "" in out else out


_CONVERT = {read_number: _number_column, read_flag: _flag_column, read_category: _category_column}


def _timestamps(values: Column, errors: Errors) -> list[datetime | None]:
    if set(map(type, values)) <= _TEXT:
        try:
            stamps = list(map(datetime.fromisoformat, map(str.strip, values)))
        except ValueError:  # "", or not a timestamp: value by value below
            pass
        else:
            if not any(map(attrgetter("tzinfo"), stamps)):
                return stamps  # type: ignore[return-value]
    return _each(values, read_timestamp, "applicationDate", errors, None)


def _report_ages(ids: Column, applied: list[Any], seconds: np.ndarray, errors: Errors) -> np.ndarray:
    n = len(ids)
    if set(map(type, ids)) <= _TEXT_OR_NONE:
        stripped = list(map(str.strip, map(_NONE_AS_EMPTY.get, ids, ids)))
        firsts = list(map(str.__getitem__, stripped, repeat(_FIRST_8)))
        try:
            issued = np.fromiter(map(int, map(_EMPTY_AS_ZERO.get, firsts, firsts), repeat(16)), _F64, n)
        except ValueError:  # not hexadecimal: value by value below (it is no error without a date)
            pass
        else:
            age = (seconds - issued) / 86400.0  # NaN where the date is missing
            return np.where(np.fromiter(map(bool, stripped), bool, n), age, NAN) if "" in stripped else age
    ages = []
    for i, (clarity_id, date) in enumerate(zip(ids, applied, strict=True)):
        try:
            ages.append(_report_age_days(clarity_id, date))
        except _REFUSED as exc:
            errors.setdefault(i, FeatureError("clarityFraudId", str(exc), i))
            ages.append(NAN)
    return np.array(ages, dtype=_F64)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom where bottom > 0 and top is a number, else NaN."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where((bottom > 0) & ~np.isnan(top), top / bottom, NAN)


def columns_from(column: Callable[[str], Column], n: int, errors: Errors | None = None) -> dict[str, Any]:
    """The model's input as columns (float64 arrays, lists of text) from ``column(field)``, one source field's values
    for all ``n`` records. With ``errors``, each refused record gets its first :class:`FeatureError` there (NaN in
    its place); without, the first refused record raises."""
    found: Errors = {} if errors is None else errors
    out: dict[str, Any] = {
        name: _CONVERT[reader](column(src), n, src, found) for name, src, reader in _SOURCES
    }
    applied = _timestamps(column("applicationDate"), found)
    if None in applied:
        hour = np.fromiter((float(a.hour) if a else NAN for a in applied), _F64, n)
        weekday = np.fromiter((float(a.weekday()) if a else NAN for a in applied), _F64, n)
        seconds = np.fromiter(((a - _EPOCH).total_seconds() if a else NAN for a in applied), _F64, n)
    else:
        hour = np.fromiter(map(attrgetter("hour"), applied), _F64, n)
        weekday = np.fromiter(map(datetime.weekday, applied), _F64, n)
        seconds = np.fromiter(map(timedelta.total_seconds, map(sub, applied, repeat(_EPOCH))), _F64, n)
    out["application_hour"] = hour
    out["application_weekday"] = weekday
    out["report_age_days"] = _report_ages(column("clarityFraudId"), applied, seconds, found)
    out["payment_to_amount"] = _ratio(out["originallyScheduledPaymentAmount"], out["loanAmount"])
    out["inquiries_recent_share"] = _ratio(out["inquiry_thirtydaysago"], out["inquiry_threesixtyfivedaysago"])
    if errors is None and found:
        raise found[min(found)]
    return out


def outside_contract(columns: dict[str, Any]) -> list[tuple[int, FeatureError]]:
    """Each record's first category outside the dataset contract, in record order (scored as unseen)."""
    found: dict[int, FeatureError] = {}
    for field, known in CATEGORIES.items():
        if known.issuperset(values := columns[field]):
            continue
        shown = f"one of {', '.join(sorted(known))}" if len(known) <= 12 else f"{len(known)} known values"
        for i, v in enumerate(values):
            if v not in known and v != MISSING_CATEGORY and i not in found:
                found[i] = FeatureError(
                    field, f"{v!r} is not a category of the dataset contract ({shown})", i
                )
    return sorted(found.items())


def take(columns: dict[str, Any], positions: Sequence[int]) -> dict[str, Any]:
    """The columns of the records at ``positions`` only (the refused ones left out)."""
    picked = np.asarray(positions, dtype=np.intp)
    index = picked.tolist()
    # a C-level pick from the lists of text (an itemgetter of one index gives a scalar, of none cannot be made)
    pick = itemgetter(*index) if len(index) > 1 else lambda values: [values[i] for i in index]
    return {k: v[picked] if isinstance(v, np.ndarray) else list(pick(v)) for k, v in columns.items()}


def build_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Model columns for records given as mappings; the first refused one raises :class:`FeatureError`."""
    n = len(records)
    if all(type(r) is dict for r in records):  # C-level dict.get over the records
        return columns_from(lambda name: list(map(dict.get, records, repeat(name))), n)  # type: ignore[arg-type]
    return columns_from(lambda name: [r.get(name) for r in records], n)


def rows_of(columns: dict[str, Any]) -> list[list[Any]]:
    """The columns laid out as rows (``FEATURE_NAMES`` order)."""
    values = [c.tolist() if isinstance(c, np.ndarray) else c for c in columns.values()]
    return [list(row) for row in zip(*values, strict=True)]


def build_rows(records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Model rows for records given as mappings."""
    return rows_of(build_columns(records)) if records else []


def build_row(record: Mapping[str, Any]) -> list[Any]:
    """One model row (:data:`FEATURE_NAMES` order) from one record; raises :class:`FeatureError`."""
    return build_rows([record])[0]
