"""Monotone constraints (``monotone_constraints`` setting): the trained model respects them, by behaviour.

The model is trained through the pipeline's own ``fit_model`` on the synthetic sample; then each constrained
feature is swept over its observed range on many real records, all else held: the risk never moves against the
constraint. Without the constraint the same sweep does move against it (the sample's risk is not monotone in
``loanAmount`` once the other fields are held), so the test can tell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catboost import Pool

from serving.features import CATEGORICAL_INDICES, FEATURE_NAMES
from tasks.data.validate import read_tables, validate_tables
from tasks.model.features import build_model_table
from tasks.model.split import split_by_time
from tasks.model.train import fit_model, make_pool, model_params
from tasks.settings import Settings

CONSTRAINTS = {"apr": 1, "nPaidOff": -1, "loanAmount": -1, "clearfraudscore": -1}
RECORDS = 150
STEPS = 25


@pytest.fixture(scope="module")
def split(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = Settings(state_dir=tmp_path_factory.mktemp("monotone-state"))
    tables = validate_tables(
        read_tables(sample_dir), max_quarantine_share=0.01, quarantine_dir=s.quarantine_dir
    ).tables
    bad, good = s.data.label_statuses()
    return split_by_time(
        build_model_table(tables["loan"], tables["clarity"], bad, good), s.data.split_fractions
    )


def train(split: Any, tmp: Path, constraints: dict[str, int]) -> Any:
    s = Settings(state_dir=tmp, max_iterations=150, monotone_constraints=constraints, thread_count=2)
    return fit_model(
        {"depth": 6, "learning_rate": 0.1}, make_pool(split.train), make_pool(split.valid), s.tuning
    )


def worst_violation(model: Any, split: Any, feature: str, direction: int) -> float:
    """The largest step against ``direction`` of the predicted probability while ``feature`` sweeps its range."""
    frame = split.test.features.iloc[:RECORDS].reset_index(drop=True)
    n = len(frame)
    values = split.train.features[feature].dropna()
    grid = np.linspace(values.quantile(0.01), values.quantile(0.99), STEPS)
    swept = frame.loc[frame.index.repeat(STEPS)].reset_index(drop=True)
    swept[feature] = np.tile(grid, n)
    pool = Pool(swept[list(FEATURE_NAMES)], cat_features=list(CATEGORICAL_INDICES))
    p = model.predict(pool, prediction_type="Probability")[:, 1].reshape(n, STEPS)
    steps = np.diff(p, axis=1) * direction
    return float(max(0.0, -steps.min()))


def test_constraints_reach_catboost_and_unconstrained_stays_free(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, monotone_constraints={"apr": 1})
    assert model_params({}, s.tuning)["monotone_constraints"] == {"apr": 1}
    assert "monotone_constraints" not in model_params({}, Settings(state_dir=tmp_path).tuning)


def test_the_trained_model_respects_its_constraints(split: Any, tmp_path: Path) -> None:
    free = train(split, tmp_path / "free", {})
    bound = train(split, tmp_path / "bound", CONSTRAINTS)
    free_violations = {f: worst_violation(free, split, f, d) for f, d in CONSTRAINTS.items()}
    assert max(free_violations.values()) > 1e-4, f"the sweep cannot tell: {free_violations}"
    for feature, direction in CONSTRAINTS.items():
        assert worst_violation(bound, split, feature, direction) <= 1e-12, feature
