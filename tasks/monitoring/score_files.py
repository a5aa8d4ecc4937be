"""Batch scoring's files: the input read a chunk at a time (CSV cells as text, Parquet as stored, as the service
would receive them) and joined with the clarity reports; the outputs written to a temporary name and renamed,
only under the setting ``score_output_root``."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from serving.contract import CLARITY_COLUMNS, LOAN_COLUMNS
from serving.features import SOURCE_FIELDS
from tasks.errors import BadInputError
from tasks.settings import MonitoringSettings

ID_FIELD = "loanId"
JOIN_KEY = "clarityFraudId"
REPORT_KEY = "underwritingid"
# What the features read, split by the file that holds it; the loan id is carried for the output.
LOAN_FIELDS: tuple[str, ...] = tuple(c for c in LOAN_COLUMNS if c in SOURCE_FIELDS or c == ID_FIELD)
REPORT_FIELDS: tuple[str, ...] = tuple(c for c in CLARITY_COLUMNS if c in SOURCE_FIELDS)
INPUT_FIELDS: tuple[str, ...] = LOAN_FIELDS + REPORT_FIELDS
DEFAULT_CHUNK_ROWS: int = MonitoringSettings.model_fields["score_chunk_rows"].default
OUTPUT_COLUMNS: tuple[str, ...] = ("loanId", "probability", "label", "model_version")
REJECT_COLUMNS: tuple[str, ...] = ("line", "loanId", "field", "reason")
_CSV_BYTES_PER_ROW = 180  # loan.csv averages ~172 bytes a row: a CSV block of chunk_rows * this


class ScoreError(BadInputError, ValueError):
    """The input cannot be scored: names the file and, for a bad value, the line or row and the field."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.file, self.line, self.field = file, line, field


_KINDS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in _KINDS:
        return _KINDS[suffix]
    raise ScoreError(
        f"{path.name}: expected a .csv or .parquet file, got {suffix or 'no extension'!r}", file=path.name
    )


def _columns_of(path: Path) -> list[str]:
    if not path.is_file():
        raise ScoreError(f"{path.name}: file not found at {path}", file=path.name)
    if file_kind(path) == "parquet":
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScoreError(f"{path.name}: not a readable Parquet file ({exc})", file=path.name) from None
    if path.stat().st_size == 0:
        raise ScoreError(f"{path.name}: the file is empty", file=path.name)
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def _require(path: Path, wanted: Sequence[str], what: str) -> None:
    present = _columns_of(path)
    if missing := [c for c in wanted if c not in present]:
        more = f" (and {len(missing) - 1} more: {missing[1:4]}{'…' if len(missing) > 4 else ''})"
        more = more if len(missing) > 1 else ""
        raise ScoreError(f"{path.name}: missing column {missing[0]!r}{more}; {what}", file=path.name)


def read_chunks(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """``columns`` of the file, about ``chunk_rows`` rows at a time; CSV cells as text, Parquet as stored."""
    if file_kind(path) == "parquet":
        batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=list(columns))
        yield from (pa.Table.from_batches([batch]) for batch in batches)
        return
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=max(1 << 16, chunk_rows * _CSV_BYTES_PER_ROW)),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            include_columns=list(columns),
            strings_can_be_null=True,
        ),
    )
    try:
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):  # a block holds about chunk_rows rows
                yield pa.Table.from_batches([batch.slice(start, chunk_rows)])
    except pa.ArrowInvalid as exc:  # a row with too many or too few fields
        raise ScoreError(
            f"{path.name}: cannot be parsed: {str(exc).splitlines()[0][:300]}", file=path.name
        ) from None


def read_reports(path: Path) -> pa.Table:
    """The clarity file's report fields and ``underwritingid``, whole, as text."""
    _require(path, (*REPORT_FIELDS, REPORT_KEY), "a clarity file needs every report field")
    return pa.concat_tables(read_chunks(path, (*REPORT_FIELDS, REPORT_KEY), DEFAULT_CHUNK_ROWS))


def join_reports(loans: pa.Table, reports: pa.Table) -> pa.Table:
    """Training's clarity join (left join, the first report of an id, loan order kept) by Arrow kernels."""
    keys = reports.column(REPORT_KEY)
    loan_keys = loans.column(JOIN_KEY)
    if loan_keys.type != keys.type:  # a typed Parquet key against text reports
        loan_keys = loan_keys.cast(keys.type)
    at = pc.index_in(loan_keys, value_set=keys)  # the first match; null where no report
    matched = reports.select(list(REPORT_FIELDS)).take(at)
    return pa.Table.from_arrays(
        [*loans.columns, *matched.columns], names=[*loans.column_names, *REPORT_FIELDS]
    ).select(list(INPUT_FIELDS))


def joined_chunks(path: Path, reports: pa.Table | None, chunk_rows: int) -> Iterator[pa.Table]:
    """The input's chunks with every field the features read: as read, or joined to the clarity reports."""
    if reports is None:
        _require(path, INPUT_FIELDS, "give the clarity file with --clarity, or a file already joined")
        yield from read_chunks(path, INPUT_FIELDS, chunk_rows)
    else:
        _require(path, LOAN_FIELDS, "a loan file needs every decision-time field and loanId")
        yield from (join_reports(chunk, reports) for chunk in read_chunks(path, LOAN_FIELDS, chunk_rows))


class ScoreOutputError(ScoreError):
    """An output (scores or rejects) that would land outside the setting ``score_output_root``."""


def output_under_root(root: Path, path: str | Path, what: str = "output") -> Path:
    """Where the output ``path`` is written: a relative path under ``root`` (:attr:`Settings.score_root`), an
    absolute one only when it resolves (after ``..`` and symlinks) inside it; else :class:`ScoreOutputError`."""
    text = str(path)
    how = (
        "give a name relative to it (written under it) or a path inside it, or point the setting "
        "score_output_root (LOANRISK_SCORE_OUTPUT_ROOT) at the folder outputs should go to"
    )
    if "://" in text:
        raise ScoreOutputError(
            f"{what} {text!r}: object-store URLs are not supported for outputs; outputs are written under "
            f"{root} (setting score_output_root); {how}",
            file=text,
        )
    resolved = (root / Path(text).expanduser()).resolve()  # an absolute path replaces the root
    if root not in resolved.parents:
        raise ScoreOutputError(
            f"{what} {text!r} resolves to {resolved}, outside {root} (setting score_output_root, "
            f"default <state_dir>/scores): batch scoring writes only under it; {how}",
            file=text,
        )
    return resolved


def output_paths(root: Path, output: str | Path, rejects: str | Path | None) -> tuple[Path, Path | None]:
    """The output and rejects paths under ``root`` (:func:`output_under_root`), checked before anything is read."""
    return output_under_root(root, output), (output_under_root(root, rejects, "rejects") if rejects else None)


class Writer:
    """The output (and rejects) file, CSV or Parquet by extension, written chunk by chunk to a temporary name."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema, self.kind = path, schema, file_kind(path)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "parquet":
                self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
            else:
                self._writer = pacsv.CSVWriter(self.tmp, self.schema)
        self._writer.write_table(table)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        """Renamed into place when the run succeeded (just the header if nothing was written), else removed."""
        if failed is None and self._writer is None:
            self.write(self.schema.empty_table())
        if self._writer is not None:
            self._writer.close()
        if failed is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def output_schema(with_reasons: bool) -> pa.Schema:
    fields = dict(zip(OUTPUT_COLUMNS, [pa.string(), pa.float64(), pa.int8(), pa.string()], strict=True))
    return pa.schema(fields | ({"reasons": pa.string()} if with_reasons else {}))


REJECTS_SCHEMA = pa.schema({c: pa.int64() if c == "line" else pa.string() for c in REJECT_COLUMNS})
