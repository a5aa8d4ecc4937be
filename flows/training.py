"""The training flow: ingest → validate → features → split → tune → train → evaluate → register → promote.

Composition only; each stage's logic lives in ``tasks/``. Run it with ``python -m flows.training``: it prints one
JSON line with the run id, the registered version, where its bundle is, the promotion decision and the metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from tasks.settings import Settings, configure_environment, get_settings

configure_environment()

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from serving.bundle import BundleMeta, write_bundle
from serving.features import CATEGORICAL_FEATURES
from serving.privacy import Pseudonymiser, reference_records
from tasks import tracking
from tasks.common import retry_options, run_logger
from tasks.evaluate import evaluate_task, save_plots, summary_markdown
from tasks.features import features_task
from tasks.ingest import ingest_task
from tasks.promote import promote_task
from tasks.registry import bundle_uri, register_task
from tasks.split import split_task
from tasks.train import make_pool, predict_proba, train_task
from tasks.tune import tune_task
from tasks.validate import validate_task


def resolve_settings(source: str | None, scale: float | None, n_trials: int | None) -> Settings:
    """The settings with this run's overrides applied (validated like the rest)."""
    base = get_settings()
    overrides = {
        k: v
        for k, v in {"source": source, "sample_scale": scale, "n_trials": n_trials}.items()
        if v is not None
    }
    return Settings.model_validate({**base.model_dump(), **overrides}) if overrides else base


def data_fingerprint(ingested: Any, table_stats: dict[str, Any]) -> dict[str, Any]:
    """What identifies the training data: source, revision and each file's sha256 and size."""
    return {
        "source": ingested.source,
        "revision": ingested.revision,
        "files": {name: {"sha256": f["sha256"], "size": f["size"]} for name, f in ingested.files.items()},
        "labelled_loans": table_stats.get("labelled_loans"),
    }


def reference_sample(
    test: Any, probabilities: list[float], size: int, pseudonymiser: Pseudonymiser
) -> dict[str, list[Any]]:
    """A spread of test records with their training-time probabilities, for smoke tests of deployed images.

    The records keep only the fields the features read, ``clarityFraudId`` pseudonymised: the bundle ships.
    """
    n = len(test.records)
    step = max(1, n // size)
    idx = list(range(0, n, step))[:size]
    records = reference_records([test.records[i] for i in idx], pseudonymiser)
    return {"records": records, "probabilities": [probabilities[i] for i in idx]}


def _deploy(settings: Settings, version: str, deploy: bool | None) -> dict[str, Any]:
    """Run the deploy flow for a promoted version: as a subflow, or as a deployment run when in a deployment.

    A deploy that fails is raised (``DeployError.committed`` says whether ``champion`` had moved); the training
    flow records the outcome on its MLflow run and re-raises after closing the run (see :func:`training_flow`).
    """
    from prefect.runtime import deployment

    if deploy is None:
        from tasks.image import engine_available

        ready, why = engine_available(settings)
        if not ready:
            run_logger().warning("deploy skipped: %s (pass deploy=True to require it)", why)
            return {"status": "skipped", "reason": why}
    if deployment.id:
        from prefect.deployments import run_deployment

        # timeout=0: do not block, so a single-slot worker cannot deadlock on its own child run.
        child = run_deployment(
            settings.deploy_deployment_name, parameters={"model_version": version}, timeout=0
        )
        return {
            "status": "scheduled",
            "flow_run_id": str(child.id),
            "deployment": settings.deploy_deployment_name,
        }
    from flows.deploy import deploy_flow

    return deploy_flow(model_version=version)


def _deploy_outcome(version: str, exc: Exception) -> tuple[dict[str, Any], Exception]:
    """The deploy entry of the result for a failed deploy, and the error the training flow raises for it."""
    from flows.deploy import DeployError

    committed = bool(getattr(exc, "committed", False))
    side = (
        "after the commit point: it is the champion, re-run the deploy to complete the release"
        if committed
        else "before the commit point: nothing was released, champion and latest are unchanged"
    )
    outcome = {"status": "incomplete" if committed else "failed", "committed": committed,
               "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
    error = DeployError(f"v{version} was trained, registered and promoted; its deploy failed {side}: {exc}",
                        version=version, committed=committed)  # fmt: skip
    return outcome, error


@flow(name="loan-risk-training", log_prints=False)
def training_flow(
    source: str | None = None,
    scale: float | None = None,
    n_trials: int | None = None,
    dry_run: bool = False,
    deploy: bool | None = None,
) -> dict[str, Any]:
    """Retrain, evaluate, register and gate a loan-risk model; deploy it when the gate says so."""
    settings = resolve_settings(source, scale, n_trials)
    logger = run_logger()
    started = time.perf_counter()
    run_id = tracking.start_run(
        settings,
        f"training-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        {"source": settings.source, "dry_run": str(dry_run)},
    )
    retry = retry_options(settings)
    deploy_error: Exception | None = None
    try:
        tracking.log_params(settings, run_id, {
            "source": settings.source, "sample_scale": settings.sample_scale, "n_trials": settings.n_trials,
            "seed": settings.seed, "split_fractions": settings.split_fractions,
            "label_bad_statuses": settings.label_bad_statuses, "label_good_statuses": settings.label_good_statuses,
        })  # fmt: skip
        ingested = ingest_task.with_options(**retry)(settings.source, settings, run_id)
        validated = validate_task.with_options(**retry)(ingested.data_dir, settings, run_id)
        table = features_task.with_options(**retry)(
            validated.tables, settings.label_bad_statuses, settings.label_good_statuses
        )
        split = split_task.with_options(**retry)(table, settings.split_fractions)
        tracking.log_dict(
            settings, run_id, {"boundaries": split.boundaries, "table": table.stats}, "split.json"
        )
        tracking.log_params(settings, run_id, {f"split.{k}": v for k, v in split.boundaries.items()})

        fingerprint = data_fingerprint(ingested, table.stats)
        study_name = settings.optuna_study_name or f"{settings.model_name}-{run_id}"
        tuning = tune_task.with_options(**retry)(split.train, split.valid, settings, study_name, run_id)
        tracking.log_params(settings, run_id, {f"best.{k}": v for k, v in tuning["best_params"].items()})

        model = train_task.with_options(**retry)(tuning["best_params"], split.train, split.valid, settings)
        p_valid = predict_proba(model, make_pool(split.valid))
        p_test = predict_proba(model, make_pool(split.test))
        metrics = evaluate_task.with_options(**retry)(
            split.valid.label, p_valid, split.test.label, p_test, settings.min_precision, settings.min_recall
        )
        metrics["best_iteration"] = float(model.get_best_iteration() or 0)
        tracking.log_metrics(settings, run_id, {**metrics, "tuning_best_valid_roc_auc": tuning["best_value"]})

        plots_dir = tracking.scratch_dir("plots-")
        importances = list(zip(split.train.frame().columns, model.get_feature_importance(), strict=True))
        tracking.log_files(
            settings,
            run_id,
            save_plots(split.test.label, p_test, metrics["threshold"], importances, plots_dir),
            "plots",
        )
        create_markdown_artifact(
            key="evaluation-summary", markdown=summary_markdown(metrics, split.boundaries, tuning),
            description="Test metrics of the newly trained loan-risk model",
        )  # fmt: skip

        bundle_dir = tracking.scratch_dir("bundle-") / "bundle"
        meta = BundleMeta(
            model_name=settings.model_name,
            threshold=metrics["threshold"],
            categorical_features=list(CATEGORICAL_FEATURES),
            metrics={
                k: v for k, v in metrics.items() if k.startswith(("test_", "valid_")) or k == "threshold"
            },
            data_fingerprint=fingerprint,
            params={**tuning["best_params"], "best_iteration": model.get_best_iteration()},
            run_id=run_id,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        reference = reference_sample(
            split.test, [float(p) for p in p_test], settings.smoke_sample_size, settings.pseudonymiser()
        )
        write_bundle(bundle_dir, model, meta, reference)
        version = register_task.with_options(**retry)(settings, run_id, bundle_dir, {
            "data.source": settings.source, "data.revision": str(ingested.revision or ""),
            "test_roc_auc": f"{metrics['test_roc_auc']:.4f}", "threshold": f"{metrics['threshold']:.6f}",
        })  # fmt: skip

        decision = promote_task.with_options(**retry)(settings, version, metrics, split.test, dry_run)
        result: dict[str, Any] = {
            "run_id": run_id,
            "model_name": settings.model_name,
            "model_version": version,
            "bundle_uri": bundle_uri(settings, version),
            "promoted": decision.promoted,
            "reasons": decision.reasons,
            "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "boundaries": split.boundaries,
            "data": {"source": ingested.source, "revision": ingested.revision},
        }
        if decision.promoted and not dry_run and (deploy is None or deploy) and settings.deploy_on_promotion:
            try:
                result["deploy"] = _deploy(settings, version, deploy)
            except Exception as exc:  # noqa: BLE001 - recorded on the run, raised once the run is closed
                result["deploy"], deploy_error = _deploy_outcome(version, exc)
        if "deploy" in result:
            d = result["deploy"]
            tracking.set_tags(settings, run_id, {"deploy.status": d.get("status", ""),
                                                 "deploy.committed": str(d.get("committed", "")).lower(),
                                                 "deploy.digest": d.get("digest", ""),
                                                 "deploy.error": d.get("error", "")[:5000]})  # fmt: skip
            tracking.log_dict(settings, run_id, d, "deploy.json")
        tracking.log_metrics(settings, run_id, {"flow_seconds": time.perf_counter() - started})
    except BaseException:
        tracking.end_run(settings, run_id, "FAILED")
        raise
    # The run trained, registered and gated a model: FINISHED, whatever its deploy did (recorded as deploy.* tags).
    tracking.end_run(settings, run_id, "FINISHED")
    logger.info(
        "training flow done in %.1f s: %s", time.perf_counter() - started, json.dumps(result, default=str)
    )
    if deploy_error is not None:
        raise deploy_error
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: run the training flow and print its result as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m flows.training", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", help="sample (default), a local directory, or hf://datasets/<repo>[@<revision>]"
    )
    parser.add_argument("--scale", type=float, help="synthetic sample scale (1.0 = the real files' sizes)")
    parser.add_argument("--n-trials", type=int, help="Optuna trials")
    parser.add_argument("--dry-run", action="store_true", help="decide promotion without touching aliases")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--deploy", dest="deploy", action="store_true", default=None, help="require the deploy flow"
    )
    group.add_argument("--no-deploy", dest="deploy", action="store_false", help="never run the deploy flow")
    args = parser.parse_args(argv)
    try:
        result = training_flow(
            source=args.source,
            scale=args.scale,
            n_trials=args.n_trials,
            dry_run=args.dry_run,
            deploy=args.deploy,
        )
    except Exception as exc:  # noqa: BLE001 - the CLI reports any failure as a JSON line and exit 1
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
