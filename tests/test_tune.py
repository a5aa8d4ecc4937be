"""Tuning (issue 9, items 6 and 8): the search space, each trial a line in the run log, the study's plots on
the training run, and the default budget."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from catboost import CatBoostClassifier
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from tasks.model.features import ModelTable
from tasks.model.split import split_by_time
from tasks.model.train import model_params
from tasks.model.tune import suggest_params, trial_line, tune
from tasks.registry import tracking
from tasks.settings import Settings


def space() -> dict[str, object]:
    """The distributions suggest_params asks for (recorded by a trial of a throwaway study)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    suggest_params(trial)
    return dict(trial.distributions)


def test_search_space_bounds() -> None:
    assert space() == {
        "depth": IntDistribution(4, 8),
        "learning_rate": FloatDistribution(0.02, 0.2, log=True),
        "l2_leaf_reg": FloatDistribution(1.0, 30.0, log=True),
        "random_strength": FloatDistribution(0.1, 3.0, log=True),
        "subsample": FloatDistribution(0.5, 1.0),
        "one_hot_max_size": IntDistribution(2, 12),
        "border_count": CategoricalDistribution([64, 128, 254]),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_searched_parameter_is_one_catboost_applies(seed: int, tmp_path: Path) -> None:
    """A parameter CatBoost ignores with the fixed settings (bagging_temperature under the default MVS bootstrap)
    would spend trials on nothing."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    params = suggest_params(study.ask())
    model = CatBoostClassifier(
        **{**model_params(params, Settings(state_dir=tmp_path).tuning), "iterations": 2}
    )
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.random(200), "b": rng.random(200), "c": rng.choice(list("pqrstu"), 200)})
    model.fit(x, (x["a"] > 0.5).astype(int), cat_features=["c"])
    applied = model.get_all_params()
    for name, value in params.items():
        assert applied.get(name) == pytest.approx(value, rel=1e-6), (
            f"{name}={value} is not applied: {applied.get(name)}"
        )


def frozen(
    number: int, state: TrialState, value: float | None, auc: float | None = None
) -> optuna.trial.FrozenTrial:
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"depth": 6},
        distributions={"depth": IntDistribution(4, 8)},
        user_attrs={"valid_roc_auc": auc} if auc is not None else {},
    )
    trial.number = number
    return trial


@pytest.mark.parametrize(
    ("trial", "best", "expected"),
    [
        (frozen(0, TrialState.COMPLETE, 0.81), frozen(0, TrialState.COMPLETE, 0.81),
         "trial 1/20 (#0) complete: validation ROC-AUC 0.8100; best 0.8100 (#0); 12.3 s"),
        (frozen(4, TrialState.PRUNED, None, 0.7712), frozen(2, TrialState.COMPLETE, 0.83),
         "trial 1/20 (#4) pruned: validation ROC-AUC 0.7712; best 0.8300 (#2); 12.3 s"),
        (frozen(1, TrialState.FAIL, None), None,
         "trial 1/20 (#1) fail: no value; no complete trial yet; 12.3 s"),
    ],
)  # fmt: skip
def test_trial_line(trial, best, expected) -> None:
    assert trial_line(1, 20, trial, best, 12.34) == expected


def small_split(n: int = 600):
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    raw = pd.DataFrame({"i": range(n)})
    features = pd.DataFrame({name: rng.normal(size=n) for name in ("a", "b")} | {"x": x})
    table = ModelTable(
        raw, features, (x + rng.normal(size=n) > 0).astype(np.int8),
        np.datetime64("2016-01-01") + np.arange(n).astype("timedelta64[h]"), [f"L{i}" for i in range(n)],
    )  # fmt: skip
    return split_by_time(table, (0.6, 0.2, 0.2))


def test_tuning_logs_each_trial_and_puts_the_study_plots_on_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tasks.model.train.CATEGORICAL_INDICES", ())
    s = Settings(state_dir=tmp_path, n_trials=4, max_iterations=40, early_stopping_rounds=10)
    with caplog.at_level(logging.INFO, logger="loan_risk"), tracking.run(s, "tune-test") as run_id:
        summary = tune(s, small_split(), "tune-test", run_id)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trial ")]
    assert len(lines) == 4, lines
    pattern = r"trial (\d)/4 \(#\d\) (complete|pruned): validation ROC-AUC 0\.\d{4}; best 0\.\d{4} \(#\d\); [\d.]+ s"
    assert [int(re.fullmatch(pattern, line).group(1)) for line in lines] == [1, 2, 3, 4]
    assert summary["n_complete"] + summary["n_pruned"] == 4
    artifacts = {a.path for a in tracking.client(s).list_artifacts(run_id, "tuning")}
    assert artifacts == {"tuning/optimization_history.png", "tuning/param_importances.png"}
    children = tracking.client(s).search_runs(
        [tracking.experiment_id(s)], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert len(children) == 4


def test_twenty_trials_by_default(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).tuning.n_trials == 20
