"""What the monitor tests share: a registered version packaged the training way (profile included), and
prediction-log records of the documented shape.

Until the service's prediction log (``serving/predlog.py``) lands, the tests write the log themselves, one record
per scored application, exactly as the issue documents it: ``{"time", "request_id", "endpoint", "model_name",
"model_version", "id", "features": {name: value}, "probability", "label"}``, the id pseudonymised and the
features the model row the bundle scored. Once the service writes it, the integration test sends the rows
through gunicorn instead.
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catboost import CatBoostClassifier

from serving.bundle import BundleMeta, load_bundle, write_bundle, write_profile
from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES, build_rows
from serving.privacy import Pseudonymiser
from tasks import registry, tracking
from tasks.features import build_model_table
from tasks.package import reference_profile
from tasks.reading import read_tables
from tasks.settings import Settings
from tasks.split import split_by_time
from tasks.train import make_pool, predict_proba


def register_small_version(settings: Settings, data_dir: Path, alias: str | None = "champion") -> str:
    """Fit a small CatBoost on the sample's training split, package it with its reference profile (the
    package stage's own function), register it and point ``alias`` at it; returns the version."""
    tables = read_tables(data_dir)
    table = build_model_table(
        tables["loan"], tables["clarity"], settings.label_bad_statuses, settings.label_good_statuses
    )
    split = split_by_time(table, settings.split_fractions)
    model = CatBoostClassifier(iterations=60, depth=4, verbose=0, thread_count=2, allow_writing_files=False)
    model.fit(make_pool(split.train))
    meta = BundleMeta(
        model_name=settings.model_name, threshold=0.5, categorical_features=list(CATEGORICAL_FEATURES)
    )
    with tracking.run(settings, "small-version") as run_id:
        bundle = write_bundle(tracking.scratch_dir("bundle-") / "bundle", model, meta)
        write_profile(
            bundle, reference_profile(settings, split, predict_proba(model, make_pool(split.valid)))
        )
        version = registry.register_bundle(settings, run_id, bundle, {})
    if alias:
        registry.set_alias(settings, alias, version)
    return version


def champion_with_logs(root: Path, data_dir: Path) -> tuple[Settings, str, dict[str, Path]]:
    """Settings with state under ``root``, a champion packaged from ``data_dir``, and two prediction logs of
    applicants it scored: ``plain`` (the same population, seed 8) and ``shifted`` (``--drift applicants``),
    each written by two workers."""
    from tasks.sample import generate
    from tests.serving.synthetic import records_from_files

    settings = Settings(state_dir=root / "state")
    version = register_small_version(settings, data_dir)
    bundle = registry.download_bundle(settings, version, root / "bundle")
    logs = {}
    for name, drift in (("plain", None), ("shifted", "applicants")):
        generate(root / name, scale=0.02, seed=8, drift=drift)
        records = log_records(bundle, records_from_files(root / name), settings.pseudonymiser())
        logs[name] = root / f"log-{name}"
        write_log(logs[name], records[: len(records) // 2], worker=0)
        write_log(logs[name], records[len(records) // 2 :], worker=1)
    return settings, version, logs


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def log_records(
    bundle_dir: Path,
    raw: Sequence[dict[str, Any]],
    pseudonymiser: Pseudonymiser,
    when: datetime | None = None,
) -> list[dict[str, Any]]:
    """The records the service logs for ``raw`` applications scored by the bundle."""
    bundle = load_bundle(bundle_dir)
    rows = build_rows(raw)
    probabilities = bundle.predict_rows(rows)
    stamp = (when or datetime.now(UTC)).isoformat()
    return [
        {
            "time": stamp,
            "request_id": uuid.uuid4().hex,
            "endpoint": "/predict/batch",
            "model_name": bundle.meta.model_name,
            "model_version": bundle.version,
            "id": pseudonymiser.token(record.get("loanId")),
            "features": {k: _plain(v) for k, v in zip(FEATURE_NAMES, row, strict=True)},
            "probability": p,
            "label": int(p >= bundle.meta.threshold),
        }
        for record, row, p in zip(raw, rows, probabilities, strict=True)
    ]


def write_log(folder: Path, records: Sequence[dict[str, Any]], worker: int = 0) -> Path:
    """One compressed JSON Lines file of a worker's records under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"predictions-{worker}-{uuid.uuid4().hex[:8]}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path
