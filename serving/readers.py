"""Value readers: one source value → a feature value, CSV strings and typed values alike ("590.0" and 590.0,
"True" and True, "" and None). The columnar builder (:mod:`serving.features`) goes through them value by value
for a column it cannot convert at once, so a refused value is named the same way everywhere.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

MISSING_CATEGORY = "NA"
NAN = float("nan")


class FeatureError(ValueError):
    """A field of a record cannot be read; names the field (and the record index when known)."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field, self.message, self.index = field, message, index
        where = f"record {index}, " if index is not None else ""
        super().__init__(f"{where}field '{field}': {message}")


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
            message = f"expected an ISO timestamp like 2016-02-23T17:29:01.940000, got {v!r}"
            raise ValueError(message) from None
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
