"""Package: the model bundle a version ships (:mod:`serving.bundle`): the CatBoost model, its metadata, the
reference sample every deployed image must reproduce, and the reference profile the monitor compares the
prediction log with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catboost import CatBoostClassifier

from serving.bundle import BundleMeta, write_bundle, write_profile
from serving.features import CATEGORICAL_FEATURES
from serving.privacy import Pseudonymiser, reference_records
from tasks import tracking
from tasks.common import run_logger, stage
from tasks.evaluate import Evaluation
from tasks.features import ModelTable
from tasks.ingest import IngestResult, data_fingerprint
from tasks.monitor import build_profile
from tasks.settings import Settings
from tasks.split import Split
from tasks.train import make_pool, predict_proba


def reference_sample(
    test: ModelTable, probabilities: list[float], size: int, pseudonymiser: Pseudonymiser
) -> dict[str, list[Any]]:
    """A spread of test records with their training-time probabilities, for smoke tests of deployed images.

    The records keep only the fields the features read, ``clarityFraudId`` pseudonymised: the bundle ships.
    """
    n = len(test)
    step = max(1, n // size)
    idx = list(range(0, n, step))[:size]
    records = test.subset(idx).records
    return {
        "records": reference_records(records, pseudonymiser),
        "probabilities": [float(probabilities[i]) for i in idx],
    }


def reference_profile(settings: Settings, model: CatBoostClassifier, split: Split) -> dict[str, Any]:
    """The drift reference (:func:`tasks.monitor.build_profile`): the training split's features, the model's
    scores on the validation split."""
    scores = predict_proba(model, make_pool(split.valid))
    return build_profile(split.train.features, scores, settings.profile_bins, settings.profile_top_categories)


def bundle_meta(settings: Settings, run_id: str, evaluation: Evaluation, data: dict[str, Any]) -> BundleMeta:
    """The bundle's metadata: threshold, validation and test metrics, the data it was trained on, parameters."""
    metrics = evaluation.metrics
    return BundleMeta(
        model_name=settings.model_name,
        threshold=metrics["threshold"],
        categorical_features=list(CATEGORICAL_FEATURES),
        metrics={k: v for k, v in metrics.items() if k.startswith(("test_", "valid_")) or k == "threshold"},
        data_fingerprint=data,
        params=dict(evaluation.params),
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


@stage("package")
def package_task(
    settings: Settings,
    run_id: str,
    model: CatBoostClassifier,
    evaluation: Evaluation,
    split: Split,
    ingested: IngestResult,
) -> Path:
    """Stage: write the bundle (model, metadata, reference sample, reference profile) into a scratch folder;
    returns the folder."""
    labelled = sum(split.boundaries[k] for k in ("n_train", "n_valid", "n_test"))
    meta = bundle_meta(settings, run_id, evaluation, data_fingerprint(ingested, labelled))
    reference = reference_sample(
        split.test, evaluation.test_probabilities, settings.smoke_sample_size, settings.pseudonymiser()
    )
    bundle_dir = write_bundle(tracking.scratch_dir("bundle-") / "bundle", model, meta, reference)
    write_profile(bundle_dir, reference_profile(settings, model, split))
    run_logger().info("bundle written to %s (%d reference records)", bundle_dir, len(reference["records"]))
    return bundle_dir
