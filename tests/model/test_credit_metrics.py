"""The credit metrics (tasks/model/credit.py) against independent reference computations on the same arrays."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import confusion_matrix, roc_auc_score

from serving.calibration import Calibrator
from tasks.model.credit import (
    bootstrap_intervals,
    calibration_bins,
    decile_table,
    expected_calibration_error,
    expected_cost_threshold,
    fit_calibrator,
    gini,
    segment_metrics,
    stability,
)
from tasks.stats import auc_and_ks


def scores(n: int = 3000, seed: int = 0, rounded: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * y - 0.8)))
    return y, (np.round(p, 2) if rounded else p)


@pytest.mark.parametrize("rounded", [False, True], ids=["distinct-scores", "tied-scores"])
def test_auc_ks_and_gini_match_sklearn_and_scipy(rounded: bool) -> None:
    y, p = scores(rounded=rounded)
    auc, ks = auc_and_ks(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ks == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, abs=1e-12)
    assert gini(auc) == pytest.approx(2 * roc_auc_score(y, p) - 1, abs=1e-12)
    assert all(math.isnan(v) for v in auc_and_ks(np.zeros(5), np.linspace(0, 1, 5)))


def test_bootstrap_intervals_are_seeded_cover_the_estimate_and_narrow_with_more_data() -> None:
    y, p = scores(4000)
    auc, ks = auc_and_ks(y, p)
    ci = bootstrap_intervals(y, p, 200, seed=1)
    assert ci == bootstrap_intervals(y, p, 200, seed=1)
    assert ci["auc_ci_low"] < auc < ci["auc_ci_high"] and ci["ks_ci_low"] < ks < ci["ks_ci_high"]
    # the percentile interval of a resampled AUC: its width is ~ 2 * 1.96 * the AUC's standard error
    resampled = [roc_auc_score(y[i], p[i]) for i in np.random.default_rng(5).integers(0, 4000, (200, 4000))]
    width = ci["auc_ci_high"] - ci["auc_ci_low"]
    assert width == pytest.approx(2 * 1.96 * np.std(resampled), rel=0.25)
    small = bootstrap_intervals(y[:400], p[:400], 200, seed=1)
    assert small["auc_ci_high"] - small["auc_ci_low"] > width
    assert bootstrap_intervals(y, p, 0, seed=1) == {}


def test_decile_table_counts_rates_capture_and_lift() -> None:
    y, p = scores(1005)
    rows = decile_table(y, p)
    assert [r["decile"] for r in rows] == list(range(1, 11))
    assert sum(r["count"] for r in rows) == 1005 and {r["count"] for r in rows} <= {100, 101}
    assert sum(r["bads"] for r in rows) == y.sum() and rows[-1]["cum_bad_share"] == pytest.approx(1.0)
    assert all(a["min_score"] >= b["max_score"] for a, b in zip(rows, rows[1:], strict=False))
    top = np.argsort(-p, kind="stable")[: rows[0]["count"]]
    assert rows[0]["bad_rate"] == pytest.approx(y[top].mean())
    assert rows[0]["lift"] == pytest.approx(y[top].mean() / y.mean())


def test_ece_against_a_hand_computation() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.92, 0.55])
    # bins [0,.1): 0.05 vs 0; [.1,.2): 0.15 vs 0.5; [.5,.6): 0.55 vs 0; [.9,1]: 0.935 vs 1
    want = (1 * 0.05 + 2 * 0.35 + 1 * 0.55 + 2 * 0.065) / 6
    assert expected_calibration_error(y, p) == pytest.approx(want)
    assert [r["count"] for r in calibration_bins(y, p)] == [1, 2, 1, 2]


def test_stability_ranks_the_shifted_feature_first() -> None:
    rng = np.random.default_rng(4)
    train = pd.DataFrame({"same": rng.normal(size=2000), "moved": rng.normal(size=2000), "cat": ["x"] * 2000})
    test = pd.DataFrame({"same": rng.normal(size=2000), "moved": rng.normal(1, 1, 2000), "cat": ["x"] * 2000})
    out = stability(train["same"].to_numpy(), test["same"].to_numpy(), train, test, top=2)
    assert [r["feature"] for r in out["feature_psi"]] == ["moved", "same"]
    assert out["feature_psi"][0]["psi"] > 0.25 > out["score_psi"]


def test_segment_metrics_keep_segments_with_the_minimum_count() -> None:
    y, p = scores(600)
    state = np.array(["TX"] * 400 + ["CA"] * 150 + [None] * 50, dtype=object)
    rows = segment_metrics(y, p, 0.5, {"state": state}, min_count=100)
    assert [(r["value"], r["count"]) for r in rows] == [("CA", 150), ("TX", 400)]
    tx = rows[1]
    assert tx["roc_auc"] == pytest.approx(roc_auc_score(y[:400], p[:400]))
    assert tx["flagged_share"] == pytest.approx((p[:400] >= 0.5).mean())


@pytest.mark.parametrize(("c_fn", "c_fp"), [(5.0, 1.0), (1.0, 1.0), (1.0, 20.0), (1000.0, 1.0)])
def test_expected_cost_threshold_is_the_brute_force_minimum(c_fn: float, c_fp: float) -> None:
    y, p = scores(500, rounded=True)
    candidates = [*np.unique(p), 1.01]

    def cost(t: float) -> float:
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
        return c_fn * fn + c_fp * fp

    best = min(candidates, key=cost)  # min keeps the first (lowest) of equal costs
    threshold, per_loan = expected_cost_threshold(y, p, c_fn, c_fp)
    assert cost(threshold) == cost(best) and per_loan == pytest.approx(cost(best) / len(y))
    assert threshold == pytest.approx(best) or best == 1.01


def test_calibrators_match_scikit_learn_and_round_trip_as_plain_numbers() -> None:
    y, p = scores(2000)
    p = p**2  # badly calibrated
    iso = fit_calibrator(y, p, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    grid = np.r_[-0.1, np.linspace(0, 1, 1001), 1.1]
    assert np.abs(iso.apply(grid) - reference.predict(grid)).max() <= 1e-12
    platt = fit_calibrator(y, p, "platt")
    for c in (iso, platt):
        assert Calibrator.from_dict(c.to_dict()) == c
        assert expected_calibration_error(y, c.apply(p)) < expected_calibration_error(y, p)
    with pytest.raises(ValueError, match="method"):
        fit_calibrator(y, p, "beta")
    with pytest.raises(ValueError, match="ascending"):
        Calibrator("isotonic", x=[0.5, 0.1], y=[0.1, 0.2])
