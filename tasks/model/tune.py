"""Optuna search over CatBoost parameters on the validation slice, every trial an MLflow child run and a log line,
run here or on workers sharing the study (:func:`work` is every worker's loop, :func:`worker_main` its entry)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from catboost import Pool
from optuna.trial import FrozenTrial, TrialState
from sklearn.metrics import roc_auc_score

from tasks.common import run_logger, stage
from tasks.errors import PermanentError, TransientError
from tasks.model import tune_study
from tasks.model.split import Split
from tasks.model.train import fit_model, make_pool, predict_proba
from tasks.registry import tracking
from tasks.settings import Settings

PRUNE_EVERY = 25  # iterations between the validation AUCs reported to the pruner


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space (MVS bootstrap honours ``subsample``; ``bagging_temperature`` would be ignored)."""
    return {
        "depth": trial.suggest_int("depth", 4, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
        "random_strength": trial.suggest_float("random_strength", 0.1, 3.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "one_hot_max_size": trial.suggest_int("one_hot_max_size", 2, 12),
        "border_count": trial.suggest_categorical("border_count", [64, 128, 254]),
    }


@dataclass
class PruningCallback:
    """CatBoost callback that reports validation AUC to Optuna and stops a trial the pruner gives up on."""

    trial: optuna.Trial
    every: int = PRUNE_EVERY
    pruned: bool = False

    def after_iteration(self, info: Any) -> bool:
        auc = info.metrics.get("validation", {}).get("AUC")
        if info.iteration % self.every or not auc:
            return True
        self.trial.report(auc[-1], info.iteration)
        self.pruned = self.trial.should_prune()
        return not self.pruned


def objective_for(
    train: Pool, valid: Pool, valid_label: Any, settings: Settings, run_id: str | None, worker: str = ""
) -> Callable[[optuna.Trial], float]:
    """Validation ROC-AUC of a model fitted on train. The trial records its worker (a re-run keeps the dead one's
    as ``retried_from_worker``) and its own error (``error``: such a trial is not re-run)."""

    def objective(trial: optuna.Trial) -> float:
        reason = tune_study.surplus_reason(trial)
        if reason is not None:
            trial.set_user_attr(tune_study.SURPLUS, True)
            raise tune_study.SurplusTrial(reason)
        try:
            if tune_study.WORKER in trial.user_attrs:  # a re-run: the attributes are the failed one's
                trial.set_user_attr("retried_from_worker", trial.user_attrs[tune_study.WORKER])
            trial.set_user_attr(tune_study.WORKER, worker)
            params, started, callback = suggest_params(trial), time.perf_counter(), PruningCallback(trial)
            model = fit_model(params, train, valid, settings.tuning, callbacks=[callback])
            auc = float(roc_auc_score(valid_label, predict_proba(model, valid)))
            trial.set_user_attr("valid_roc_auc", auc)
            trial.set_user_attr("best_iteration", model.get_best_iteration())
            if run_id:
                metrics = {"valid_roc_auc": auc, "fit_seconds": time.perf_counter() - started}
                tags = {"optuna.trial": str(trial.number), "optuna.worker": worker}
                fitted = {**params, "best_iteration": model.get_best_iteration()}
                status, name = "KILLED" if callback.pruned else "FINISHED", f"trial-{trial.number}"
                tracking.log_child_run(settings, run_id, name, fitted, metrics, tags, status)
        except Exception as exc:
            # a trial failed stale meanwhile takes no attribute: it counts as stopped, and is re-run
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr(tune_study.ERROR, repr(exc)[:1000])
            raise
        if callback.pruned:
            raise optuna.TrialPruned(f"pruned at validation AUC {auc:.4f}")
        return auc

    return objective


def trial_line(done: int, total: int, trial: FrozenTrial, best: FrozenTrial | None, elapsed_s: float) -> str:
    """``trial 3/20 (#2) pruned: validation ROC-AUC 0.8123; best 0.8355 (#1); 42.1 s``."""
    value = trial.value if trial.state == TrialState.COMPLETE else trial.user_attrs.get("valid_roc_auc")
    shown = f"validation ROC-AUC {value:.4f}" if value is not None else "no value"
    best_text = f"best {best.value:.4f} (#{best.number})" if best is not None else "no complete trial yet"
    state = trial.state.name.lower()
    return f"trial {done}/{total} (#{trial.number}) {state}: {shown}; {best_text}; {elapsed_s:.1f} s"


class TrialLog:
    """Optuna callback: a run-log line per finished trial (:func:`trial_line`) or why it failed; none if surplus."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.done, self.started = total, log, 0, time.perf_counter()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attrs, number = trial.user_attrs, trial.number
        if tune_study.SURPLUS in attrs:
            return
        if trial.state == TrialState.FAIL and tune_study.ERROR in attrs:
            return self.log(f"trial #{number} failed: {attrs[tune_study.ERROR]}")
        if trial.state == TrialState.FAIL:
            worker = attrs.get(tune_study.WORKER, "?")
            return self.log(
                f"trial #{number} failed (worker {worker} stopped); queued again with its parameters"
            )
        self.done += 1
        complete = any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
        best = study.best_trial if complete else None
        self.log(trial_line(self.done, self.total, trial, best, time.perf_counter() - self.started))


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """The optimisation history and (with two complete trials) parameter importances, as matplotlib figures."""
    from optuna.visualization import matplotlib as optuna_plots

    figures: dict[str, Any] = {}
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        figures["optimization_history.png"] = optuna_plots.plot_optimization_history(study).figure
        if sum(t.state == TrialState.COMPLETE for t in study.trials) >= 2:
            figures["param_importances.png"] = optuna_plots.plot_param_importances(study).figure
    for fig in figures.values():
        fig.set_size_inches(7, 5)
        fig.tight_layout()
    return figures


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    deadline: float,
    heartbeat_seconds: float,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> int:
    """A worker's loop: run queued trials one at a time until none is queued or running, or the budget is spent;
    while others run, stay to fail a trial whose heartbeat stops so that its retry runs here. Returns trials run."""
    ran = 0
    while time.time() < deadline:
        with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
            optuna.storages.fail_stale_trials(study)
        tune_study.reconcile(study)
        states = tune_study.counts(study)
        if states[TrialState.WAITING]:
            catch = (tune_study.SurplusTrial,)
            study.optimize(objective, n_trials=1, catch=catch, gc_after_trial=True, callbacks=callbacks)
            ran += 1
        elif states[TrialState.RUNNING]:
            time.sleep(heartbeat_seconds)
        else:
            break
    return ran


def worker_main(
    settings: Settings,
    study_name: str,
    data_uri: str,
    run_id: str | None,
    index: int,
    deadline: float,
    storage: str | None = None,
) -> int:
    """A worker's entry (local process or flow run): the stage's study, its data (a folder or a ``runs:/`` URI)
    checked against the study's fingerprint, then :func:`work`."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = tune_study.load_study(settings, study_name, index, storage)
    settings = settings.model_copy(update=study.user_attrs.get(tune_study.FIT, {}))
    folder = Path(data_uri)
    if data_uri.startswith("runs:/"):
        folder = tracking.download_artifacts(settings, data_uri, tracking.scratch_dir("loanrisk-tune-"))
    train, valid = tune_study.read_data(folder)
    found, expected = tune_study.data_fingerprint(train, valid), study.user_attrs.get(tune_study.FINGERPRINT)
    if found != expected:
        raise PermanentError(
            f"tune worker: the data at {data_uri} has fingerprint {found}, study {study_name!r} {expected}"
        )
    worker = tune_study.worker_id(settings.tuning)
    objective = objective_for(make_pool(train), make_pool(valid), valid.label, settings, run_id, worker)
    ran = work(study, objective, deadline, settings.tuning.tune_heartbeat_seconds)
    run_logger().info("tune worker %s: %d trials of study %s", worker, ran, study_name)
    return ran


def fan_out(
    settings: Settings, split: Split, study: optuna.Study, run_id: str | None, deadline: float
) -> None:
    """Run the queued trials on ``tune_workers`` workers (local processes or pool flow runs) and follow them."""
    tuning, name, log = settings.tuning, study.study_name, run_logger()
    scratch = settings.state_dir / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loanrisk-tune-", dir=scratch) as tmp:
        paths = tune_study.write_data(split.train, split.valid, Path(tmp))
        storage = tune_study.redacted(settings.study_storage)
        pool: tune_study.LocalWorkers | tune_study.PoolWorkers
        if tuning.tune_mode == "local":
            threads = tuning.thread_count  # -1: share the cores instead of every worker taking them all
            threads = max(1, (os.cpu_count() or 1) // tuning.tune_workers) if threads == -1 else threads
            args = (settings.model_copy(update={"thread_count": threads}), name, tmp, run_id)
            pool = tune_study.LocalWorkers(
                worker_main, lambda i: (*args, i, deadline, storage), tuning.tune_workers
            )
        else:
            if not run_id:
                raise PermanentError("tuning in pool mode needs the training run (its data artifact)")
            tracking.log_files(settings, run_id, paths, "tuning/data")
            parameters = {"study_name": name, "data_uri": f"runs:/{run_id}/tuning/data", "run_id": run_id}
            parameters |= {"deadline": deadline, "storage": storage}
            runs = [{**parameters, "index": i} for i in range(tuning.tune_workers)]
            pool = tune_study.PoolWorkers(tuning.tune_deployment_name, runs)
        message = "tuning: %d trials of study %s on %d %s workers: %s"
        log.info(message, tuning.n_trials, name, tuning.tune_workers, tuning.tune_mode, pool.describe())
        try:
            tune_study.wait_for_trials(study, pool, deadline, TrialLog(tuning.n_trials, log.info))
        finally:
            pool.stop()


def tune(settings: Settings, split: Split, study_name: str, run_id: str | None = None) -> dict[str, Any]:
    """Run the study within the trial count and time budget, here or on workers; the best params and a summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tuning, deadline = settings.tuning, time.time() + settings.tuning.tune_timeout_seconds
    fingerprint = tune_study.data_fingerprint(split.train, split.valid)
    study = tune_study.prepare_study(settings, study_name, fingerprint)
    if tuning.tune_workers == 1 and tuning.tune_mode == "local":
        pools = make_pool(split.train), make_pool(split.valid)
        objective = objective_for(*pools, split.valid.label, settings, run_id, tune_study.worker_id(tuning))
        log = TrialLog(tuning.n_trials, run_logger().info)
        work(study, objective, deadline, tuning.tune_heartbeat_seconds, callbacks=[log])
    else:
        fan_out(settings, split, study, run_id, deadline)
    return summarise(settings, study, run_id)


def summarise(settings: Settings, study: optuna.Study, run_id: str | None) -> dict[str, Any]:
    """The best trial and the counts; the study's plots on the run."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        states = {state.name: n for state, n in tune_study.counts(study).items() if n}
        raise TransientError(f"tuning: no trial of study {study.study_name!r} completed ({states})")
    best, kept = study.best_trial, [t for t in trials if tune_study.SURPLUS not in t.user_attrs]
    if math.isnan(best.value):
        raise TransientError("tuning produced a NaN objective")
    if run_id:
        tracking.log_figures(settings, run_id, study_figures(study), "tuning")
    return {
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "best_trial": best.number,
        "n_complete": len(done),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_retried": sum(tune_study.retried_from(t) is not None for t in kept),
        "workers": sorted({str(t.user_attrs.get(tune_study.WORKER)) for t in kept if t.state.is_finished()}),
        "mode": settings.tuning.tune_mode if settings.tuning.tune_workers > 1 else "in-process",
        "study_name": study.study_name,
        "storage": settings.study_storage.split("://")[0],
    }


@stage("tune")
def tune_task(settings: Settings, split: Split, run_id: str | None = None) -> dict[str, Any]:
    """Stage: the study (one per run unless ``optuna_study_name`` shares one), best params logged on ``run_id``."""
    per_run = f"{settings.registry.model_name}-{run_id or uuid.uuid4().hex}"
    summary = tune(settings, split, settings.tuning.optuna_study_name or per_run, run_id)
    keys = ("best_value", "best_trial", "n_complete", "n_pruned", "best_params")
    message = "tuning: best validation ROC-AUC %.4f (trial %d; %d complete, %d pruned) params %s"
    run_logger().info(message, *(summary[k] for k in keys))
    if run_id:
        tracking.log_params(settings, run_id, {f"best.{k}": v for k, v in summary["best_params"].items()})
    return summary


# The tune-worker flow's stage: a worker's entry as a task run (local worker processes call the plain function).
tune_worker_task = stage("tune-worker")(worker_main)
