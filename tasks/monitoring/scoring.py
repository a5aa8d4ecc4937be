"""Batch scoring: a file of loan applications in, a file of scores out, a chunk at a time.

    score_file(bundle, "loan.csv", "scores.parquet", clarity="clarity_underwriting_variables.csv")

The input holds applications with the source files' field names: ``loan.csv`` already joined with the clarity
report, or ``loan.csv`` plus the clarity file given apart (joined here on ``clarityFraudId = underwritingid`` by
training's own :func:`tasks.model.features.join_clarity`). CSV or Parquet, by extension. It is read ``chunk_rows``
rows at a time (pyarrow's streaming CSV reader, Parquet row batches), every field as the text the file holds (a
CSV) or its stored type (Parquet), so a chunk reaches the model exactly as the service's ``/predict/batch``
would receive those rows as JSON: through :func:`serving.features.columns_from` (the service's columnar batch
builder) and :meth:`serving.bundle.Bundle.predict_input`. Memory stays bounded by the chunk, not the file; the
clarity file (one report per row, ~50k rows) is held whole.

The output (CSV or Parquet, by extension) has one row per application, in input order: ``loanId``,
``probability`` (of the risky class), ``label`` (``probability >= threshold``), ``model_version``, and
``reasons`` when the bundle has a reason-code table (the service's own reasons, :func:`serving.reasons.explain`,
as JSON text: for the rows labelled risky by default, ``--reasons all`` for every row, ``none`` for no column;
null for a row not explained). It never holds ``anon_ssn`` or any
other field of the input: the loan id is the one identifier written, because the lender needs it to act on a
score. It is written to a temporary file beside the target and renamed at the end, so a failed run leaves no
half file.

A value the features cannot read (``"apr": "abc"``) stops the run with :class:`ScoreError` naming the file, the
line (CSV; the header is line 1) or row (Parquet, 1-based), and the field, unless a rejects file is given: then
each bad row is listed there (line, loanId, field, reason; never the value of an identifier) and the rest are
scored.

Over ~400 lines on purpose: reading (chunked CSV/Parquet, the Arrow join), scoring and the bad-row handling share
the chunk's table and the line numbering; split, a bad row's line would be computed in two modules.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from serving.bundle import Bundle, load_bundle
from serving.contract import CLARITY_COLUMNS, IDENTIFIER_FIELDS, LOAN_COLUMNS
from serving.features import SOURCE_FIELDS, build_row, columns_from
from serving.readers import FeatureError
from serving.reasons import DEFAULT_MODE, DEFAULT_REASON_COUNT, explain_selected
from tasks.common import PermanentError, run_logger, stage
from tasks.registry import versions
from tasks.settings import Settings

ID_FIELD = "loanId"
JOIN_KEY = "clarityFraudId"
REPORT_KEY = "underwritingid"
# What the features read, split by the file that holds it; the loan id is carried for the output.
LOAN_FIELDS: tuple[str, ...] = tuple(c for c in LOAN_COLUMNS if c in SOURCE_FIELDS or c == ID_FIELD)
REPORT_FIELDS: tuple[str, ...] = tuple(c for c in CLARITY_COLUMNS if c in SOURCE_FIELDS)
INPUT_FIELDS: tuple[str, ...] = LOAN_FIELDS + REPORT_FIELDS
OUTPUT_COLUMNS: tuple[str, ...] = ("loanId", "probability", "label", "model_version")
REJECT_COLUMNS: tuple[str, ...] = ("line", "loanId", "field", "reason")
DEFAULT_CHUNK_ROWS: int = Settings.model_fields["score_chunk_rows"].default
_CSV_BYTES_PER_ROW = 180  # loan.csv averages ~172 bytes a row: a CSV block of chunk_rows * this

# The reason codes of a scored chunk: (bundle, the chunk's model columns, its probabilities, its fields as sent)
# -> one text (or None) per row.
ReasonFn = Callable[
    [Bundle, dict[str, Any], np.ndarray, Callable[[str], Sequence[Any]]], Sequence[str | None]
]


def service_reasons(mode: str = DEFAULT_MODE, count: int = DEFAULT_REASON_COUNT) -> ReasonFn:
    """The service's reasons (:func:`serving.reasons.explain_selected`: the rows ``mode`` selects, ``count``
    reasons each, the applicant's values as sent), each row's list as JSON text, None for a row not explained."""

    def reasons(
        bundle: Bundle,
        columns: dict[str, Any],
        probabilities: np.ndarray,
        raw: Callable[[str], Sequence[Any]],
    ) -> list[str | None]:
        found = explain_selected(
            bundle, columns, probabilities.tolist(), bundle.meta.threshold, mode, count, raw
        )
        if found is None:
            return [None] * len(probabilities)
        return [None if r is None else orjson.dumps(r).decode() for r in found]

    return reasons


class ScoreError(PermanentError, ValueError):
    """The input cannot be scored: names the file and, for a bad value, the line or row and the field."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.file, self.line, self.field = file, line, field


class ScoreOutputError(ScoreError):
    """An output (scores or rejects) that would land outside the setting ``score_output_root``."""


def output_under_root(settings: Settings, path: str | Path, what: str = "output") -> Path:
    """Where the output ``path`` is written: a relative path under :attr:`Settings.score_root`, an absolute one
    only when it resolves (after ``..`` and symlinks) inside it. Raises :class:`ScoreOutputError` otherwise."""
    root = settings.score_root
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


@dataclass
class ScoreResult:
    """What a run did: counts, time, where the output went."""

    input: str
    output: str
    model_version: str | None
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    flagged: int = 0
    chunks: int = 0
    seconds: float = 0.0
    rejects: str | None = None
    reasons: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "timings"}
        out["rows_per_second"] = round(self.rows_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return out


# --- reading ------------------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ScoreError(
        f"{path.name}: expected a .csv or .parquet file, got {suffix or 'no extension'!r}", file=path.name
    )


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        return next(csv.reader(handle), [])


def _columns_of(path: Path) -> list[str]:
    if not path.is_file():
        raise ScoreError(f"{path.name}: file not found at {path}", file=path.name)
    if _kind(path) == "parquet":
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScoreError(f"{path.name}: not a readable Parquet file ({exc})", file=path.name) from None
    if path.stat().st_size == 0:
        raise ScoreError(f"{path.name}: the file is empty", file=path.name)
    return _csv_header(path)


def _require(path: Path, present: Sequence[str], wanted: Sequence[str], what: str) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        more = (
            f" (and {len(missing) - 1} more: {missing[1:4]}{'…' if len(missing) > 4 else ''})"
            if len(missing) > 1
            else ""
        )
        raise ScoreError(f"{path.name}: missing column {missing[0]!r}{more}; {what}", file=path.name)


def read_chunks(path: Path, columns: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """``columns`` of the file, ``chunk_rows`` rows (about, for a CSV) at a time; CSV cells as text (blank:
    missing), Parquet cells as stored."""
    if _kind(path) == "parquet":
        handle = pq.ParquetFile(path)
        for batch in handle.iter_batches(batch_size=chunk_rows, columns=list(columns)):
            yield pa.Table.from_batches([batch])
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
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:  # a row with too many or too few fields
            raise ScoreError(
                f"{path.name}: cannot be parsed: {str(exc).splitlines()[0][:300]}", file=path.name
            ) from None
        for start in range(
            0, batch.num_rows, chunk_rows
        ):  # a block holds about chunk_rows rows: at most that
            yield pa.Table.from_batches([batch.slice(start, chunk_rows)])


def read_reports(path: Path) -> pa.Table:
    """The clarity file's report fields and ``underwritingid``, whole, as text (one report per id: the first,
    as :func:`tasks.model.features.join_clarity` keeps it)."""
    _require(path, _columns_of(path), (*REPORT_FIELDS, REPORT_KEY), "a clarity file needs every report field")
    return pa.concat_tables(read_chunks(path, (*REPORT_FIELDS, REPORT_KEY), DEFAULT_CHUNK_ROWS))


def join_reports(loans: pa.Table, reports: pa.Table) -> pa.Table:
    """Training's clarity join (:func:`tasks.model.features.join_clarity`: left join on ``clarityFraudId =
    underwritingid``, the first report of an id, one row per loan, loan order kept), done by Arrow kernels: a
    pandas merge per chunk took most of the reading time. ``tests/test_score.py`` holds the two equal."""
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
    present = _columns_of(path)
    if reports is None:
        _require(
            path, present, INPUT_FIELDS, "give the clarity file with --clarity, or a file already joined"
        )
        yield from read_chunks(path, INPUT_FIELDS, chunk_rows)
        return
    _require(path, present, LOAN_FIELDS, "a loan file needs every decision-time field and loanId")
    for chunk in read_chunks(path, LOAN_FIELDS, chunk_rows):
        yield join_reports(chunk, reports)


# --- scoring ------------------------------------------------------------------------------------------------


def _withheld(field_name: str, message: str) -> str:
    return "<value withheld: identifier>" if field_name in IDENTIFIER_FIELDS else message


def _bad_rows(table: pa.Table) -> list[tuple[int, FeatureError]]:
    """Each row of the chunk that the row builder refuses, with its error (the checked way, row by row)."""
    bad = []
    for i, record in enumerate(table.to_pylist()):
        try:
            build_row(record)
        except FeatureError as exc:
            bad.append((i, exc))
    return bad


class _Writer:
    """The output (and rejects) file, CSV or Parquet by extension, written chunk by chunk to a temporary name."""

    def __init__(self, path: Path) -> None:
        self.path, self.kind = path, _kind(path)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer: Any = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.kind == "parquet":
                self._writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
            else:
                self._writer = pacsv.CSVWriter(self.tmp, table.schema)
        self._writer.write_table(table)

    def close(self, schema: pa.Schema) -> None:
        if self._writer is None:  # nothing written: an empty file with the header
            self.write(schema.empty_table())
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


def _output_schema(with_reasons: bool) -> pa.Schema:
    fields = [
        pa.field("loanId", pa.string()),
        pa.field("probability", pa.float64()),
        pa.field("label", pa.int8()),
        pa.field("model_version", pa.string()),
    ]
    return pa.schema(fields + ([pa.field("reasons", pa.string())] if with_reasons else []))


REJECTS_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64()),
        pa.field("loanId", pa.string()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def predict_chunk(
    bundle: Bundle, table: pa.Table
) -> tuple[dict[str, Any], np.ndarray, Callable[[str], list[Any]]]:
    """The model columns and probabilities of one chunk, by the service's columnar path, and its fields as sent
    (``column(field)``, each read once); ValueError, OverflowError or TypeError when a value needs the checked
    way (which names it)."""
    sent: dict[str, list[Any]] = {}

    def column(name: str) -> list[Any]:
        if name not in sent:
            sent[name] = table.column(name).to_pylist()
        return sent[name]

    columns = columns_from(column, table.num_rows)
    return columns, np.asarray(bundle.predict_input(columns)), column


@dataclass
class _Predicted:
    """A chunk read and predicted (by the thread ahead): ``columns`` None when a value needs the checked way."""

    table: pa.Table
    columns: dict[str, Any] | None = None
    probabilities: np.ndarray | None = None
    column: Callable[[str], list[Any]] | None = None
    read_seconds: float = 0.0
    predict_seconds: float = 0.0


@contextlib.contextmanager
def _fewer_collections(young: int = 100_000) -> Iterator[None]:
    """The garbage collector's youngest generation collected every ``young`` allocations instead of 700 while
    scoring: a chunk makes ~1.5 million short-lived, acyclic objects (its fields as Python values, the reasons'
    dicts), and collecting them 700 at a time cost ~9% of the rows/s (``bench/score``)."""
    before = gc.get_threshold()
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _predicted_ahead(bundle: Bundle, chunks: Iterator[pa.Table]) -> Iterator[_Predicted]:
    """Each chunk read and predicted, the next one in a background thread while the caller explains and writes
    this one (two chunks in memory at most). Reading, CatBoost and NumPy release the GIL, so the two cores
    overlap the feature work with the reasons: ~1.3x the rows/s of one thread (``bench/score``)."""

    def step() -> _Predicted | None:
        started = time.perf_counter()
        table = next(chunks, None)
        if table is None:
            return None
        done = _Predicted(table, read_seconds=time.perf_counter() - started)
        started = time.perf_counter()
        try:
            done.columns, done.probabilities, done.column = predict_chunk(bundle, table)
        except (ValueError, OverflowError, TypeError):
            pass  # the caller finds the bad rows, the checked way
        done.predict_seconds = time.perf_counter() - started
        return done

    with ThreadPoolExecutor(1, thread_name_prefix="score-ahead") as ahead:
        future = ahead.submit(step)
        while (done := future.result()) is not None:
            future = ahead.submit(step)
            yield done


def score_file(
    bundle: Bundle,
    input_path: str | Path,
    output_path: str | Path,
    *,
    clarity: str | Path | None = None,
    rejects: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    reasons: ReasonFn | None = None,
) -> ScoreResult:
    """Score every application of ``input_path`` into ``output_path`` (see the module docstring)."""
    source, target = Path(input_path), Path(output_path)
    _kind(target)
    first_line = 2 if _kind(source) == "csv" else 1  # a CSV's line numbers count the header
    where = "line" if first_line == 2 else "row"
    version = bundle.version
    threshold = bundle.meta.threshold
    result = ScoreResult(
        str(source),
        str(target),
        version,
        rejects=str(rejects) if rejects else None,
        reasons=reasons is not None,
    )
    timings = dict.fromkeys(("read", "features_and_predict", "reasons", "write"), 0.0)
    started = time.perf_counter()
    reports = read_reports(Path(clarity)) if clarity else None
    schema = _output_schema(reasons is not None)
    out, bad_out = _Writer(target), (_Writer(Path(rejects)) if rejects else None)
    with _fewer_collections():
        try:
            offset = 0
            for chunk in _predicted_ahead(bundle, joined_chunks(source, reports, chunk_rows)):
                timings["read"] += chunk.read_seconds
                timings["features_and_predict"] += chunk.predict_seconds
                table, n = chunk.table, chunk.table.num_rows
                if chunk.columns is None:
                    bad = _bad_rows(table)
                    if not bad:  # pragma: no cover - columns_from and build_row read values alike
                        predict_chunk(bundle, table)  # raises what the thread ahead caught
                    if bad_out is None:
                        i, exc = bad[0]
                        raise ScoreError(
                            f"{source.name}: {where} {offset + first_line + i}, field {exc.field!r}: "
                            f"{_withheld(exc.field, exc.message)} ({len(bad)} bad row(s) in this chunk; "
                            "--rejects FILE lists them and scores the rest)",
                            file=source.name,
                            line=offset + first_line + i,
                            field=exc.field,
                        ) from None
                    ids = table.column(ID_FIELD).to_pylist()
                    bad_out.write(
                        pa.table(
                            {
                                "line": [offset + first_line + i for i, _ in bad],
                                "loanId": [None if ids[i] is None else str(ids[i]) for i, _ in bad],
                                "field": [e.field for _, e in bad],
                                "reason": [_withheld(e.field, e.message) for _, e in bad],
                            },
                            schema=REJECTS_SCHEMA,
                        )
                    )
                    result.rows_rejected += len(bad)
                    keep = np.ones(n, dtype=bool)
                    keep[[i for i, _ in bad]] = False
                    table = table.filter(pa.array(keep))
                    chunk.columns, chunk.probabilities, chunk.column = predict_chunk(bundle, table)
                probabilities = chunk.probabilities
                assert probabilities is not None and chunk.column is not None
                labels = (probabilities >= threshold).astype(np.int8)
                t = time.perf_counter()
                codes = reasons(bundle, chunk.columns, probabilities, chunk.column) if reasons else None
                timings["reasons"] += time.perf_counter() - t
                t = time.perf_counter()
                ids = table.column(ID_FIELD)
                if not pa.types.is_string(ids.type):
                    ids = ids.cast(pa.string())
                columns: dict[str, Any] = {
                    "loanId": ids,
                    "probability": probabilities,
                    "label": labels,
                    "model_version": pa.array([version] * table.num_rows, pa.string()),
                }
                if codes is not None:
                    columns["reasons"] = pa.array(list(codes), pa.string())
                out.write(pa.table(columns, schema=schema))
                timings["write"] += time.perf_counter() - t
                result.rows_in += n
                result.rows_scored += table.num_rows
                result.flagged += int(labels.sum())
                result.chunks += 1
                offset += n
            out.close(schema)
            if bad_out is not None:
                bad_out.close(REJECTS_SCHEMA)
        except BaseException:
            out.abort()
            if bad_out is not None:
                bad_out.abort()
            raise
    result.seconds = time.perf_counter() - started
    result.timings = timings
    run_logger().info(
        "scored %d of %d rows of %s with v%s in %.1f s (%.0f rows/s); %d flagged, %d rejected",
        result.rows_scored, result.rows_in, source.name, version, result.seconds, result.rows_per_second,
        result.flagged, result.rows_rejected,
    )  # fmt: skip
    return result


# --- stages -------------------------------------------------------------------------------------------------


@stage("fetch-model")
def fetch_model_task(
    settings: Settings, model_version: str | None, alias: str | None, bundle_dir: Path
) -> Path:
    """Stage: the bundle of ``model_version`` (or of the version ``alias`` points to) from the registry."""
    version = versions.resolve_version(settings, model_version, alias or settings.score_alias)
    path = versions.download_bundle(settings, version, bundle_dir)
    run_logger().info("scoring with %s", versions.bundle_uri(settings, version))
    return path


@stage("score")
def score_task(
    settings: Settings,
    bundle_dir: Path,
    input_path: str,
    output_path: str,
    clarity: str | None = None,
    rejects: str | None = None,
    reasons: str | None = None,
) -> dict[str, Any]:
    """Stage: score the input file into the output file (a bad row is permanent: never retried); with the
    service's reasons when the bundle has a reason-code table and ``reasons`` (default: the setting) is not
    ``none``. The output and the rejects file go under ``settings.score_root`` (:func:`output_under_root`),
    checked before anything is read."""
    output_path = str(output_under_root(settings, output_path))
    rejects = str(output_under_root(settings, rejects, "rejects")) if rejects else None
    bundle = load_bundle(bundle_dir, thread_count=settings.thread_count)
    mode = reasons or settings.score_reasons
    explain = bundle.explainer is not None and mode != "none"
    result = score_file(
        bundle,
        input_path,
        output_path,
        clarity=clarity,
        rejects=rejects,
        chunk_rows=settings.score_chunk_rows,
        reasons=service_reasons(mode) if explain else None,
    )
    return result.summary()
