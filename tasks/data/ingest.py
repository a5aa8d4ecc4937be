"""Ingest: bring the three loan CSV files in from a source (:mod:`tasks.data.sources`) and record what came in
on the MLflow run. :func:`ingest` works without Prefect; :data:`ingest_task` is the stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.common import run_logger, stage
from tasks.data.hub import LoggerLike, Retry
from tasks.data.sources import IngestResult, expand_source, from_hub, from_local, from_sample, parse_source
from tasks.registry import tracking
from tasks.settings import DataSettings, Settings

log = logging.getLogger(__name__)


def ingest(
    source: str | None,
    data: DataSettings,
    data_dir: Path,
    *,
    backoff_seconds: float | None = None,
    logger: LoggerLike | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> IngestResult:
    """Make the three files of ``source`` (default ``data.source``) available under ``data_dir``, described;
    ``backoff_seconds`` (default ``data.hf_backoff_seconds``) is the first wait between Hub attempts."""
    logger = logger or log
    src = parse_source(expand_source(source, data))
    if src.kind == "sample":
        return from_sample(data, data_dir, logger)
    if src.kind == "local":
        return from_local(src)
    backoff = data.hf_backoff_seconds if backoff_seconds is None else backoff_seconds
    return from_hub(src, data, data_dir, retry=Retry(data.hf_max_attempts, backoff, logger, sleep))


def record_ingest(result: IngestResult, run_id: str, settings: Settings) -> None:
    """Record source, kind, content sha256, revision, repo and each file's size and sha256 on a run (the
    same but per-file ones and kind/repo also as tags); recording again (a retry) is accepted."""
    tags = {"data.source": result.source, "data.content_sha256": result.content_sha256}
    tags |= {"data.revision": result.revision} if result.revision else {}
    params = tags | {"data.kind": result.kind} | ({"data.repo_id": result.repo_id} if result.repo_id else {})
    for name, entry in result.files.items():
        stem = Path(name).stem
        params |= {f"data.{stem}.size": str(entry["size"]), f"data.{stem}.sha256": entry["sha256"]}
    tracking.log_params(settings, run_id, params)
    tracking.set_tags(settings, run_id, tags)


@stage("ingest")
def ingest_task(settings: Settings, run_id: str | None = None, source: str | None = None) -> IngestResult:
    """Stage: :func:`ingest` of ``source`` (default: the settings'), logged, recorded on ``run_id`` when given."""
    logger = run_logger()
    result = ingest(source, settings.data, settings.data_dir, logger=logger)
    for name, entry in result.files.items():
        logger.info("%s: %d bytes, sha256 %s", name, entry["size"], entry["sha256"])
    how = f"{result.kind}, revision {result.revision or '-'}, {'cached' if result.cached else 'fresh'}"
    logger.info(f"Ingested {result.source} ({how}) into {result.data_dir}")
    if run_id:
        record_ingest(result, run_id, settings)
        logger.info("Recorded the data checksums on MLflow run %s", run_id)
    return result


def data_fingerprint(result: IngestResult, labelled_loans: int | None = None) -> dict[str, Any]:
    """What identifies the training data in a bundle: source, revision, the files' content sha256, each file's
    sha256 and size, and how many labelled loans it gave."""
    return {
        "source": result.source,
        "revision": result.revision,
        "content_sha256": result.content_sha256,
        "files": {name: {"sha256": f["sha256"], "size": f["size"]} for name, f in result.files.items()},
        "labelled_loans": labelled_loans,
    }
