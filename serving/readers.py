"""Value readers: one source value → a feature value, CSV strings and typed values alike ("590.0" and 590.0,
"True" and True, "" and None). The columnar builder (:mod:`serving.features`) goes through them value by value
for a column it cannot convert at once, so a refused value is named the same way everywhere."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from serving.errors import FeatureError  # noqa: F401  (its readers import it from here)

MISSING_CATEGORY = "NA"
NAN = float("nan")
_EPOCH = datetime(1970, 1, 1)
_FLAG_TEXT = {**dict.fromkeys(("true", "1", "1.0", "t", "yes"), 1.0), "": NAN}
_FLAG_TEXT |= dict.fromkeys(("false", "0", "0.0", "f", "no"), 0.0)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def read_number(v: Any) -> float:
    """A float, or NaN when missing. Accepts numbers (bools, NumPy scalars) and numeric strings."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return NAN
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ValueError(
            f"expected a number, got {repr(v) if isinstance(v, str) else type(v).__name__}"
        ) from None


def read_flag(v: Any) -> float:
    """1.0 / 0.0 for a boolean (True/False, "True"/"False", 1/0), NaN when missing."""
    if isinstance(v, str):
        if (f := _FLAG_TEXT.get(v.strip().lower())) is None:
            raise ValueError(f"expected true or false, got {v!r}")
        return f
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NAN
    if (isinstance(v, bool | int | float) or type(v).__name__ == "bool_") and float(v) in (0.0, 1.0):
        return float(v)
    shown = type(v).__name__ if isinstance(v, list | dict) else repr(v)  # never repr a deep nesting
    raise ValueError(f"expected true or false, got {shown}")


def read_category(v: Any) -> str:
    """The category as a string; missing values become ``NA``."""
    if _is_missing(v):
        return MISSING_CATEGORY
    if isinstance(v, dict | list):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return v.strip() if isinstance(v, str) else str(v)


def _naive_utc(d: datetime) -> datetime:
    return d if d.tzinfo is None else d.astimezone(UTC).replace(tzinfo=None)


def read_timestamp(v: Any) -> datetime | None:
    """A naive UTC datetime from an ISO string (with or without fraction) or a datetime; None when missing."""
    if _is_missing(v):
        return None
    if isinstance(v, datetime):
        return _naive_utc(v)
    if not isinstance(v, str):
        raise ValueError(f"expected an ISO timestamp string, got {type(v).__name__}")
    try:
        return _naive_utc(datetime.fromisoformat(v.strip()))
    except ValueError:
        raise ValueError(f"expected an ISO timestamp like 2016-02-23T17:29:01.940000, got {v!r}") from None


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
