"""The shared statistics (tasks/stats.py): PSI, binning and AUC/KS against computations by hand, and the
evaluation's stability report and the monitor's drift agreeing on the same data (one definition)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from tasks import stats
from tasks.model.credit import binned_shares, stability
from tasks.monitoring import drift

# --- PSI against a reference computation ---------------------------------------------------------------


def test_psi_matches_a_computation_by_hand() -> None:
    # (0.25-0.2)·ln(0.25/0.2) + (0.25-0.3)·ln(0.25/0.3) + 0 = 0.05·0.2231436 + 0.05·0.1823216
    assert stats.psi([0.2, 0.3, 0.5], [0.25, 0.25, 0.5]) == pytest.approx(0.0202732554, abs=1e-9)
    assert stats.psi([0.1, 0.9], [0.1, 0.9]) == 0.0


def test_psi_counts_an_empty_bin_as_epsilon() -> None:
    expected, actual, eps = [0.5, 0.5, 0.0], [0.4, 0.4, 0.2], 1e-4
    e, a = np.array([0.5, 0.5, eps]), np.array([0.4, 0.4, 0.2])
    reference = float(((a - e) * np.log(a / e)).sum())
    assert stats.psi(expected, actual) == pytest.approx(reference, rel=1e-12)
    assert math.isfinite(stats.psi([1.0, 0.0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="3 expected shares against 2"):
        stats.psi([0.2, 0.3, 0.5], [0.5, 0.5])


def test_numeric_bins_have_open_ends_and_a_missing_bucket() -> None:
    values = np.array([-5.0, 1.0, 1.5, 2.0, 3.0, np.nan, np.inf])
    assert stats.numeric_counts(values, [1.0, 2.0]).tolist() == [2, 2, 2, 1]
    assert stats.quantile_edges(np.arange(100, dtype=float), 4) == [24.75, 49.5, 74.25]
    # ties merge (a flag gives one cut), NaN is left out of the quantiles
    assert stats.quantile_edges(np.array([0.0, 0.0, 1.0, np.nan]), 10) == pytest.approx(
        [0, 0.2, 0.4, 0.6, 0.8]
    )
    assert stats.quantile_edges(np.array([np.nan]), 10) == []


def test_psi_against_a_reference_computation() -> None:
    rng = np.random.default_rng(3)
    train, test = rng.normal(0, 1, 5000), rng.normal(0.3, 1.2, 4000)
    # reference: decile edges of train, shares by np.histogram, the textbook sum
    edges = np.r_[-np.inf, np.quantile(train, np.linspace(0.1, 0.9, 9)), np.inf]
    e = np.histogram(train, edges)[0] / len(train)
    a = np.histogram(test, edges)[0] / len(test)
    reference = float(np.sum((a - e) * np.log(a / e)))
    got_e, got_a = binned_shares(train, test, 10)
    assert stats.psi(got_e, got_a) == pytest.approx(reference, rel=1e-9)
    assert stats.psi(*binned_shares(train, train, 10)) == 0.0
    # categories and missing values: a category of its own each
    cats = stats.psi(*binned_shares(pd.Series(["a", "a", "b", None]), pd.Series(["a", "b", "b", "b"])))
    ref = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.25) * math.log(0.75 / 0.25)
    ref += (1e-4 - 0.25) * math.log(1e-4 / 0.25)
    assert cats == pytest.approx(ref)


def test_auc_and_ks_match_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 3000)
    p = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 2)  # rounded: ties
    auc, ks = stats.auc_and_ks(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert ks == pytest.approx(ks_2samp(p[y == 1], p[y == 0]).statistic, rel=1e-12)
    assert all(math.isnan(v) for v in stats.auc_and_ks(np.ones(5), np.linspace(0, 1, 5)))


def test_training_stability_and_the_monitor_agree_on_the_same_data() -> None:
    """The score PSI evaluation reports and the one the monitor computes from a profile are one number."""
    rng = np.random.default_rng(11)
    train, later = rng.beta(2, 5, 4000), rng.beta(2.5, 4, 3000)
    trained = stability(train, later, pd.DataFrame({"x": train}), pd.DataFrame({"x": later}), bins=10)
    entry = drift.profile_entry(train, categorical=False, bins=10, top=10)
    monitored = drift.entry_drift(entry, list(later))["psi"]
    assert trained["score_psi"] == pytest.approx(monitored, rel=1e-12)
