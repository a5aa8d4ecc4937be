"""The training flow: ingest → validate → features → split → tune → train → evaluate → package → register →
promote → (deploy). ``python -m flows.training`` prints one JSON line with the run, version, decision and metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow

from tasks.common import cli_run, run_logger
from tasks.data.ingest import ingest_task
from tasks.data.validate import validate_task
from tasks.model.evaluate import evaluate_task
from tasks.model.features import features_task
from tasks.model.package import package_task
from tasks.model.split import split_task
from tasks.model.train import train_task
from tasks.model.tune import tune_task
from tasks.registry import tracking
from tasks.registry.promote import promote_task
from tasks.registry.versions import bundle_uri, register_task
from tasks.settings import Settings, configure_environment, get_settings


def resolve_settings(source: str | None, scale: float | None, n_trials: int | None) -> Settings:
    """The settings with this run's overrides applied (validated like the rest)."""
    given = {"source": source, "sample_scale": scale, "n_trials": n_trials}
    overrides = {k: v for k, v in given.items() if v is not None}
    return get_settings().replace(**overrides) if overrides else get_settings()


def run_params(settings: Settings, dry_run: bool) -> dict[str, Any]:
    """What the training run records as its parameters."""
    names = ("source", "sample_scale", "n_trials", "seed", "split_fractions", "label_bad_statuses")
    names += ("label_good_statuses", "label_policy", "monotone_constraints")
    return {name: settings.value(name) for name in names} | {"dry_run": dry_run}


def deploy_mode(configured: str, deploy: bool | None) -> str:
    """The run's deploy mode: ``deploy=True`` is "required", ``False`` is "off", ``None`` the configured one."""
    return configured if deploy is None else ("required" if deploy else "off")


def wants_deploy(configured: str, promoted: bool, dry_run: bool, deploy: bool | None) -> bool:
    """Whether this run hands its version to the deploy flow (``configured``: the release's deploy mode)."""
    return promoted and not dry_run and deploy_mode(configured, deploy) != "off"


def run_deploy(settings: Settings, version: str, deploy: bool | None) -> dict[str, Any]:
    """Run the deploy flow for a promoted version (a subflow, or a deployment run inside a deployment); a missing
    engine or registry skips it under "auto" and fails it under "required"."""
    from prefect.runtime import deployment, flow_run

    from tasks.release.ledger import ReleaseFailed
    from tasks.release.push import engine_available

    ready, missing, why = engine_available(settings.release)
    if not ready and deploy_mode(settings.release.deploy_mode, deploy) == "required":
        raise ReleaseFailed(missing, f"deploy_mode is required and {why}", "no")
    if not ready:
        run_logger().warning("deploy skipped: %s (deploy_mode auto; set it to required to fail instead)", why)
        return {"status": "skipped", "reason": why, "missing": missing}
    requester = "the promotion gate" + (f" of training flow run {flow_run.id}" if flow_run.id else "")
    if not deployment.id:
        from flows.deploy import deploy_flow

        return deploy_flow(model_version=version, requested_by=requester)
    from prefect.deployments import run_deployment

    # timeout=0: do not block, so a single-slot worker cannot deadlock on its own child run.
    name = settings.release.deploy_deployment_name
    child = run_deployment(name, parameters={"model_version": version, "requested_by": requester}, timeout=0)
    return {"status": "scheduled", "flow_run_id": str(child.id), "deployment": name}


_AFTER_FAILURE = {
    "yes": "after the commit point: it is the champion; `python -m flows.deploy --converge` completes the "
    "release",
    "unknown": "at the commit point, and whether it committed is unknown: `python -m flows.deploy --history` "
    "tells, `--converge` completes",
    "no": "before the commit point: nothing was released, the champion is unchanged",
}


def hand_off(
    settings: Settings, run_id: str, version: str, deploy: bool | None
) -> tuple[dict[str, Any], Exception | None]:
    """Run the deploy and record its outcome on the training run (``deploy.*`` tags, ``deploy.json``): the
    outcome, and for a failed deploy the error the training flow raises once its run is closed."""
    from tasks.release.ledger import ReleaseFailed

    error: Exception | None = None
    try:
        outcome = run_deploy(settings, version, deploy)
    except Exception as exc:  # noqa: BLE001 - recorded on the run, raised once the run is closed
        committed = str(getattr(exc, "committed", "no"))
        status = {"yes": "incomplete", "unknown": "unknown"}.get(committed, "failed")
        outcome = {"status": status, "committed": committed, "error": f"{type(exc).__name__}: {exc}"}
        side = _AFTER_FAILURE.get(committed, _AFTER_FAILURE["no"])
        message = f"v{version} was trained, registered and promoted; its deploy failed {side}: {exc}"
        error = ReleaseFailed(getattr(exc, "step", "deploy"), message, committed)  # type: ignore[arg-type]
    tags = {f"deploy.{k}": str(outcome.get(k, "")) for k in ("status", "committed", "digest", "error")}
    tags["deploy.committed"] = tags["deploy.committed"].lower()
    tags["deploy.error"] = tags["deploy.error"][:5000]
    tracking.set_tags(settings, run_id, tags)
    tracking.log_dict(settings, run_id, outcome, "deploy.json")
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
    started = time.perf_counter()
    deploy_error: Exception | None = None
    # The run ends FINISHED once the model is trained, registered and gated, whatever its deploy did (recorded as
    # deploy.* tags; the deploy's error is raised after the run is closed); FAILED when a stage fails.
    name = f"training-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with tracking.run(settings, name, {"source": settings.data.source, "dry_run": str(dry_run)}) as run_id:
        tracking.log_params(settings, run_id, run_params(settings, dry_run))
        ingested = ingest_task(settings, run_id)
        validated = validate_task(settings, ingested.data_dir, run_id)
        table = features_task(settings, validated)
        split = split_task(settings, table, run_id)
        tuning = tune_task(settings, split, run_id)
        model = train_task(settings, split, tuning["best_params"])
        evaluation = evaluate_task(settings, model, split, tuning, run_id)
        bundle_dir = package_task(settings, run_id, model, evaluation, split, ingested, table.stats)
        version = register_task(settings, run_id, bundle_dir)
        decision = promote_task(settings, version, evaluation.metrics, split.test, dry_run)
        result: dict[str, Any] = {
            "run_id": run_id,
            "model_name": settings.registry.model_name,
            "model_version": version,
            "bundle_uri": bundle_uri(settings.registry, version),
            "promoted": decision.promoted,
            "reasons": decision.reasons,
            "metrics": {k: round(v, 6) for k, v in evaluation.metrics.items()},
            "boundaries": split.boundaries,
            "tuning": {k: tuning[k] for k in ("n_complete", "n_pruned", "best_value", "best_params")},
            "data": {"source": ingested.source, "revision": ingested.revision},
        }
        if wants_deploy(settings.release.deploy_mode, decision.promoted, dry_run, deploy):
            result["deploy"], deploy_error = hand_off(settings, run_id, version, deploy)
        tracking.log_metrics(settings, run_id, {"flow_seconds": time.perf_counter() - started})
    run_logger().info(
        "training flow done in %.1f s: %s", time.perf_counter() - started, json.dumps(result, default=str)
    )
    if deploy_error is not None:
        raise deploy_error
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: run the training flow and print its result as one JSON line."""
    configure_environment()
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
    return cli_run(lambda: training_flow(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
