"""Fit CatBoost on the train slice with early stopping on the validation slice."""

from __future__ import annotations

from typing import Any

import numpy as np
from catboost import CatBoostClassifier, Pool

from serving.features import CATEGORICAL_INDICES
from tasks.common import run_logger, stage
from tasks.model.features import ModelTable
from tasks.model.split import Split
from tasks.settings import Settings, TuningSettings

FIXED_PARAMS: dict[str, Any] = {
    "loss_function": "Logloss",
    "eval_metric": "AUC",
    "allow_writing_files": False,
}


def make_pool(table: ModelTable) -> Pool:
    """A CatBoost pool from the model rows."""
    return Pool(table.features, label=table.label, cat_features=list(CATEGORICAL_INDICES))


def model_params(params: dict[str, Any], tuning: TuningSettings) -> dict[str, Any]:
    """Tuned parameters over the fixed ones (and the monotone constraints, by feature name, when set)."""
    fixed = FIXED_PARAMS | {
        "verbose": False,
        "iterations": tuning.max_iterations,
        "early_stopping_rounds": tuning.early_stopping_rounds,
        "random_seed": tuning.seed,
        "thread_count": tuning.thread_count,
        "max_ctr_complexity": tuning.max_ctr_complexity,
    }
    if tuning.monotone_constraints:
        fixed["monotone_constraints"] = dict(tuning.monotone_constraints)
    return fixed | params


def fit_model(
    params: dict[str, Any],
    train: Pool,
    valid: Pool,
    tuning: TuningSettings,
    callbacks: list[Any] | None = None,
) -> CatBoostClassifier:
    """Fit with early stopping on ``valid``; the best iteration is kept."""
    model = CatBoostClassifier(**model_params(params, tuning))
    model.fit(train, eval_set=valid, use_best_model=True, callbacks=callbacks)
    return model


def predict_proba(model: CatBoostClassifier, pool: Pool) -> np.ndarray:
    """Probability of the risky class."""
    return model.predict(pool, prediction_type="Probability")[:, 1]


@stage("train")
def train_task(settings: Settings, split: Split, best_params: dict[str, Any]) -> CatBoostClassifier:
    """Stage: the final model with the best parameters, early-stopped on the validation slice."""
    model = fit_model(best_params, make_pool(split.train), make_pool(split.valid), settings.tuning)
    message = "final model: %d trees (best iteration %s)"
    run_logger().info(message, model.tree_count_, model.get_best_iteration())
    return model
