"""Optuna search over CatBoost parameters, on the validation slice only, every trial an MLflow child run."""

from __future__ import annotations

import math
import time
from typing import Any

import optuna
from catboost import Pool
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.metrics import roc_auc_score

from tasks import tracking
from tasks.common import run_logger
from tasks.features import ModelTable
from tasks.settings import Settings
from tasks.train import fit_model, make_pool, predict_proba


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space."""
    return {
        "depth": trial.suggest_int("depth", 4, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
        "random_strength": trial.suggest_float("random_strength", 0.1, 3.0, log=True),
        "bagging_temperature": trial.suggest_float("bagging_temperature", 0.0, 1.0),
        "one_hot_max_size": trial.suggest_int("one_hot_max_size", 2, 12),
        "border_count": trial.suggest_categorical("border_count", [64, 128, 254]),
    }


class PruningCallback:
    """CatBoost callback that reports validation AUC to Optuna and stops a trial the pruner gives up on."""

    def __init__(self, trial: optuna.Trial, every: int = 25) -> None:
        self.trial, self.every, self.pruned = trial, every, False

    def after_iteration(self, info: Any) -> bool:
        step = info.iteration
        if step % self.every:
            return True
        auc = info.metrics.get("validation", {}).get("AUC")
        if not auc:
            return True
        self.trial.report(auc[-1], step)
        if self.trial.should_prune():
            self.pruned = True
            return False
        return True


def study_for(settings: Settings, study_name: str) -> optuna.Study:
    """Create or load the study in the configured storage (any SQLAlchemy URL; SQLite by default)."""
    storage = settings.study_storage
    if storage.startswith("sqlite:///"):
        from pathlib import Path

        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=min(5, settings.n_trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=100),
        load_if_exists=True,
    )


def objective_for(train: Pool, valid: Pool, valid_label: Any, settings: Settings, parent_run: str | None):
    """The objective: validation ROC-AUC of a model fitted on train (the test slice is never seen)."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        started = time.perf_counter()
        callback = PruningCallback(trial)
        model = fit_model(params, train, valid, settings, callbacks=[callback])
        auc = float(roc_auc_score(valid_label, predict_proba(model, valid)))
        seconds = time.perf_counter() - started
        if parent_run:
            child = tracking.start_run(
                settings, f"trial-{trial.number}", {"optuna.trial": str(trial.number)}, parent_run
            )
            tracking.log_params(settings, child, {**params, "best_iteration": model.get_best_iteration()})
            tracking.log_metrics(settings, child, {"valid_roc_auc": auc, "fit_seconds": seconds})
            tracking.end_run(settings, child, "KILLED" if callback.pruned else "FINISHED")
        if callback.pruned:
            raise optuna.TrialPruned(f"pruned at validation AUC {auc:.4f}")
        trial.set_user_attr("best_iteration", model.get_best_iteration())
        return auc

    return objective


def tune(
    train: ModelTable,
    valid: ModelTable,
    settings: Settings,
    study_name: str,
    parent_run: str | None = None,
) -> dict[str, Any]:
    """Run the study within the trial count and time budget; return the best params and a summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study_for(settings, study_name)
    objective = objective_for(make_pool(train), make_pool(valid), valid.label, settings, parent_run)
    study.optimize(
        objective, n_trials=settings.n_trials, timeout=settings.tune_timeout_seconds, gc_after_trial=True
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"tuning: no trial of study {study_name!r} completed")
    best = study.best_trial
    return {
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "best_trial": best.number,
        "n_complete": len(done),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "study_name": study_name,
        "storage": settings.study_storage.split("://")[0],
    }


@task(name="tune", cache_policy=NO_CACHE)
def tune_task(
    train: ModelTable, valid: ModelTable, settings: Settings, study_name: str, parent_run: str | None = None
) -> dict[str, Any]:
    """Prefect task: the Optuna study, summarised in the run log."""
    summary = tune(train, valid, settings, study_name, parent_run)
    run_logger().info(
        "tuning: best validation ROC-AUC %.4f (trial %d; %d complete, %d pruned) params %s",
        summary["best_value"], summary["best_trial"], summary["n_complete"], summary["n_pruned"], summary["best_params"],
    )  # fmt: skip
    if math.isnan(summary["best_value"]):
        raise RuntimeError("tuning produced a NaN objective")
    return summary
