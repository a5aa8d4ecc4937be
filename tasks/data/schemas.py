"""The pandera schemas of the three source files, built from the dataset contract: dtype, nullability, categories
and range or format rules. Each check's error text starts with the column name and never quotes a value."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa

from tasks.data import contract

LOAN_ID_PATTERN = r"^[A-Z]{2}-[A-Z]-\d{8}$"  # LL-I-07399092, LL-T-…, LP-I-000001xx
SSN_PATTERN = r"^[0-9a-fA-F]{32}$"
OBJECT_ID_PATTERN = r"^[0-9a-fA-F]{24}$"
TIMESTAMP_PATTERN = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?$"
)
# Listed codes are R01…R99, RXS, RAF, RBW, RFG, RIR, RUP, RWC, RXL, C01…, LPP01, MISSED; rare unlisted ones of
# the same shapes pass.
RETURN_CODE_PATTERN = r"^(R[0-9A-Z]{2}|C\d\d|LPP\d\d|MISSED)$"
REASON_DESCRIPTION_PATTERN = r"^\([A-Z0-9]{1,4}\) \S"  # "(S03) SSN match to address only", "(M) Mobile Phone"

_PANDERA_DTYPES: dict[contract.Kind, str] = {"float": "float64", "int": "Int64", "bool": "boolean"}

# Column rules beyond dtype and nullability: ("isin", values), ("range", (low, high)) or ("format", (pattern,
# what it is)). Columns not listed get their range in contract.RANGES, or a rule from their clarity group.
_RULES: dict[str, dict[str, tuple[str, Any]]] = {
    "loan": {
        "loanId": ("format", (LOAN_ID_PATTERN, "a loan id like LL-I-07399092")),
        "anon_ssn": ("format", (SSN_PATTERN, "32 hex characters")),
        "payFrequency": ("isin", contract.PAY_FREQUENCIES),
        "isFunded": ("isin", (0, 1)),
        "loanStatus": ("isin", contract.LOAN_STATUSES),
        "state": ("isin", contract.STATES),
        "leadType": ("isin", contract.LEAD_TYPES),
        "fpStatus": ("isin", contract.FP_STATUSES),
        "clarityFraudId": ("format", (OBJECT_ID_PATTERN, "24 hex characters")),
        "hasCF": ("isin", (0, 1)),
    },
    "payment": {
        "loanId": ("format", (LOAN_ID_PATTERN, "a loan id like LL-I-07399092")),
        "installmentIndex": ("range", (1, 1_000)),
        **dict.fromkeys(("principal", "fees", "paymentAmount"), ("range", (-10_000, 100_000))),
        "paymentStatus": ("isin", contract.PAYMENT_STATUSES),
        "paymentReturnCode": ("format", (RETURN_CODE_PATTERN, "a return code")),
    },
    "clarity": {"underwritingid": ("format", (OBJECT_ID_PATTERN, "24 hex characters"))},
}
_CODE_FORMATS = {
    "phonetype": r"^[A-Z]{1,3}$",
    "ssndobreasoncode": r"^D\d\d$",
    "ssnnamereasoncode": r"^S\d\d$",
    "nameaddressreasoncode": r"^A\d{1,2}$",
    **dict.fromkeys(
        ("ssnnamereasoncodedescription", "nameaddressreasoncodedescription", "phonematchtypedescription"),
        REASON_DESCRIPTION_PATTERN,
    ),
}


def _clarity_rule(column: str) -> tuple[str, Any] | None:
    """Identity verification results: a category or a code."""
    group, _, name = column.removeprefix(contract.CLARITY_PREFIX).rpartition(".")
    if group != "clearfraudidentityverification":
        return None
    if name in _CODE_FORMATS:
        return ("format", (_CODE_FORMATS[name], "a known code"))
    return ("isin", contract.PHONE_MATCH_TYPES if name == "phonematchtype" else contract.MATCH_RESULTS)


def _check(column: str, rule: tuple[str, Any]) -> pa.Check:
    kind, arg = rule
    if kind == "isin":
        error = f"{column}: not 0 or 1" if arg == (0, 1) else f"{column}: unknown category"
        return pa.Check.isin(list(arg), error=error)
    if kind == "range":
        low, high = arg
        return pa.Check.in_range(low, high, error=f"{column}: out of range [{low:g}, {high:g}]")
    pattern, what = arg
    return pa.Check.str_matches(pattern, error=f"{column}: not {what}")


def _column(key: str, column: str) -> pa.Column:
    kind = contract.DTYPES[key][column]
    rule = _RULES[key].get(column) or (
        ("range", contract.RANGES[column]) if column in contract.RANGES else _clarity_rule(column)
    )
    if kind == "timestamp":
        rule = ("format", (TIMESTAMP_PATTERN, "an ISO timestamp"))
    checks = [_check(column, rule)] if rule else []
    if contract.UNIQUE_IDS.get(key) == column:  # flags repeats only: the first occurrence stays clean
        checks.append(pa.Check(lambda s: ~s.duplicated(keep="first"), error=f"{column}: duplicate id"))
    dtype = _PANDERA_DTYPES.get(kind, str)
    return pa.Column(
        dtype, checks, nullable=column not in contract.REQUIRED[key], coerce=dtype is not str, name=column
    )


def _has_cf_consistent(df: pd.DataFrame) -> pd.Series:
    return df["hasCF"].eq(1).fillna(False).astype(bool) == df["clarityFraudId"].notna()


HAS_CF_RULE = pa.Check(_has_cf_consistent, error="hasCF: must be 1 exactly when clarityFraudId is present")
SCHEMAS: dict[str, pa.DataFrameSchema] = {
    key: pa.DataFrameSchema(
        {column: _column(key, column) for column in contract.COLUMNS[key]},
        checks=[HAS_CF_RULE] if key == "loan" else None,
        name=name,
    )
    for key, name in contract.FILES.items()
}
