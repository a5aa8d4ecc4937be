"""Read the three source CSV files by the contract's dtypes, the real files' quirks included (only blank cells
are missing; payment's literal ``None`` is a category). A cell that cannot be read leaves its column as
text for :mod:`tasks.data.validate` to quarantine; a broken file or column raises naming file and line or
column."""

from __future__ import annotations

import csv
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.compute as pc
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from tasks.data.contract import COLUMNS, DTYPES, FILES, REQUIRED, WITHHELD
from tasks.errors import BadInputError


class DataValidationError(BadInputError):
    """The data breaks a table rule or too many rows break row rules; names the file and column or line.
    ``result`` is set when too many rows were quarantined: the report and quarantine files."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        line: int | None = None,
        result: Any = None,
    ) -> None:
        super().__init__(message)
        self.file, self.column, self.line, self.result = file, column, line, result


def require_columns(key: str, present: Collection[str]) -> None:
    """Raise naming the file and the first of its contract's columns missing from ``present``."""
    missing = [c for c in COLUMNS[key] if c not in present]
    if missing:
        more = f" (and {len(missing) - 1} more: {missing[1:]})" if len(missing) > 1 else ""
        message = f"{FILES[key]}: missing column {missing[0]!r}{more}"
        raise DataValidationError(message, file=FILES[key], column=missing[0])


def read_kind(key: str, column: str) -> str:
    """'float', 'int', 'bool' or 'str': how a column's text is read (timestamps stay text)."""
    kind = DTYPES[key][column]
    return "str" if kind == "timestamp" else kind


def shown(column: object, value: object) -> str:
    """A value for a message: identifier and personal values are never printed."""
    return "<withheld: identifier>" if column in WITHHELD else repr(value)


_TRUE = ("True", "true", "TRUE", "1", "1.0")
_FALSE = ("False", "false", "FALSE", "0", "0.0")
KIND_WORDS = {"float": "a number", "int": "an integer", "bool": "True or False", "str": "text"}


def _to_float(s: pd.Series) -> tuple[pd.Series, pd.Series | None]:
    if is_numeric_dtype(s) and not is_bool_dtype(s):
        return s.astype("float64"), None
    if pd.api.types.is_string_dtype(s):
        try:  # fast path: every cell parses
            values = pc.cast(pyarrow.array(s, from_pandas=True), pyarrow.float64())
            return pd.Series(values.to_numpy(zero_copy_only=False), index=s.index, name=s.name), None
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, TypeError):
            pass
    num = pd.to_numeric(s, errors="coerce").astype("float64")
    bad = s.notna() & num.isna()
    return num, (bad if bad.any() else None)


def convert_column(s: pd.Series, kind: str) -> tuple[pd.Series, pd.Series | None]:
    """The column as float64, Int64, boolean or str, and a mask of unreadable cells (None when all read)."""
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


def convert_table(df: pd.DataFrame, key: str) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Convert every column to its validation dtype; raises when a column holds no readable value at all."""
    file = FILES[key]
    out: dict[str, pd.Series] = {}
    bad_cells: dict[str, pd.Series] = {}
    for column in COLUMNS[key]:
        kind = read_kind(key, column)
        out[column], bad = convert_column(df[column], kind)
        if bad is not None:
            n_bad, n_values = int(bad.sum()), int(df[column].notna().sum())
            if n_bad == n_values:
                example = df[column][bad].iloc[0]
                raise DataValidationError(
                    f"{file}: column '{column}' holds no readable value: expected {KIND_WORDS[kind]}, all "
                    f"{n_values} values fail (first: {shown(column, example)})",
                    file=file,
                    column=column,
                )
            bad_cells[column] = bad
    return pd.DataFrame(out, index=df.index), bad_cells


def final_dtypes(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Non-nullable int/bool columns without missing values become numpy int64/bool; the rest stay as is."""
    casts = {
        column: {"int": "int64", "bool": "bool"}[kind]
        for column in COLUMNS[key]
        if (kind := read_kind(key, column)) in ("int", "bool")
        and column in REQUIRED[key]
        and not df[column].isna().any()
    }
    return df.astype(casts) if casts else df


def _why_unparseable(path: Path, n_fields: int, exc: BaseException) -> tuple[int | None, str]:
    """The first line whose row does not have ``n_fields`` fields (or breaks CSV quoting) and why; else the
    parser's reason without the row content it may quote (``Expected 19 columns, got 3: <the row>``)."""
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            for row in reader:
                if row and len(row) != n_fields:
                    return reader.line_num, f"expected {n_fields} fields, found {len(row)}"
        except csv.Error as error:
            return reader.line_num, str(error)
    if isinstance(exc, UnicodeDecodeError):
        return None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
    kept = re.match(r"^(.*?\bgot \d+)", (str(exc).splitlines() or [""])[0])
    withheld = f"{type(exc).__name__} (the parser's message quotes row content: withheld)"
    return None, kept.group(1) if kept else withheld


def read_table(path: str | Path, key: str) -> pd.DataFrame:
    """Read file ``key`` (loan, payment or clarity): the contract's columns in its order, extra ones dropped;
    the index is the data row (line ``index + 2``)."""
    path, file = Path(path), FILES[key]
    if not path.is_file():
        raise DataValidationError(f"{file}: file not found at {path}", file=file)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{file}: the file is empty ({path})", file=file)
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    if not any(h.strip() for h in header):
        raise DataValidationError(f"{file}: line 1 holds no header ({path})", file=file, line=1)
    require_columns(key, header)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], engine="pyarrow")
    except (ValueError, UnicodeDecodeError) as exc:  # ParserError and ArrowInvalid are ValueErrors
        line, reason = _why_unparseable(path, len(header), exc)
        where = f" line {line}" if line else ""
        raise DataValidationError(
            f"{file}:{where} cannot be parsed: {reason} (truncated or malformed file {path})",
            file=file,
            line=line,
        ) from None
    if raw.empty:
        raise DataValidationError(f"{file}: the file has a header but no data rows ({path})", file=file)
    raw = raw[list(COLUMNS[key])]
    converted, bad_cells = convert_table(raw, key)
    table = final_dtypes(converted, key)
    for column in bad_cells:  # keep the text so the validator sees (and quarantines) the bad cells
        table[column] = raw[column]
    return table


def read_tables(data_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The three files of ``data_dir`` keyed ``loan``, ``payment``, ``clarity`` (see :func:`read_table`)."""
    data_dir = Path(data_dir)
    return {key: read_table(data_dir / file, key) for key, file in FILES.items()}
