"""Batch scoring: a file of loan applications in (CSV or Parquet, joined with the clarity report or given apart),
a file of scores out, a chunk at a time through the service's own feature code (:func:`serving.features.columns_from`,
:meth:`serving.bundle.Bundle.predict_input`).

The output has ``loanId``, ``probability``, ``label``, ``model_version`` and, with a reason-code table, ``reasons``
(JSON text); never another field of the input. A bad value stops the run with :class:`ScoreError` naming the file,
line or row and field, unless a rejects file is given: then bad rows are listed there and the rest scored.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from serving.bundle import Bundle, load_bundle
from serving.contract import IDENTIFIER_FIELDS
from serving.features import columns_from
from serving.readers import FeatureError
from serving.reasons import DEFAULT_MODE, DEFAULT_REASON_COUNT, explain_selected
from tasks.common import run_logger, stage
from tasks.monitoring.score_files import (
    DEFAULT_CHUNK_ROWS,
    ID_FIELD,
    REJECTS_SCHEMA,
    ScoreError,
    Writer,
    file_kind,
    joined_chunks,
    output_paths,
    output_schema,
    read_reports,
)
from tasks.registry import versions
from tasks.settings import Settings

ReasonFn = Callable[
    [Bundle, dict[str, Any], np.ndarray, Callable[[str], Sequence[Any]]], Sequence[str | None]
]


def service_reasons(mode: str = DEFAULT_MODE, count: int = DEFAULT_REASON_COUNT) -> ReasonFn:
    """The service's reasons for the rows ``mode`` selects, as JSON text per row (None: not explained)."""

    def reasons(bundle: Bundle, columns: dict[str, Any], p: np.ndarray, raw: Any) -> list[str | None]:
        found = explain_selected(bundle, columns, p.tolist(), bundle.meta.threshold, mode, count, raw)
        return [None if r is None else orjson.dumps(r).decode() for r in found or [None] * len(p)]

    return reasons


@dataclass
class ScoreResult:
    """What a run did: counts, time (and where it went), where the output went."""

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
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("read", "features_and_predict", "reasons", "write"), 0.0)
    )

    def summary(self) -> dict[str, Any]:
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        per_second = self.rows_in / self.seconds if self.seconds else 0.0
        rounded = {"seconds": round(self.seconds, 3), "rows_per_second": round(per_second, 1)}
        return {**self.__dict__, **rounded, "timings": timings}


def _withheld(field_name: str, message: str) -> str:
    return "<value withheld: identifier>" if field_name in IDENTIFIER_FIELDS else message


@dataclass
class _Predicted:
    """A chunk read and predicted (by the thread ahead); ``bad`` its refused rows (then nothing is predicted)."""

    table: pa.Table
    columns: dict[str, Any] | None = None
    probabilities: np.ndarray | None = None
    column: Callable[[str], list[Any]] | None = None
    bad: list[tuple[int, FeatureError]] = field(default_factory=list)
    read_seconds: float = 0.0
    predict_seconds: float = 0.0


def predict_chunk(bundle: Bundle, table: pa.Table) -> _Predicted:
    """One chunk through the service's columnar path: its model columns, probabilities and fields as sent
    (``column(field)``, each read once); or, when rows are refused, each with its error (nothing scored)."""
    column = functools.cache(lambda name: table.column(name).to_pylist())
    found: dict[int, FeatureError] = {}
    columns = columns_from(column, table.num_rows, found)
    if found:
        return _Predicted(table, bad=sorted(found.items()))
    return _Predicted(table, columns, np.asarray(bundle.predict_input(columns)), column)


@contextlib.contextmanager
def _fewer_collections(young: int = 100_000) -> Iterator[None]:
    """Collect the young generation every ``young`` allocations: a chunk makes ~1.5 M acyclic objects."""
    before = gc.get_threshold()
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _predicted_ahead(bundle: Bundle, chunks: Iterator[pa.Table]) -> Iterator[_Predicted]:
    """Each chunk read and predicted, the next one in a background thread while the caller explains and writes
    this one (two chunks in memory at most; reading, CatBoost and NumPy release the GIL)."""

    def step() -> _Predicted | None:
        started = time.perf_counter()
        table = next(chunks, None)
        if table is None:
            return None
        read = time.perf_counter()
        done = predict_chunk(bundle, table)
        done.read_seconds, done.predict_seconds = read - started, time.perf_counter() - read
        return done

    with ThreadPoolExecutor(1, thread_name_prefix="score-ahead") as ahead:
        future = ahead.submit(step)
        while (done := future.result()) is not None:
            future = ahead.submit(step)
            yield done


def _without_bad_rows(chunk: _Predicted, lines: list[int], rejects: Writer, bundle: Bundle) -> _Predicted:
    """The chunk's bad rows written to the rejects file, the rest predicted again."""
    bad, table = chunk.bad, chunk.table
    ids = table.column(ID_FIELD).to_pylist()
    rows = {
        "line": lines,
        "loanId": [None if ids[i] is None else str(ids[i]) for i, _ in bad],
        "field": [e.field for _, e in bad],
        "reason": [_withheld(e.field, e.message) for _, e in bad],
    }
    rejects.write(pa.table(rows, schema=REJECTS_SCHEMA))
    keep = np.ones(table.num_rows, dtype=bool)
    keep[[i for i, _ in bad]] = False
    return predict_chunk(bundle, table.filter(pa.array(keep)))


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
    out = Writer(target, output_schema(reasons is not None))  # an output of no known kind: refused first
    first_line, where = (2, "line") if file_kind(source) == "csv" else (1, "row")  # a CSV's header is line 1
    version, threshold = bundle.version, bundle.meta.threshold
    result = ScoreResult(
        str(source), str(target), version, rejects=str(rejects) if rejects else None, reasons=bool(reasons)
    )
    timings, started = result.timings, time.perf_counter()
    reports = read_reports(Path(clarity)) if clarity else None
    bad_writer = Writer(Path(rejects), REJECTS_SCHEMA) if rejects else contextlib.nullcontext()
    with _fewer_collections(), out, bad_writer as bad_out:
        for chunk in _predicted_ahead(bundle, joined_chunks(source, reports, chunk_rows)):
            timings["read"] += chunk.read_seconds
            timings["features_and_predict"] += chunk.predict_seconds
            n, bad = chunk.table.num_rows, chunk.bad
            lines = [result.rows_in + first_line + i for i, _ in bad]
            if bad and bad_out is None:
                exc = bad[0][1]
                raise ScoreError(
                    f"{source.name}: {where} {lines[0]}, field {exc.field!r}: "
                    f"{_withheld(exc.field, exc.message)} ({len(bad)} bad row(s) in this chunk; "
                    "--rejects FILE lists them and scores the rest)",
                    file=source.name,
                    line=lines[0],
                    field=exc.field,
                ) from None
            if bad:
                chunk = _without_bad_rows(chunk, lines, bad_out, bundle)
                result.rows_rejected += len(bad)
            table, probabilities = chunk.table, chunk.probabilities
            assert probabilities is not None and chunk.column is not None
            labels = (probabilities >= threshold).astype(np.int8)
            t = time.perf_counter()
            codes = reasons(bundle, chunk.columns, probabilities, chunk.column) if reasons else None
            timings["reasons"] += time.perf_counter() - t
            t = time.perf_counter()
            columns: dict[str, Any] = {
                "loanId": table.column(ID_FIELD).cast(pa.string()),
                "probability": probabilities,
                "label": labels,
                "model_version": pa.array([version] * table.num_rows, pa.string()),
            }
            if codes is not None:
                columns["reasons"] = pa.array(list(codes), pa.string())
            out.write(pa.table(columns, schema=out.schema))
            timings["write"] += time.perf_counter() - t
            result.rows_in += n
            result.rows_scored += table.num_rows
            result.flagged += int(labels.sum())
            result.chunks += 1
    result.seconds = time.perf_counter() - started
    run_logger().info(
        "scored %(rows_scored)d of %(rows_in)d rows of %(input)s with v%(model_version)s in %(seconds).1f s "
        "(%(rows_per_second).0f rows/s); %(flagged)d flagged, %(rows_rejected)d rejected",
        result.summary(),
    )
    return result


@stage("fetch-model")
def fetch_model_task(
    settings: Settings, model_version: str | None, alias: str | None, bundle_dir: Path
) -> Path:
    """Stage: the bundle of ``model_version`` (or of the version ``alias`` points to) from the registry."""
    version = versions.resolve_version(settings, model_version, alias or settings.monitoring.score_alias)
    run_logger().info("scoring with %s", versions.bundle_uri(settings.registry, version))
    return versions.download_bundle(settings, version, bundle_dir)


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
    """Stage: score the input into the output (under ``score_root``), with the service's reasons if any."""
    output, rejected = output_paths(settings.score_root, output_path, rejects)
    bundle = load_bundle(bundle_dir, thread_count=settings.tuning.thread_count)
    mode = reasons or settings.monitoring.score_reasons
    return score_file(
        bundle,
        input_path,
        output,
        clarity=clarity,
        rejects=rejected,
        chunk_rows=settings.monitoring.score_chunk_rows,
        reasons=service_reasons(mode) if bundle.explainer is not None and mode != "none" else None,
    ).summary()
