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
    output_schema,
    output_under_root,
    read_reports,
)
from tasks.registry import versions
from tasks.settings import Settings

ReasonFn = Callable[
    [Bundle, dict[str, Any], np.ndarray, Callable[[str], Sequence[Any]]], Sequence[str | None]
]


def service_reasons(mode: str = DEFAULT_MODE, count: int = DEFAULT_REASON_COUNT) -> ReasonFn:
    """The service's reasons (:func:`serving.reasons.explain_selected`) for the rows ``mode`` selects, as JSON
    text per row (None for a row not explained)."""

    def reasons(
        bundle: Bundle, columns: dict[str, Any], probabilities: np.ndarray, raw: Any
    ) -> list[str | None]:
        found = explain_selected(
            bundle, columns, probabilities.tolist(), bundle.meta.threshold, mode, count, raw
        )
        if found is None:
            return [None] * len(probabilities)
        return [None if r is None else orjson.dumps(r).decode() for r in found]

    return reasons


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


def _withheld(field_name: str, message: str) -> str:
    return "<value withheld: identifier>" if field_name in IDENTIFIER_FIELDS else message


def predict_chunk(bundle: Bundle, table: pa.Table) -> _Predicted:
    """One chunk through the service's columnar path: its model columns, probabilities and fields as sent
    (``column(field)``, each read once); or, when rows are refused, each with its error (and nothing scored)."""
    column = functools.cache(lambda name: table.column(name).to_pylist())
    found: dict[int, FeatureError] = {}
    columns = columns_from(column, table.num_rows, found)
    if found:
        return _Predicted(table, bad=sorted(found.items()))
    return _Predicted(table, columns, np.asarray(bundle.predict_input(columns)), column)


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


@contextlib.contextmanager
def _fewer_collections(young: int = 100_000) -> Iterator[None]:
    """Collect the youngest generation every ``young`` allocations while scoring: a chunk makes ~1.5 million
    short-lived acyclic objects."""
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
        read = time.perf_counter() - started
        started = time.perf_counter()
        done = predict_chunk(bundle, table)
        done.read_seconds, done.predict_seconds = read, time.perf_counter() - started
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
    file_kind(target)
    first_line = 2 if file_kind(source) == "csv" else 1  # a CSV's line numbers count the header
    where = "line" if first_line == 2 else "row"
    version, threshold = bundle.version, bundle.meta.threshold
    rejected = str(rejects) if rejects else None
    result = ScoreResult(str(source), str(target), version, rejects=rejected, reasons=reasons is not None)
    timings = dict.fromkeys(("read", "features_and_predict", "reasons", "write"), 0.0)
    started = time.perf_counter()
    reports = read_reports(Path(clarity)) if clarity else None
    schema = output_schema(reasons is not None)
    out, bad_out = Writer(target), (Writer(Path(rejects)) if rejects else None)
    with _fewer_collections():
        try:
            offset = 0
            for chunk in _predicted_ahead(bundle, joined_chunks(source, reports, chunk_rows)):
                timings["read"] += chunk.read_seconds
                timings["features_and_predict"] += chunk.predict_seconds
                table, n, bad = chunk.table, chunk.table.num_rows, chunk.bad
                lines = [offset + first_line + i for i, _ in bad]
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
                    ids = table.column(ID_FIELD).to_pylist()
                    rows = {
                        "line": lines,
                        "loanId": [None if ids[i] is None else str(ids[i]) for i, _ in bad],
                        "field": [e.field for _, e in bad],
                        "reason": [_withheld(e.field, e.message) for _, e in bad],
                    }
                    bad_out.write(pa.table(rows, schema=REJECTS_SCHEMA))
                    result.rows_rejected += len(bad)
                    keep = np.ones(n, dtype=bool)
                    keep[[i for i, _ in bad]] = False
                    table = table.filter(pa.array(keep))
                    chunk = predict_chunk(bundle, table)
                probabilities = chunk.probabilities
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
                out.write(pa.table(columns, schema=schema))
                timings["write"] += time.perf_counter() - t
                result.rows_in += n
                result.rows_scored += table.num_rows
                result.flagged += int(labels.sum())
                result.chunks += 1
                offset += n
            for writer, written in ((out, schema), (bad_out, REJECTS_SCHEMA)):
                if writer is not None:
                    writer.close(written)
        except BaseException:
            for writer in (out, bad_out):
                if writer is not None:
                    writer.abort()
            raise
    result.seconds = time.perf_counter() - started
    result.timings = timings
    run_logger().info(
        "scored %d of %d rows of %s with v%s in %.1f s (%.0f rows/s); %d flagged, %d rejected",
        result.rows_scored, result.rows_in, source.name, version, result.seconds, result.rows_per_second,
        result.flagged, result.rows_rejected,
    )  # fmt: skip
    return result


@stage("fetch-model")
def fetch_model_task(
    settings: Settings, model_version: str | None, alias: str | None, bundle_dir: Path
) -> Path:
    """Stage: the bundle of ``model_version`` (or of the version ``alias`` points to) from the registry."""
    version = versions.resolve_version(settings, model_version, alias or settings.monitoring.score_alias)
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
    """Stage: score the input file into the output file, under ``settings.score_root``, with the service's
    reasons when the bundle has a reason-code table and ``reasons`` (default: the setting) is not ``none``."""
    output_path = str(output_under_root(settings, output_path))
    rejects = str(output_under_root(settings, rejects, "rejects")) if rejects else None
    bundle = load_bundle(bundle_dir, thread_count=settings.tuning.thread_count)
    mode = reasons or settings.monitoring.score_reasons
    explain = bundle.explainer is not None and mode != "none"
    result = score_file(
        bundle,
        input_path,
        output_path,
        clarity=clarity,
        rejects=rejects,
        chunk_rows=settings.monitoring.score_chunk_rows,
        reasons=service_reasons(mode) if explain else None,
    )
    return result.summary()
