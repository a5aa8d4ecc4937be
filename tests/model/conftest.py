"""A small real pipeline for the model tests: the synthetic sample, its model table and time split, and a CatBoost
model fitted by the pipeline's own code, with its raw probabilities on every slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from catboost import CatBoostClassifier

from serving.bundle import stamp_version
from tasks.data.validate import read_tables, validate_tables
from tasks.model.card import write_card
from tasks.model.evaluate import Evaluation, build_evaluation
from tasks.model.features import features_task
from tasks.model.package import assemble_bundle
from tasks.model.split import Split, split_by_time
from tasks.model.train import fit_model, make_pool, predict_proba
from tasks.settings import Settings

SCALE = 0.05


@dataclass
class Trained:
    settings: Settings
    split: Split
    model: CatBoostClassifier
    stats: dict
    p_train: np.ndarray
    p_valid: np.ndarray
    p_test: np.ndarray


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from tasks.data.sample import generate

    data = tmp_path_factory.mktemp("model-sample")
    generate(data, scale=SCALE, seed=11)
    s = Settings(state_dir=tmp_path_factory.mktemp("model-state"), max_iterations=200, thread_count=2)
    validated = validate_tables(read_tables(data), max_quarantine_share=0.01, quarantine_dir=s.quarantine_dir)
    table = features_task.fn(s, validated)
    split = split_by_time(table, s.data.split_fractions)
    model = fit_model(
        {"depth": 5, "learning_rate": 0.1}, make_pool(split.train), make_pool(split.valid), s.tuning
    )
    probabilities = (predict_proba(model, make_pool(part)) for part in (split.train, split.valid, split.test))
    return Trained(s, split, model, table.stats, *probabilities)


def package(trained: Trained, directory: Path, **overrides: object) -> tuple[Path, Evaluation]:
    """Evaluate and package the trained model as the pipeline does (settings ``overrides`` applied), version 7."""
    settings = trained.settings.model_copy(update=overrides)
    tuning = {"n_complete": 3, "n_pruned": 1, "best_value": 0.8, "best_params": {"depth": 5}}
    evaluation = build_evaluation(settings, trained.model, trained.split, tuning)
    data = {"source": "sample", "revision": None, "files": {"loan.csv": {"sha256": "ab" * 32, "size": 10}}}
    out = assemble_bundle(
        settings, directory, "run-1", trained.model, evaluation, trained.split, data, trained.stats
    )
    stamp_version(out, "7")
    write_card(out)
    return out, evaluation
