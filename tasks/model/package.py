"""The bundle a version ships: model, metadata, reference sample, reason codes, evaluation, card, drift profile."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from catboost import CatBoostClassifier

from serving.bundle import (
    EVALUATION_FILE,
    META_FILE,
    PLOTS_DIR,
    BundleMeta,
    _write_json,
    load_bundle,
    write_bundle,
    write_profile,
)
from serving.config import DEFAULT_REASON_COUNT
from serving.features import CATEGORICAL_FEATURES
from serving.privacy import Pseudonymiser, reference_records
from serving.reason_table import TABLE_PATH, ReasonTable, ReasonTableError, copy_table
from serving.reasons import explain_selected
from tasks.common import run_logger, stage
from tasks.data.ingest import data_fingerprint
from tasks.data.sources import IngestResult
from tasks.errors import PermanentError
from tasks.model.card import write_card
from tasks.model.evaluate import Evaluation
from tasks.model.features import ModelTable
from tasks.model.split import Split
from tasks.monitoring.drift import build_profile
from tasks.registry import tracking
from tasks.settings import Settings


def reference_sample(
    test: ModelTable, probabilities: list[float], size: int, pseudonymiser: Pseudonymiser
) -> dict[str, list[Any]]:
    """Spread, pseudonymised test records and their probabilities, for smoke tests of deployed images."""
    idx = list(range(0, len(test), max(1, len(test) // size)))[:size]
    return {
        "records": reference_records(test.subset(idx).records, pseudonymiser),
        "probabilities": [float(probabilities[i]) for i in idx],
    }


def reference_profile(settings: Settings, split: Split, valid_scores: np.ndarray) -> dict[str, Any]:
    """The drift reference: the training features and the served validation scores."""
    bins, top = settings.monitoring.profile_bins, settings.monitoring.profile_top_categories
    return build_profile(split.train.features, valid_scores, bins, top)


def add_reason_table(bundle_dir: Path, source: Path = TABLE_PATH) -> ReasonTable:
    """Copy the reason-code table into a written bundle; a feature without a reason code is a PermanentError."""
    features = json.loads((bundle_dir / META_FILE).read_text())["features"]
    try:
        return copy_table(bundle_dir, features, source)
    except ReasonTableError as exc:
        raise PermanentError(f"cannot package the bundle: {exc}") from None


def table_reasons(
    bundle_dir: Path, table: ModelTable, mode: str = "all", count: int = DEFAULT_REASON_COUNT
) -> list[Any]:
    """The reasons training gives for a model table's rows: what the service must answer for its records."""
    bundle, rows, records = load_bundle(bundle_dir), table.rows, table.records
    column = lambda name: [r.get(name) for r in records]  # noqa: E731
    probabilities = bundle.predict_input(rows)
    return explain_selected(bundle, rows, probabilities, bundle.meta.threshold, mode, count, column) or []


def assemble_bundle(
    settings: Settings,
    directory: Path,
    run_id: str,
    model: CatBoostClassifier,
    evaluation: Evaluation,
    split: Split,
    data: dict[str, Any],
    labels: dict[str, Any] | None = None,
) -> Path:
    """Write the whole bundle into ``directory``; the evaluation report carries what the card says beyond it
    (windows, label counts, tuning, commit, monotone constraints)."""
    from tasks.release.build import git_commit

    metrics, report = evaluation.metrics, evaluation.report
    meta = BundleMeta(
        model_name=settings.registry.model_name,
        threshold=metrics["threshold"],
        categorical_features=list(CATEGORICAL_FEATURES),
        metrics={k: v for k, v in metrics.items() if k.startswith(("test_", "valid_")) or k == "threshold"},
        data_fingerprint=data,
        params=dict(evaluation.params),
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        calibrator=evaluation.calibrator.to_dict() if evaluation.calibrator else None,
        decision_policy=dict(report.get("policy") or {}),
    )
    size, pseudonymiser = settings.release.smoke_sample_size, settings.pseudonymiser()
    reference = reference_sample(split.test, evaluation.test_probabilities, size, pseudonymiser)
    bundle_dir = write_bundle(directory, model, meta, reference)
    add_reason_table(bundle_dir)
    write_profile(bundle_dir, reference_profile(settings, split, evaluation.valid_probabilities))
    if not report:
        return bundle_dir
    context = {
        "boundaries": dict(split.boundaries),
        "labels": {k: (labels or {}).get(k) for k in ("label_policy", "label_policies", "labelled_loans")},
        "training": {
            "tuning": report.get("training") or {},
            "code_commit": git_commit(),
            "monotone_constraints": dict(settings.tuning.monotone_constraints),
        },
    }
    _write_json(bundle_dir / EVALUATION_FILE, {**report, "context": context})
    (bundle_dir / PLOTS_DIR).mkdir(exist_ok=True)
    for name, png in evaluation.plots.items():
        (bundle_dir / PLOTS_DIR / name).write_bytes(png)
        (bundle_dir / PLOTS_DIR / name).chmod(0o644)
    write_card(bundle_dir)
    return bundle_dir


@stage("package")
def package_task(
    settings: Settings,
    run_id: str,
    model: CatBoostClassifier,
    evaluation: Evaluation,
    split: Split,
    ingested: IngestResult,
    labels: dict[str, Any] | None = None,
) -> Path:
    """Stage: the bundle in a scratch folder; ``labels`` is the model table's figures (label policy counts)."""
    labelled = sum(split.boundaries[k] for k in ("n_train", "n_valid", "n_test"))
    data = data_fingerprint(ingested, labelled)
    directory = tracking.scratch_dir("bundle-") / "bundle"
    bundle_dir = assemble_bundle(settings, directory, run_id, model, evaluation, split, data, labels)
    run_logger().info("bundle written to %s", bundle_dir)
    return bundle_dir
