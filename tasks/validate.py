"""Validate the three raw CSV files: read them faithfully, check them with pandera, quarantine bad rows.

Rules come in two kinds.

* **Table rules** - a file is missing, empty, unparseable or truncated (a row with the wrong field count), a
  column is missing or holds no value of its type at all. They raise :class:`DataValidationError` naming the
  file and the column or line.
* **Row rules** - a cell that cannot be read as its column's type, a category, range or format outside the
  documented ones, a duplicate id (the first occurrence is kept), a payment whose loan is missing or
  quarantined, ``hasCF`` disagreeing with ``clarityFraudId``. Such rows leave the clean tables and go to
  ``<quarantine_dir>/<file stem>.quarantine.csv`` with their source line and the rules they broke. When the
  quarantined share of a file exceeds the limit, :func:`validate_tables` raises :class:`DataValidationError`.

Line numbers assume the tables keep the index :func:`read_tables` gives them (data row ``i`` is line ``i + 2``,
the header being line 1) and that no quoted field spans lines (true of the real files).

The plain functions (:func:`read_tables`, :func:`validate_tables`, :func:`validate`) work without a Prefect
run; :data:`validate_task` is the Prefect task (no retries: bad data stays bad).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from pandera.errors import SchemaErrors
from prefect import task
from prefect.cache_policies import NO_CACHE

from serving.features import CLARITY_COLUMNS, CLARITY_PREFIX, LOAN_COLUMNS, PAYMENT_COLUMNS
from tasks.common import PermanentError, run_logger
from tasks.settings import Settings

logger = logging.getLogger(__name__)

FILES: dict[str, str] = {
    "loan": "loan.csv",
    "payment": "payment.csv",
    "clarity": "clarity_underwriting_variables.csv",
}
COLUMNS: dict[str, tuple[str, ...]] = {
    "loan": LOAN_COLUMNS,
    "payment": PAYMENT_COLUMNS,
    "clarity": CLARITY_COLUMNS,
}

try:  # the pyarrow CSV reader and compute kernels are several times faster than pandas' own at full size
    import pyarrow
    import pyarrow.compute as pc

    CSV_ENGINE = "pyarrow"
except ImportError:  # pragma: no cover - pyarrow comes with mlflow
    pyarrow = pc = None
    CSV_ENGINE = "c"


class DataValidationError(PermanentError, ValueError):
    """The data breaks a table rule or too many rows break row rules; names the file and column or line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        line: int | None = None,
        result: ValidationResult | None = None,
    ) -> None:
        super().__init__(message)
        self.file, self.column, self.line = file, column, line
        self.result = result  # set when too many rows were quarantined: the report and quarantine files


# --- allowed values (dataset.md, real quirks included) ----------------------------------------------------

PAY_FREQUENCIES = ("B", "W", "M", "I", "S")
LOAN_STATUSES = (
    "Withdrawn Application", "Rejected", "Paid Off Loan", "External Collection", "New Loan",
    "Internal Collection", "Returned Item", "CSR Voided New Loan", "Settlement Paid Off", "Credit Return Void",
    "Customer Voided New Loan", "Settled Bankruptcy", "Pending Paid Off", "Charged Off Paid Off",
    "Pending Application Fee", "Pending Rescind", "Pending Application", "Voided New Loan", "Charged Off",
    "Customver Voided New Loan", "Settlement Pending Paid Off",
)  # fmt: skip
US_STATES = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY",
    "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH",
    "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
)  # fmt: skip
STATES = (*US_STATES, "OH-TEST", "TX-TEST")
LEAD_TYPES = (
    "bvMandatory", "lead", "organic", "prescreen", "rc_returning", "california", "lionpay", "repeat",
    "instant-offer", "express",
)  # fmt: skip
FP_STATUSES = (
    "Checked",
    "No Payments",
    "Rejected",
    "No Schedule",
    "Cancelled",
    "Skipped",
    "Pending",
    "Returned",
)
PAYMENT_STATUSES = (
    "Cancelled", "Checked", "None", "Rejected", "Pending", "Skipped", "Rejected Awaiting Retry", "Complete",
    "Returned",
)  # fmt: skip
MATCH_RESULTS = ("match", "partial", "mismatch", "unavailable", "invalid", "other")
PHONE_MATCH_TYPES = ("M", "U", "FA", "LA", "A", "F", "P", "L")

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


# --- schema building blocks ---------------------------------------------------------------------------------


def _isin(column: str, values: tuple[str, ...]) -> pa.Check:
    return pa.Check.isin(list(values), error=f"{column}: unknown category")


def _range(column: str, low: float, high: float) -> pa.Check:
    return pa.Check.in_range(low, high, error=f"{column}: out of range [{low:g}, {high:g}]")


def _format(column: str, pattern: str, what: str) -> pa.Check:
    return pa.Check.str_matches(pattern, error=f"{column}: not {what}")


def _unique_first(column: str) -> pa.Check:
    """Vectorised uniqueness that flags repeats only, so the first occurrence stays clean."""
    return pa.Check(lambda s: ~s.duplicated(keep="first"), error=f"{column}: duplicate id")


def _text(column: str, *checks: pa.Check, nullable: bool = True, unique_first: bool = False) -> pa.Column:
    extra = [_unique_first(column)] if unique_first else []
    return pa.Column(str, [*checks, *extra], nullable=nullable, name=column)


def _number(column: str, low: float, high: float, *, nullable: bool = True) -> pa.Column:
    return pa.Column(float, _range(column, low, high), nullable=nullable, coerce=True, name=column)


def _integer(column: str, *checks: pa.Check, nullable: bool = False) -> pa.Column:
    return pa.Column("Int64", list(checks), nullable=nullable, coerce=True, name=column)


def _flag(column: str, *, nullable: bool = False) -> pa.Column:
    return pa.Column("boolean", nullable=nullable, coerce=True, name=column)


def _timestamp(column: str, *, nullable: bool = False) -> pa.Column:
    return _text(column, _format(column, TIMESTAMP_PATTERN, "an ISO timestamp"), nullable=nullable)


def _has_cf_consistent(df: pd.DataFrame) -> pd.Series:
    return df["hasCF"].eq(1).fillna(False).astype(bool) == df["clarityFraudId"].notna()


def _columns(columns: list[pa.Column]) -> dict[str, pa.Column]:
    return {c.name: c for c in columns}


LOAN_SCHEMA = pa.DataFrameSchema(
    _columns(
        [
            _text(
                "loanId",
                _format("loanId", LOAN_ID_PATTERN, "a loan id like LL-I-07399092"),
                unique_first=True,
            ),
            _text("anon_ssn", _format("anon_ssn", SSN_PATTERN, "32 hex characters"), nullable=False),
            _text("payFrequency", _isin("payFrequency", PAY_FREQUENCIES)),
            _number("apr", 0, 1_000),
            _timestamp("applicationDate"),
            _flag("originated"),
            _timestamp("originatedDate", nullable=True),
            _number("nPaidOff", 0, 100),
            _flag("approved"),
            _integer("isFunded", pa.Check.isin([0, 1], error="isFunded: not 0 or 1")),
            _text("loanStatus", _isin("loanStatus", LOAN_STATUSES)),
            _number("loanAmount", 0, 10_000),
            _number("originallyScheduledPaymentAmount", -10_000, 100_000, nullable=False),
            _text("state", _isin("state", STATES)),
            _text("leadType", _isin("leadType", LEAD_TYPES), nullable=False),
            _integer("leadCost", _range("leadCost", 0, 1_000)),
            _text("fpStatus", _isin("fpStatus", FP_STATUSES)),
            _text("clarityFraudId", _format("clarityFraudId", OBJECT_ID_PATTERN, "24 hex characters")),
            _integer("hasCF", pa.Check.isin([0, 1], error="hasCF: not 0 or 1")),
        ]
    ),
    checks=[
        pa.Check(_has_cf_consistent, error="hasCF: must be 1 exactly when clarityFraudId is present"),
    ],
    name="loan.csv",
)

PAYMENT_SCHEMA = pa.DataFrameSchema(
    _columns(
        [
            _text(
                "loanId", _format("loanId", LOAN_ID_PATTERN, "a loan id like LL-I-07399092"), nullable=False
            ),
            _integer("installmentIndex", _range("installmentIndex", 1, 1_000)),
            _flag("isCollection"),
            _timestamp("paymentDate"),
            _number("principal", -10_000, 100_000, nullable=False),
            _number("fees", -10_000, 100_000, nullable=False),
            _number("paymentAmount", -10_000, 100_000, nullable=False),
            _text("paymentStatus", _isin("paymentStatus", PAYMENT_STATUSES), nullable=False),
            _text("paymentReturnCode", _format("paymentReturnCode", RETURN_CODE_PATTERN, "a return code")),
        ]
    ),
    name="payment.csv",
)

_INDICATOR_RANGES = {"totalnumberoffraudindicators": 100, "maxnumberofssnswithanybankaccount": 1_000_000}
_IDENTITY_CHECKS: dict[str, tuple[str, Any]] = {
    "ssnnamematch": ("isin", MATCH_RESULTS),
    "nameaddressmatch": ("isin", MATCH_RESULTS),
    "phonematchtype": ("isin", PHONE_MATCH_TYPES),
    "ssnnamereasoncodedescription": ("format", REASON_DESCRIPTION_PATTERN),
    "phonematchresult": ("isin", MATCH_RESULTS),
    "nameaddressreasoncodedescription": ("format", REASON_DESCRIPTION_PATTERN),
    "phonematchtypedescription": ("format", REASON_DESCRIPTION_PATTERN),
    "overallmatchresult": ("isin", MATCH_RESULTS),
    "phonetype": ("format", r"^[A-Z]{1,3}$"),
    "ssndobreasoncode": ("format", r"^D\d\d$"),
    "ssnnamereasoncode": ("format", r"^S\d\d$"),
    "nameaddressreasoncode": ("format", r"^A\d{1,2}$"),
    "ssndobmatch": ("isin", MATCH_RESULTS),
}


def _clarity_column(column: str) -> pa.Column:
    """The clarity column's rule, from its group and name."""
    short = column.removeprefix(CLARITY_PREFIX)
    group, _, name = short.rpartition(".")
    if column == "underwritingid":
        return _text(
            column, _format(column, OBJECT_ID_PATTERN, "24 hex characters"), nullable=False, unique_first=True
        )
    if column == "clearfraudscore":
        return _number(column, 0, 1_000)
    if group == "clearfraudinquiry":
        return _number(column, 0, 10_000)
    if group == "clearfraudindicator":
        return (
            _number(column, 0, _INDICATOR_RANGES[name])
            if name in _INDICATOR_RANGES
            else _flag(column, nullable=True)
        )
    if name == "overallmatchreasoncode":
        return _number(column, 0, 1_000)
    kind, arg = _IDENTITY_CHECKS[name]
    check = _isin(column, arg) if kind == "isin" else _format(column, arg, "a known code")
    return _text(column, check)


CLARITY_SCHEMA = pa.DataFrameSchema(
    _columns([_clarity_column(c) for c in CLARITY_COLUMNS]), name=FILES["clarity"]
)

SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "loan": LOAN_SCHEMA,
    "payment": PAYMENT_SCHEMA,
    "clarity": CLARITY_SCHEMA,
}


def _kind(schema: pa.DataFrameSchema, column: str) -> str:
    """'float', 'int', 'bool' or 'str': how a column's text is read."""
    dtype = str(schema.columns[column].dtype)
    return {"float64": "float", "Int64": "int", "boolean": "bool"}.get(dtype, "str")


# --- cell conversion (vectorised) ---------------------------------------------------------------------------

_TRUE = ("True", "true", "TRUE", "1", "1.0")
_FALSE = ("False", "false", "FALSE", "0", "0.0")
_KIND_WORDS = {"float": "a number", "int": "an integer", "bool": "True or False", "str": "text"}


def _to_float(s: pd.Series) -> tuple[pd.Series, pd.Series | None]:
    if is_numeric_dtype(s) and not is_bool_dtype(s):
        return s.astype("float64"), None
    if pyarrow is not None and pd.api.types.is_string_dtype(s):
        try:  # fast path: every cell parses
            values = pc.cast(pyarrow.array(s, from_pandas=True), pyarrow.float64()).to_numpy(
                zero_copy_only=False
            )
            return pd.Series(values, index=s.index, name=s.name), None
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, TypeError):
            pass
    num = pd.to_numeric(s, errors="coerce").astype("float64")
    bad = s.notna() & num.isna()
    return num, (bad if bad.any() else None)


def _isin_fast(s: pd.Series, values: pd.Series) -> np.ndarray:
    """``s.isin(values)`` as a numpy mask; nulls never match.

    pandas 3's arrow-backed ``str.isin`` converts the value set element by element in Python (seconds for
    600k ids), so large string sets go through pyarrow's hash kernel instead.
    """
    if pyarrow is not None and pd.api.types.is_string_dtype(s) and pd.api.types.is_string_dtype(values):
        found = pc.is_in(
            pyarrow.array(s, from_pandas=True), value_set=pyarrow.array(values.dropna(), from_pandas=True)
        )
        return pc.fill_null(found, False).to_numpy(zero_copy_only=False)
    return (s.notna() & s.isin(values.dropna())).to_numpy()


def convert_column(s: pd.Series, kind: str) -> tuple[pd.Series, pd.Series | None]:
    """The column in its validation dtype and a mask of cells that could not be read (None when all could).

    Kinds: ``float`` → float64, ``int`` → Int64, ``bool`` → boolean (True/False, 1/0), ``str`` → str. Cells
    that cannot be read become missing in the converted column and True in the mask.
    """
    if kind == "float":
        return _to_float(s)
    if kind == "int":
        num, bad = _to_float(s)
        fractional = num.notna() & (num != np.floor(num))
        if fractional.any():
            num = num.mask(fractional)
            bad = fractional if bad is None else bad | fractional
        return num.astype("Int64"), bad
    if kind == "bool":
        if is_bool_dtype(s):
            return s.astype("boolean"), None
        if is_numeric_dtype(s):
            true, false = s.eq(1), s.eq(0)
        else:
            true, false = s.isin([*_TRUE, True]), s.isin([*_FALSE, False])
        valid = true | false
        out = true.astype("boolean").where(valid, pd.NA)
        bad = s.notna() & ~valid
        return out, (bad if bad.any() else None)
    return (s if s.dtype == "str" else s.astype("str")), None


def _convert_table(df: pd.DataFrame, key: str) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Convert every column to its validation dtype; raises when a column holds no readable value at all."""
    schema, file = SCHEMAS[key], FILES[key]
    out: dict[str, pd.Series] = {}
    bad_cells: dict[str, pd.Series] = {}
    for column in COLUMNS[key]:
        kind = _kind(schema, column)
        converted, bad = convert_column(df[column], kind)
        out[column] = converted
        if bad is not None and bad.any():
            n_bad, n_values = int(bad.sum()), int(df[column].notna().sum())
            if n_bad == n_values:
                example = df[column][bad].iloc[0]
                raise DataValidationError(
                    f"{file}: column '{column}' holds no readable value: expected {_KIND_WORDS[kind]}, all "
                    f"{n_values} values fail (first: {example!r})",
                    file=file,
                    column=column,
                )
            bad_cells[column] = bad
    return pd.DataFrame(out, index=df.index), bad_cells


def _final_dtypes(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Non-nullable int/bool columns without missing values become numpy int64/bool; the rest stay as is."""
    schema = SCHEMAS[key]
    casts = {}
    for column in COLUMNS[key]:
        kind = _kind(schema, column)
        if kind in ("int", "bool") and not schema.columns[column].nullable and not df[column].isna().any():
            casts[column] = "int64" if kind == "int" else "bool"
    return df.astype(casts) if casts else df


# --- reading ------------------------------------------------------------------------------------------------


def _scan_for_bad_line(path: Path, n_fields: int) -> tuple[int | None, str]:
    """The first line whose row does not have ``n_fields`` fields (or breaks CSV quoting), with a reason."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            for row in reader:
                if row and len(row) != n_fields:
                    return reader.line_num, f"expected {n_fields} fields, found {len(row)}"
        except csv.Error as exc:
            return reader.line_num, str(exc)
    return None, ""


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def read_table(path: str | Path, key: str) -> pd.DataFrame:
    """Read one of the three files (``key``: loan, payment or clarity) so that the real file passes unchanged.

    Only blank cells are missing (payment's literal ``None`` stays a category); numbers become float64 (ints
    that never miss: int64), True/False columns bool (``boolean`` where blanks may occur), timestamps stay
    strings. A column with some unreadable cells is kept as text so :func:`validate_tables` can quarantine
    those rows. Columns come in the canonical order; extra columns are dropped. The index is the data row
    number (line ``index + 2``).
    """
    path, file = Path(path), FILES[key]
    if not path.is_file():
        raise DataValidationError(f"{file}: file not found at {path}", file=file)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{file}: the file is empty ({path})", file=file)
    header = _header(path)
    if not any(h.strip() for h in header):
        raise DataValidationError(f"{file}: line 1 holds no header ({path})", file=file, line=1)
    missing = [c for c in COLUMNS[key] if c not in header]
    if missing:
        raise DataValidationError(
            f"{file}: missing column {missing[0]!r}"
            + (f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""),
            file=file,
            column=missing[0],
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], engine=CSV_ENGINE)
    except (ValueError, UnicodeDecodeError) as exc:  # ParserError and ArrowInvalid are ValueErrors
        line, reason = _scan_for_bad_line(path, len(header))
        where = f" line {line}" if line else ""
        detail = reason or str(exc).splitlines()[0][:300]
        raise DataValidationError(
            f"{file}:{where} cannot be parsed: {detail} (truncated or malformed file {path})",
            file=file,
            line=line,
        ) from None
    if CSV_ENGINE == "c":  # pragma: no cover - the C engine pads short rows instead of failing
        line, reason = _scan_for_bad_line(path, len(header))
        if line:
            raise DataValidationError(
                f"{file}: line {line} cannot be parsed: {reason} ({path})", file=file, line=line
            )
    if raw.empty:
        raise DataValidationError(f"{file}: the file has a header but no data rows ({path})", file=file)
    raw = raw[list(COLUMNS[key])]
    converted, bad_cells = _convert_table(raw, key)
    table = _final_dtypes(converted, key)
    for column in bad_cells:  # keep the text so the validator sees (and quarantines) the bad cells
        table[column] = raw[column]
    return table


def read_tables(data_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The three files of ``data_dir`` as DataFrames keyed ``loan``, ``payment``, ``clarity`` (see :func:`read_table`)."""
    data_dir = Path(data_dir)
    return {key: read_table(data_dir / file, key) for key, file in FILES.items()}


# --- validating ---------------------------------------------------------------------------------------------


@dataclass
class ValidationResult:
    """Clean tables, a per-file report (rows of scalars, ready for a table artifact) and quarantine files."""

    tables: dict[str, pd.DataFrame]
    report: list[dict[str, Any]]
    quarantine_files: dict[str, Path]
    rule_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def quarantined_rows(self) -> int:
        """Quarantined rows over all files."""
        return sum(int(r["quarantined_rows"]) for r in self.report)

    def to_json(self) -> dict[str, Any]:
        """The report, per-rule counts and quarantine paths as plain JSON data."""
        return {
            "report": self.report,
            "rule_counts": self.rule_counts,
            "quarantine_files": {k: str(v) for k, v in self.quarantine_files.items()},
        }


def _check_table(df: pd.DataFrame, key: str) -> None:
    file = FILES[key]
    missing = [c for c in COLUMNS[key] if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{file}: missing column {missing[0]!r} (missing: {missing})", file=file, column=missing[0]
        )
    if df.empty:
        raise DataValidationError(f"{file}: the table is empty", file=file)


def _schema_failures(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Row failures (index, rule) from the pandera schema; table-level failures raise."""
    file = FILES[key]
    try:
        SCHEMAS[key].validate(df, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return pd.DataFrame({"index": [], "rule": []})
    table_level = cases[cases["index"].isna()]
    if not table_level.empty:
        first = table_level.iloc[0]
        raise DataValidationError(
            f"{file}: column {first['column']!r} fails {first['check']!r} (value: {first['failure_case']!r})",
            file=file,
            column=None if pd.isna(first["column"]) else str(first["column"]),
        )
    rules = cases["check"].astype(str)
    nulls = rules.eq("not_nullable")
    rules = rules.where(~nulls, cases["column"].astype(str) + ": missing value")
    return pd.DataFrame({"index": cases["index"].to_numpy(), "rule": rules.to_numpy()})


def _failures_for(df: pd.DataFrame, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The converted table and its row failures (unreadable cells, then schema rules)."""
    converted, bad_cells = _convert_table(df[list(COLUMNS[key])], key)
    schema_failures = _schema_failures(converted, key)
    parts = []
    for col, mask in bad_cells.items():
        index = df.index[mask.to_numpy()]
        parts.append(
            pd.DataFrame({"index": index, "rule": f"{col}: not {_KIND_WORDS[_kind(SCHEMAS[key], col)]}"})
        )
        # an unreadable cell became missing: do not report it a second time as a missing value
        repeated = schema_failures["rule"].eq(f"{col}: missing value") & schema_failures["index"].isin(index)
        schema_failures = schema_failures[~repeated]
    parts.append(schema_failures)
    failures = pd.concat([p for p in parts if not p.empty] or [schema_failures], ignore_index=True)
    if pd.api.types.is_integer_dtype(df.index):
        failures["index"] = failures["index"].astype("int64")
    return converted, failures


def _write_quarantine(raw: pd.DataFrame, key: str, failures: pd.DataFrame, quarantine_dir: Path) -> Path:
    """``<stem>.quarantine.csv``: source line, the original row and its broken rules ("; "-joined)."""
    path = quarantine_dir / f"{Path(FILES[key]).stem}.quarantine.csv"
    rules = failures.groupby("index", sort=True)["rule"].agg(lambda r: "; ".join(dict.fromkeys(r)))
    rows = raw.loc[rules.index, list(COLUMNS[key])]
    index = rows.index
    line = index.to_numpy() + 2 if pd.api.types.is_integer_dtype(index) else index.astype(str)
    out = rows.copy()
    out.insert(0, "source_line", line)
    out["broken_rules"] = rules.to_numpy()
    tmp = path.with_suffix(".csv.tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def validate_tables(
    tables: Mapping[str, pd.DataFrame], *, max_quarantine_share: float, quarantine_dir: str | Path
) -> ValidationResult:
    """Check the tables (any of loan, payment, clarity); quarantine rows breaking row rules.

    Returns the clean tables (original index kept), the report and the quarantine files (one per file, written
    even when empty so the folder always reflects the last run). Raises :class:`DataValidationError` on a table
    rule or when a file's quarantined share exceeds ``max_quarantine_share``.
    """
    unknown = set(tables) - set(FILES)
    if unknown:
        raise DataValidationError(f"unknown tables {sorted(unknown)}; expected some of {list(FILES)}")
    quarantine_dir = Path(quarantine_dir)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in FILES if k in tables]
    converted: dict[str, pd.DataFrame] = {}
    failures: dict[str, pd.DataFrame] = {}
    for key in keys:
        _check_table(tables[key], key)
        converted[key], failures[key] = _failures_for(tables[key], key)

    if "loan" in converted and "payment" in converted:  # key rule: payment.loanId ⊆ loan.loanId
        loan_ids = converted["loan"]["loanId"]
        quarantined_ids = loan_ids[loan_ids.index.isin(failures["loan"]["index"])]
        clean_ids = loan_ids.drop(index=quarantined_ids.index)
        pay_ids = converted["payment"]["loanId"]
        known = pay_ids.isna().to_numpy() | _isin_fast(pay_ids, clean_ids)
        parent_bad = ~known & _isin_fast(pay_ids, quarantined_ids)
        orphan = ~known & ~parent_bad
        extra = [
            pd.DataFrame({"index": pay_ids.index[orphan], "rule": "loanId: no such loan in loan.csv"}),
            pd.DataFrame({"index": pay_ids.index[parent_bad], "rule": "loanId: its loan row is quarantined"}),
        ]
        failures["payment"] = pd.concat(
            [failures["payment"], *[e for e in extra if not e.empty]], ignore_index=True
        )

    clean: dict[str, pd.DataFrame] = {}
    report: list[dict[str, Any]] = []
    rule_counts: dict[str, dict[str, int]] = {}
    paths: dict[str, Path] = {}
    over: list[tuple[str, str]] = []  # (file, message)
    for key in keys:
        fails = failures[key].drop_duplicates()
        bad_index = pd.Index(fails["index"].unique())
        paths[key] = _write_quarantine(tables[key], key, fails, quarantine_dir)
        kept = converted[key].drop(index=bad_index) if len(bad_index) else converted[key]
        clean[key] = _final_dtypes(kept, key)
        counts = fails.groupby("rule")["index"].nunique().sort_values(ascending=False)
        rule_counts[key] = {str(k): int(v) for k, v in counts.items()}
        rows, n_bad = len(tables[key]), len(bad_index)
        share = n_bad / rows
        top = "; ".join(f"{rule} ({n})" for rule, n in list(rule_counts[key].items())[:5])
        report.append(
            {
                "file": FILES[key],
                "rows": rows,
                "clean_rows": rows - n_bad,
                "quarantined_rows": n_bad,
                "quarantined_share": round(share, 6),
                "broken_rules": top,
                "quarantine_file": str(paths[key]),
            }
        )
        if share > max_quarantine_share:
            over.append(
                (
                    FILES[key],
                    f"{FILES[key]}: {n_bad} of {rows} rows ({share:.2%}) broke row rules, over the limit of "
                    f"{max_quarantine_share:.2%}; top broken rules: {top}; quarantined rows are in {paths[key]}",
                )
            )
        logger.info("%s: %d of %d rows quarantined (%s)", FILES[key], n_bad, rows, top or "no broken rule")
    result = ValidationResult(clean, report, paths, rule_counts)
    if over:
        raise DataValidationError("\n".join(msg for _, msg in over), file=over[0][0], result=result)
    return result


# --- the Prefect task ---------------------------------------------------------------------------------------


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _publish(result: ValidationResult, settings: Settings, mlflow_run_id: str | None) -> None:
    """Table artifact inside a Prefect run; report JSON and quarantine files to the MLflow run when given."""
    if _in_prefect_run():
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            key="validation-report",
            table=result.report,
            description=f"Data validation: {result.quarantined_rows} row(s) quarantined",
        )
    if mlflow_run_id:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        client.log_dict(mlflow_run_id, result.to_json(), "validation/report.json")
        for path in result.quarantine_files.values():
            client.log_artifact(mlflow_run_id, str(path), artifact_path="validation")


def validate(data_dir: str | Path, settings: Settings, mlflow_run_id: str | None = None) -> ValidationResult:
    """Read and validate the three files of ``data_dir``; publish the report (artifact, MLflow run)."""
    log = run_logger()
    try:
        tables = read_tables(data_dir)
        log.info("read %s", ", ".join(f"{FILES[k]}: {len(v)} rows" for k, v in tables.items()))
        result = validate_tables(
            tables, max_quarantine_share=settings.quarantine_max_share, quarantine_dir=settings.quarantine_dir
        )
    except DataValidationError as exc:
        log.error("validation failed: %s", exc)
        if exc.result is not None:  # too many rows quarantined: still publish what was found
            _publish(exc.result, settings, mlflow_run_id)
        raise
    for row in result.report:
        log.info(
            "%s: %d rows, %d quarantined (%.3f%%)%s",
            row["file"],
            row["rows"],
            row["quarantined_rows"],
            100 * row["quarantined_share"],
            f"; {row['broken_rules']}" if row["broken_rules"] else "",
        )
    _publish(result, settings, mlflow_run_id)
    return result


validate_task = task(name="validate", retries=0, cache_policy=NO_CACHE)(validate)
