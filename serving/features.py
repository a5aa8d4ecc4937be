"""Raw loan application → model row: the single feature code path of training and serving.

Training applies :func:`build_rows` to the joined loan + clarity records; the service applies it to the JSON
it receives. A record uses the field names of ``loan.csv`` and ``clarity_underwriting_variables.csv``; values may
be CSV strings ("590.0", "True", "") or typed (590.0, True, None, NaN), so a CSV row posted as JSON works as is.

Only decision-time fields are read. Outcomes (loanStatus, fpStatus, approval flags, payments) and identifiers
(loanId, anon_ssn, clarityFraudId, underwritingid) never become features; clarityFraudId only contributes the age
of the fraud report (its first 8 hex digits are a Unix time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

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
