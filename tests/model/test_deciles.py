"""The decile table on the synthetic data: bad rates rise with the score, and the evaluation's figures agree with
scikit-learn and scipy on the same arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp, spearmanr
from sklearn.metrics import roc_auc_score

from tasks.model.credit import decile_table
from tasks.model.evaluate import summary_markdown
from tests.model.conftest import Trained, package


def test_bad_rates_rise_with_the_score(trained: Trained) -> None:
    y, p = trained.split.test.label, trained.p_test
    rows = decile_table(y, p)
    rates = np.array([r["bad_rate"] for r in rows])  # riskiest decile first
    counts = np.array([r["count"] for r in rows])
    # sampling noise of a decile's bad rate: allow an adjacent pair out of order by at most two standard errors
    se = np.sqrt(rates * (1 - rates) / counts + 1e-4)
    assert np.all(rates[1:] - rates[:-1] <= 2 * np.maximum(se[1:], se[:-1])), rates
    assert spearmanr(np.arange(len(rates)), rates).statistic <= -0.85, rates
    assert rates[0] > y.mean() > rates[-1] and rows[0]["lift"] > 1.3


def test_evaluation_ks_and_gini_match_the_references(trained: Trained, tmp_path: Path) -> None:
    _, evaluation = package(trained, tmp_path / "bundle", calibration_max_ece=1.0)
    m = evaluation.metrics
    for slice_, y, p in (
        ("valid", trained.split.valid.label, trained.p_valid),
        ("test", trained.split.test.label, trained.p_test),
    ):
        assert m[f"{slice_}_ks"] == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-12)
        assert m[f"{slice_}_gini"] == pytest.approx(2 * roc_auc_score(y, p) - 1, abs=1e-12)
        assert m[f"{slice_}_auc_ci_low"] < m[f"{slice_}_roc_auc"] < m[f"{slice_}_auc_ci_high"]
    deciles = evaluation.report["slices"]["test"]["deciles"]
    assert deciles == decile_table(trained.split.test.label, trained.p_test)
    segments = evaluation.report["slices"]["test"]["segments"]
    assert segments and all(r["count"] >= trained.settings.evaluation.segment_min_count for r in segments)
    assert {r["segment"] for r in segments} <= {"state", "leadType", "payFrequency"}
    assert len(evaluation.report["stability"]["feature_psi"]) == 10
    tuning = {"n_complete": 3, "n_pruned": 1, "best_value": 0.8, "best_params": {}}
    summary = summary_markdown(m, trained.split.boundaries, tuning, evaluation.report)
    for heading in (
        "## Metrics",
        "## Decile table",
        "## Calibration",
        "## Segments",
        "## Stability baseline",
    ):
        assert heading in summary
    assert f"| KS | {m['valid_ks']:.4f} | {m['test_ks']:.4f} |" in summary


def test_expected_cost_policy_is_recorded(trained: Trained, tmp_path: Path) -> None:
    _, evaluation = package(
        trained,
        tmp_path / "b",
        threshold_policy="expected_cost",
        cost_bad_approved=8.0,
        cost_good_declined=1.0,
    )
    policy = evaluation.report["policy"]
    assert policy["threshold_policy"] == "expected_cost" and policy["cost_bad_approved"] == 8.0
    assert policy["threshold"] == evaluation.metrics["threshold"]
    # a bad approved costs 8 goods declined: the threshold flags more than the F1 policy's
    _, f1 = package(trained, tmp_path / "c", calibration_max_ece=1.0)
    assert evaluation.metrics["test_positive_rate"] >= f1.metrics["test_positive_rate"]
