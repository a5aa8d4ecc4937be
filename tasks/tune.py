"""Optuna search over CatBoost parameters, on the validation slice only, every trial an MLflow child run.

Each finished or pruned trial is a line in the run log (n/N, its value, the best so far, the time spent), and the
study's optimisation history and parameter importances are plots on the training run (``tuning/``).
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from catboost import Pool
from optuna.trial import FrozenTrial, TrialState
from sklearn.metrics import roc_auc_score

from tasks import tracking
from tasks.common import run_logger, stage
from tasks.settings import Settings
from tasks.split import Split
from tasks.train import fit_model, make_pool, predict_proba

PRUNE_EVERY = 25  # iterations between the validation AUCs reported to the pruner


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space. Every parameter is one CatBoost honours with its defaults (MVS bootstrap: ``subsample``;
    ``bagging_temperature`` would apply to the Bayesian bootstrap only and be ignored)."""
    return {
        "depth": trial.suggest_int("depth", 4, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "l2_leaf_reg": trial.suggest_float("l2_leaf_reg", 1.0, 30.0, log=True),
        "random_strength": trial.suggest_float("random_strength", 0.1, 3.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "one_hot_max_size": trial.suggest_int("one_hot_max_size", 2, 12),
        "border_count": trial.suggest_categorical("border_count", [64, 128, 254]),
    }


class PruningCallback:
    """CatBoost callback that reports validation AUC to Optuna and stops a trial the pruner gives up on."""

    def __init__(self, trial: optuna.Trial, every: int = PRUNE_EVERY) -> None:
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
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=min(5, settings.n_trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=100),
        load_if_exists=True,
    )


def objective_for(
    train: Pool, valid: Pool, valid_label: Any, settings: Settings, run_id: str | None
) -> Callable[[optuna.Trial], float]:
    """The objective: validation ROC-AUC of a model fitted on train (the test slice is never seen)."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        started = time.perf_counter()
        callback = PruningCallback(trial)
        model = fit_model(params, train, valid, settings, callbacks=[callback])
        auc = float(roc_auc_score(valid_label, predict_proba(model, valid)))
        trial.set_user_attr("valid_roc_auc", auc)
        trial.set_user_attr("best_iteration", model.get_best_iteration())
        if run_id:
            tracking.log_child_run(
                settings,
                run_id,
                f"trial-{trial.number}",
                {**params, "best_iteration": model.get_best_iteration()},
                {"valid_roc_auc": auc, "fit_seconds": time.perf_counter() - started},
                {"optuna.trial": str(trial.number)},
                status="KILLED" if callback.pruned else "FINISHED",
            )
        if callback.pruned:
            raise optuna.TrialPruned(f"pruned at validation AUC {auc:.4f}")
        return auc

    return objective


def trial_line(done: int, total: int, trial: FrozenTrial, best: FrozenTrial | None, elapsed_s: float) -> str:
    """The log line of a finished trial: ``trial 3/20 (#2) pruned: validation ROC-AUC 0.8123; best 0.8355
    (#1); 42.1 s``."""
    value = trial.value if trial.state == TrialState.COMPLETE else trial.user_attrs.get("valid_roc_auc")
    shown = f"validation ROC-AUC {value:.4f}" if value is not None else "no value"
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(
        trial.state, trial.state.name.lower()
    )
    best_text = f"best {best.value:.4f} (#{best.number})" if best is not None else "no complete trial yet"
    return f"trial {done}/{total} (#{trial.number}) {state}: {shown}; {best_text}; {elapsed_s:.1f} s"


class TrialLog:
    """Optuna callback: a run-log line per finished trial (see :func:`trial_line`)."""

    def __init__(self, total: int, log: Callable[[str], None]) -> None:
        self.total, self.log, self.done, self.started = total, log, 0, time.perf_counter()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.done += 1
        try:
            best: FrozenTrial | None = study.best_trial
        except ValueError:  # no complete trial yet
            best = None
        self.log(trial_line(self.done, self.total, trial, best, time.perf_counter() - self.started))


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """The study's optimisation history and parameter importances as matplotlib figures (importances need two
    complete trials; fewer give the history alone)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as optuna_plots

    figures: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        figures["optimization_history.png"] = optuna_plots.plot_optimization_history(study).figure
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if len(complete) >= 2:
            figures["param_importances.png"] = optuna_plots.plot_param_importances(study).figure
    for fig in figures.values():
        fig.set_size_inches(7, 5)
        fig.tight_layout()
    return figures


def tune(settings: Settings, split: Split, study_name: str, run_id: str | None = None) -> dict[str, Any]:
    """Run the study within the trial count and time budget; return the best params and a summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study_for(settings, study_name)
    objective = objective_for(
        make_pool(split.train), make_pool(split.valid), split.valid.label, settings, run_id
    )
    study.optimize(
        objective,
        n_trials=settings.n_trials,
        timeout=settings.tune_timeout_seconds,
        gc_after_trial=True,
        callbacks=[TrialLog(settings.n_trials, run_logger().info)],
    )
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"tuning: no trial of study {study_name!r} completed")
    best = study.best_trial
    if math.isnan(best.value):
        raise RuntimeError("tuning produced a NaN objective")
    if run_id:
        tracking.log_figures(settings, run_id, study_figures(study), "tuning")
    return {
        "best_params": dict(best.params),
        "best_value": float(best.value),
        "best_trial": best.number,
        "n_complete": len(done),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "study_name": study_name,
        "storage": settings.study_storage.split("://")[0],
    }


@stage("tune")
def tune_task(settings: Settings, split: Split, run_id: str | None = None) -> dict[str, Any]:
    """Stage: the Optuna study (one per training run unless ``optuna_study_name`` shares one), its best
    parameters recorded on ``run_id``."""
    study_name = settings.optuna_study_name or f"{settings.model_name}-{run_id or uuid.uuid4().hex}"
    summary = tune(settings, split, study_name, run_id)
    run_logger().info(
        "tuning: best validation ROC-AUC %.4f (trial %d; %d complete, %d pruned) params %s",
        summary["best_value"],
        summary["best_trial"],
        summary["n_complete"],
        summary["n_pruned"],
        summary["best_params"],
    )
    if run_id:
        tracking.log_params(settings, run_id, {f"best.{k}": v for k, v in summary["best_params"].items()})
    return summary
