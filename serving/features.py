"""Raw loan application → model row: the single feature code path of training and serving.

Training applies :func:`build_rows` to the joined loan + clarity records; the service applies it (or, for batches,
its column-wise twin) to the JSON it receives. A record uses the field names of ``loan.csv`` and
``clarity_underwriting_variables.csv``; values may be CSV strings ("590.0", "True", "") or typed (590.0, True,
None, NaN), so a CSV row posted as JSON works as is.

Two builders read the same feature table: :func:`build_row`/:func:`build_rows` a record at a time (training, single
records, and the checked way that names a bad field), :func:`columns_from`/:func:`build_columns` a column at a
time (batches). They stay in one module, over the ~400-line guide, because they must give the same values: a
feature is defined once, in the table below, and both read it.

Only decision-time fields are read. Outcomes (loanStatus, fpStatus, approval flags, payments) and identifiers
(loanId, anon_ssn, clarityFraudId, underwritingid) never become features; clarityFraudId only contributes the age
of the fraud report (its first 8 hex digits are a Unix time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter, sub
from typing import Any

import numpy as np

# The field names are the dataset contract's; the names this module does not use are re-exported for its readers.
from serving.contract import (  # noqa: F401
    CLARITY_COLUMNS,
    CLARITY_PREFIX,
    IDENTIFIER_FIELDS,
    IDENTITY_FIELDS,
    INDICATOR_FIELDS,
    INQUIRY_FIELDS,
    KNOWN_FIELDS,
    LOAN_COLUMNS,
    NUMERIC_INDICATORS,
    OUTCOME_FIELDS,
    PAYMENT_COLUMNS,
    clarity_column,
)

FEATURE_VERSION = "1"
MISSING_CATEGORY = "NA"
NAN = float("nan")

# Descriptions repeat their code one-to-one; the code is the feature.
REDUNDANT_IDENTITY = (
    "ssnnamereasoncodedescription",
    "nameaddressreasoncodedescription",
    "phonematchtypedescription",
)


class FeatureError(ValueError):
    """A field of a record cannot be read; names the field (and the record index when known)."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field, self.message, self.index = field, message, index
        where = f"record {index}, " if index is not None else ""
        super().__init__(f"{where}field '{field}': {message}")


# --- value readers: accept CSV strings and typed values alike -------------------------------------------


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def read_number(v: Any) -> float:
    """A float, or NaN when missing. Accepts numbers and numeric strings; rejects everything else."""
    if v is None:
        return NAN
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if not s:
            return NAN
        try:
            return float(s)
        except ValueError:
            raise ValueError(f"expected a number, got {v!r}") from None
    try:  # numpy scalars
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {type(v).__name__}") from None


_TRUE = frozenset({"true", "1", "1.0", "t", "yes"})
_FALSE = frozenset({"false", "0", "0.0", "f", "no"})


def read_flag(v: Any) -> float:
    """1.0 / 0.0 for a boolean (True/False, "True"/"False", 1/0), NaN when missing."""
    if v is None:
        return NAN
    if isinstance(v, str):
        s = v.strip().lower()
        if not s:
            return NAN
        if s in _TRUE:
            return 1.0
        if s in _FALSE:
            return 0.0
        raise ValueError(f"expected true or false, got {v!r}")
    if isinstance(v, float) and math.isnan(v):
        return NAN
    if isinstance(v, bool | int | float) or type(v).__name__ in ("bool_", "bool"):
        f = float(v)
        if f in (0.0, 1.0):
            return f
    shown = type(v).__name__ if isinstance(v, list | dict) else repr(v)  # never repr a deep nesting
    raise ValueError(f"expected true or false, got {shown}")


def read_category(v: Any) -> str:
    """The category as a string; missing values become ``NA``."""
    if _is_missing(v):
        return MISSING_CATEGORY
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, dict | list):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return str(v)


def read_timestamp(v: Any) -> datetime | None:
    """A naive UTC datetime from an ISO string (with or without fraction) or a datetime; None when missing."""
    if _is_missing(v):
        return None
    if isinstance(v, datetime):
        return v.replace(tzinfo=None) if v.tzinfo is None else v.astimezone(UTC).replace(tzinfo=None)
    if isinstance(v, str):
        try:
            d = datetime.fromisoformat(v.strip())
        except ValueError:
            raise ValueError(
                f"expected an ISO timestamp like 2016-02-23T17:29:01.940000, got {v!r}"
            ) from None
        return d if d.tzinfo is None else d.astimezone(UTC).replace(tzinfo=None)
    raise ValueError(f"expected an ISO timestamp string, got {type(v).__name__}")


_EPOCH = datetime(1970, 1, 1)


def _report_age_days(clarity_id: Any, applied: datetime | None) -> float:
    """Days between the clarity report (time in the id's first 8 hex digits) and the application."""
    if _is_missing(clarity_id) or applied is None:
        return NAN
    if isinstance(clarity_id, list | dict):
        raise ValueError(f"expected 24 hexadecimal characters, got {type(clarity_id).__name__}")
    s = str(clarity_id).strip()
    try:
        issued = int(s[:8], 16)
    except ValueError:
        raise ValueError(f"expected 24 hexadecimal characters, got {s!r}") from None
    return ((applied - _EPOCH).total_seconds() - issued) / 86400.0


# --- the feature table ------------------------------------------------------------------------------------

Reader = Callable[[Any], Any]

# (feature name, source field, reader, categorical?)
_DIRECT: list[tuple[str, str, Reader, bool]] = [
    ("payFrequency", "payFrequency", read_category, True),
    ("apr", "apr", read_number, False),
    ("nPaidOff", "nPaidOff", read_number, False),
    ("loanAmount", "loanAmount", read_number, False),
    ("originallyScheduledPaymentAmount", "originallyScheduledPaymentAmount", read_number, False),
    ("state", "state", read_category, True),
    ("leadType", "leadType", read_category, True),
    ("leadCost", "leadCost", read_number, False),
    ("hasCF", "hasCF", read_flag, False),
]
_DIRECT += [
    (f"inquiry_{f}", clarity_column("clearfraudinquiry", f), read_number, False) for f in INQUIRY_FIELDS
]
_DIRECT += [
    (f"indicator_{f}", clarity_column("clearfraudindicator", f), read_number if f in NUMERIC_INDICATORS else read_flag, False)
    for f in INDICATOR_FIELDS
]  # fmt: skip
_DIRECT += [
    (
        f"identity_{f}",
        clarity_column("clearfraudidentityverification", f),
        read_number if f == "overallmatchreasoncode" else read_category,
        f != "overallmatchreasoncode",
    )
    for f in IDENTITY_FIELDS
    if f not in REDUNDANT_IDENTITY
]
_DIRECT.append(("clearfraudscore", "clearfraudscore", read_number, False))

DERIVED_FEATURES = (
    "application_hour",
    "application_weekday",
    "report_age_days",
    "payment_to_amount",
    "inquiries_recent_share",
)

FEATURE_NAMES: tuple[str, ...] = tuple(name for name, *_ in _DIRECT) + DERIVED_FEATURES
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(name for name, _, _, is_cat in _DIRECT if is_cat)
CATEGORICAL_INDICES: tuple[int, ...] = tuple(FEATURE_NAMES.index(c) for c in CATEGORICAL_FEATURES)
# The source field each direct feature reads (the derived features are computed from several, or from an id).
FEATURE_SOURCES: dict[str, str] = {name: src for name, src, _, _ in _DIRECT}
SOURCE_FIELDS: frozenset[str] = frozenset(src for _, src, _, _ in _DIRECT) | {
    "applicationDate",
    "clarityFraudId",
}

_INQ_30 = clarity_column("clearfraudinquiry", "thirtydaysago")
_INQ_365 = clarity_column("clearfraudinquiry", "threesixtyfivedaysago")
_READERS = [(src, reader) for _, src, reader, _ in _DIRECT]

# --- fast paths (serving speed): the common value types first, everything else to the readers above ------
# Each returns exactly what its reader returns (same value, same type, same error); only the order of the
# type checks differs. float(" 590.0 ") strips whitespace like read_number does.

_FLAG_STRINGS = {"True": 1.0, "False": 0.0, "true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0,
                 "0.0": 0.0, "": NAN}  # fmt: skip


def _fast_number(v: Any) -> float:
    cls = v.__class__
    if cls is float:
        return v
    if cls is str:
        try:
            return float(v)
        except ValueError:
            return read_number(v)  # "" -> NaN, or the reader's error
    if v is None:
        return NAN
    return read_number(v)


def _fast_flag(v: Any) -> float:
    cls = v.__class__
    if cls is bool:
        return 1.0 if v else 0.0
    if cls is str:
        flag = _FLAG_STRINGS.get(v)
        if flag is not None:
            return flag
    elif v is None:
        return NAN
    return read_flag(v)


def _fast_category(v: Any) -> str:
    if v.__class__ is str:
        s = v.strip()
        return s if s else MISSING_CATEGORY
    if v is None:
        return MISSING_CATEGORY
    return read_category(v)


_FAST = {read_number: _fast_number, read_flag: _fast_flag, read_category: _fast_category}
_FAST_READERS = [(src, _FAST.get(reader, reader)) for src, reader in _READERS]
_I_AMOUNT = FEATURE_NAMES.index("loanAmount")
_I_SCHEDULED = FEATURE_NAMES.index("originallyScheduledPaymentAmount")
_I_INQ_30 = FEATURE_NAMES.index("inquiry_thirtydaysago")
_I_INQ_365 = FEATURE_NAMES.index("inquiry_threesixtyfivedaysago")


def _direct_features_checked(get: Callable[[str], Any]) -> list[Any]:
    """The direct features read one by one, so that an error names its field."""
    row: list[Any] = []
    for src, reader in _READERS:
        try:
            row.append(reader(get(src)))
        except (ValueError, OverflowError) as exc:  # 1e400-sized ints, year-0 dates
            raise FeatureError(src, str(exc)) from None
    return row


def build_row(record: Mapping[str, Any]) -> list[Any]:
    """One model row (in :data:`FEATURE_NAMES` order) from one raw record; raises :class:`FeatureError`."""
    get = record.get
    try:
        row = [reader(get(src)) for src, reader in _FAST_READERS]
    except (ValueError, OverflowError):
        row = _direct_features_checked(get)  # raises naming the field
    try:
        applied = read_timestamp(get("applicationDate"))
    except (ValueError, OverflowError) as exc:
        raise FeatureError("applicationDate", str(exc)) from None
    try:
        age = _report_age_days(get("clarityFraudId"), applied)
    except (ValueError, OverflowError) as exc:
        raise FeatureError("clarityFraudId", str(exc)) from None
    amount = row[_I_AMOUNT]
    scheduled = row[_I_SCHEDULED]
    inq30 = row[_I_INQ_30]  # read_number of _INQ_30, as above
    inq365 = row[_I_INQ_365]
    append = row.append
    append(float(applied.hour) if applied else NAN)
    append(float(applied.weekday()) if applied else NAN)
    append(age)
    append(scheduled / amount if amount and amount > 0 and not math.isnan(scheduled) else NAN)
    append(inq30 / inq365 if inq365 and inq365 > 0 and not math.isnan(inq30) else NAN)
    return row


def build_rows(records: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """Model rows for many records; a :class:`FeatureError` carries the index of the failing record."""
    rows = []
    for i, record in enumerate(records):
        try:
            rows.append(build_row(record))
        except FeatureError as exc:
            raise FeatureError(exc.field, exc.message, i) from None
    return rows


# --- the columnar builder (batches) --------------------------------------------------------------------
# The same features as build_row, built one column at a time: each source field's values for every record
# are converted together, by C-level maps (float, dict lookups, str.strip, datetime.fromisoformat) into NumPy
# arrays, so the per-value cost is that of the C loop, not of a Python call. A column whose values are not of
# the common kinds goes through the same fast readers as build_row, value by value; a value a reader refuses
# raises ValueError/OverflowError here, and the callers then build the rows one by one (build_rows), which
# names the record and field. Exactly build_row's values: tests/serving/test_columnar.py proves it.

Column = Sequence[Any]
_F64 = np.float64
_NONE = type(None)
_FLOATS = frozenset({float})
_FLOATS_OR_NONE = frozenset({float, _NONE})
_TEXT = frozenset({str})
_TEXT_OR_NONE = frozenset({str, _NONE})
_NUMBER_MISSING: dict[Any, float] = {None: NAN, "": NAN}
# True == 1 == 1.0 and False == 0 == 0.0: one key serves the bool, the int and the float (read_flag agrees).
_FLAG_VALUES: dict[Any, float] = {True: 1.0, False: 0.0, None: NAN, **_FLAG_STRINGS}
_NONE_AS_EMPTY = {None: ""}
_EMPTY_AS_ZERO = {"": "0"}
_EMPTY_AS_MISSING = {"": MISSING_CATEGORY}
_NONE_AS_MISSING = {None: MISSING_CATEGORY}
_FIRST_8 = slice(0, 8)


def _number_column(values: Column, n: int) -> np.ndarray:
    kinds = set(map(type, values))
    if kinds <= _FLOATS:
        return np.fromiter(values, _F64, n)
    if kinds <= _FLOATS_OR_NONE:
        return np.array(values, dtype=_F64)  # None -> NaN
    try:  # text, ints, bools: float() in C, "" and None missing
        return np.fromiter(map(float, map(_NUMBER_MISSING.get, values, values)), _F64, n)
    except (TypeError, ValueError):  # " ", a list, "abc": each value through the reader (which may refuse it)
        return np.fromiter(map(_fast_number, values), _F64, n)


def _flag_column(values: Column, n: int) -> np.ndarray:
    try:
        return np.fromiter(map(_FLAG_VALUES.__getitem__, values), _F64, n)
    except (KeyError, TypeError):  # " yes ", NaN, 0.5, a list: each value through the reader
        return np.fromiter(map(_fast_flag, values), _F64, n)


def _category_column(values: Column, n: int) -> list[str]:
    kinds = set(map(type, values))
    if kinds <= _TEXT:
        out = list(map(str.strip, values))
    elif kinds <= _TEXT_OR_NONE:
        out = list(map(str.strip, map(_NONE_AS_MISSING.get, values, values)))
    else:
        return list(map(_fast_category, values))
    return list(map(_EMPTY_AS_MISSING.get, out, out)) if "" in out else out


_CONVERT: dict[Reader, Callable[[Column, int], Any]] = {
    read_number: _number_column,
    read_flag: _flag_column,
    read_category: _category_column,
}


def _timestamps(values: Column) -> list[datetime | None]:
    if set(map(type, values)) <= _TEXT:
        try:
            stamps = list(map(datetime.fromisoformat, map(str.strip, values)))
        except ValueError:  # "", or not a timestamp: value by value below
            pass
        else:
            if not any(map(attrgetter("tzinfo"), stamps)):
                return stamps  # type: ignore[return-value]
    return list(map(read_timestamp, values))


def _report_ages(ids: Column, applied: list[datetime | None], seconds: np.ndarray) -> np.ndarray:
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
    return np.fromiter(map(_report_age_days, ids, applied), _F64, n)


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom where bottom > 0 and top is a number, else NaN (as build_row's conditional)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where((bottom > 0) & ~np.isnan(top), top / bottom, NAN)


def columns_from(column: Callable[[str], Column], n: int) -> dict[str, Any]:
    """The model's input as columns (``FEATURE_NAMES`` order: float64 arrays, lists of text for categories).

    ``column(field)`` gives the values of one source field for all ``n`` records (None where missing). Raises
    ValueError or OverflowError on a value a reader refuses, without saying where: see :func:`build_columns`.
    """
    out: dict[str, Any] = {}
    for name, src, reader, _ in _DIRECT:
        out[name] = _CONVERT[reader](column(src), n)
    applied = _timestamps(column("applicationDate"))
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
    out["report_age_days"] = _report_ages(column("clarityFraudId"), applied, seconds)
    out["payment_to_amount"] = _ratio(out["originallyScheduledPaymentAmount"], out["loanAmount"])
    out["inquiries_recent_share"] = _ratio(out["inquiry_thirtydaysago"], out["inquiry_threesixtyfivedaysago"])
    return out


def columns_from_rows(rows: list[list[Any]]) -> dict[str, Any]:
    """The columns of rows built by :func:`build_rows` (the same values, laid out by feature)."""
    categorical = set(CATEGORICAL_INDICES)
    by_feature = list(zip(*rows, strict=True)) if rows else [() for _ in FEATURE_NAMES]
    return {
        name: list(values) if i in categorical else np.array(values, dtype=_F64)
        for i, (name, values) in enumerate(zip(FEATURE_NAMES, by_feature, strict=True))
    }


def build_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Model columns for many records (:func:`columns_from`); a bad value raises :class:`FeatureError` naming
    the record index and field, exactly as :func:`build_rows` does (it is what finds them)."""
    if all(type(r) is dict for r in records):
        get: Callable[[str], Column] = lambda name: list(map(dict.get, records, repeat(name)))  # noqa: E731
    else:
        get = lambda name: [r.get(name) for r in records]  # noqa: E731
    try:
        return columns_from(get, len(records))
    except (ValueError, OverflowError, TypeError):
        return columns_from_rows(build_rows(records))  # raises naming the record and field


def unknown_fields(record: Mapping[str, Any]) -> list[str]:
    """Field names in ``record`` that belong to none of the three files (they are ignored)."""
    return [k for k in record if k not in KNOWN_FIELDS]


def columns_to_records(columns: Sequence[str], data: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Records from a column list and row values (MLflow's ``dataframe_split``); checks row widths."""
    width = len(columns)
    out = []
    for i, values in enumerate(data):
        if not isinstance(values, list | tuple) or len(values) != width:
            raise FeatureError("data", f"expected a list of {width} values", i)
        out.append(dict(zip(columns, values, strict=True)))
    return out
