"""Credit-grade metrics, pure vectorised functions on label and score arrays (``y`` 1 for a risky loan, ``p`` the
probability of risky): Gini, bootstrap intervals, deciles, calibration, stability, segments, cost threshold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from serving.calibration import Calibrator
from tasks import stats
from tasks.stats import auc_and_ks, psi


def gini(auc: float) -> float:
    """The Gini coefficient (accuracy ratio) of a score: 2·AUC − 1."""
    return 2.0 * auc - 1.0


def bootstrap_intervals(
    y: np.ndarray, p: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> dict[str, float]:
    """Seeded percentile bootstrap intervals of AUC and KS, resamples drawn as count weights; {} when ``samples``
    is 0 or a class is absent."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    n = len(y)
    if samples <= 0 or len(np.unique(y)) < 2:
        return {}
    rng = np.random.default_rng(seed)
    weights = np.empty((samples, n), dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # ~16 MB of indices at a time
    for start in range(0, samples, chunk):
        rows = min(chunk, samples - start)
        idx = rng.integers(0, n, size=(rows, n)) + np.arange(rows)[:, None] * n
        weights[start : start + rows] = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
    auc, ks = stats.grouped_auc_ks(*stats.grouped(p, weights, y))
    tail = (1.0 - level) / 2 * 100
    out: dict[str, float] = {}
    for name, values in (("auc", auc), ("ks", ks)):
        low, high = np.nanpercentile(values, [tail, 100 - tail])
        out |= {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}
    return out


def decile_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Rows of equal count by score, riskiest first, with bad rate, cumulative share of bads captured and lift."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    n = len(y)
    if n == 0:
        return []
    groups = np.array_split(np.argsort(-p, kind="stable"), min(bins, n))
    total_bad = y.sum()
    overall = total_bad / n
    rows, captured = [], 0.0
    for i, idx in enumerate(groups, start=1):
        bads = float(y[idx].sum())
        captured += bads
        rate = bads / len(idx)
        rows.append(
            {
                "decile": i,
                "min_score": float(p[idx].min()),
                "max_score": float(p[idx].max()),
                "count": len(idx),
                "bads": int(bads),
                "bad_rate": rate,
                "cum_bad_share": captured / total_bad if total_bad else float("nan"),
                "lift": rate / overall if overall else float("nan"),
            }
        )
    return rows


def calibration_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The reliability curve: equal-width probability bins (empty ones left out)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins)
    observed = np.bincount(which, weights=y, minlength=bins)
    return [
        {
            "low": i / bins,
            "high": (i + 1) / bins,
            "count": int(count[i]),
            "mean_predicted": float(mean_p[i] / count[i]),
            "observed": float(observed[i] / count[i]),
        }
        for i in range(bins)
        if count[i]
    ]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between predicted probability and observed risky share."""
    rows = calibration_bins(y, p, bins)
    n = sum(r["count"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["count"] * abs(r["mean_predicted"] - r["observed"]) for r in rows) / n)


def binned_shares(expected: Any, actual: Any, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Shares of ``expected`` and ``actual`` per bin: numbers by quantile bins of ``expected``, text by category
    (missing values a bin of their own)."""
    e, a = pd.Series(expected), pd.Series(actual)
    if pd.api.types.is_numeric_dtype(e) and pd.api.types.is_numeric_dtype(a):
        ev, av = e.to_numpy(dtype=float), a.to_numpy(dtype=float)
        edges = stats.quantile_edges(ev, bins)
        return stats.shares(stats.numeric_counts(ev, edges)), stats.shares(stats.numeric_counts(av, edges))
    et, at = ([None if pd.isna(v) else str(v) for v in s] for s in (e, a))
    categories = sorted({v for v in (*et, *at) if v is not None})
    shares = (stats.shares(stats.categorical_counts(t, categories)) for t in (et, at))
    return next(shares), next(shares)


def stability(
    train_scores: np.ndarray,
    test_scores: np.ndarray,
    train_features: pd.DataFrame,
    test_features: pd.DataFrame,
    bins: int = 10,
    top: int = 10,
) -> dict[str, Any]:
    """PSI of the score between train and test, and the ``top`` features whose PSI is largest (descending)."""
    features = {
        name: psi(*binned_shares(train_features[name], test_features[name], bins))
        for name in train_features.columns
    }
    ranked = sorted(features.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return {
        "score_psi": psi(*binned_shares(train_scores, test_scores, bins)),
        "feature_psi": [{"feature": k, "psi": v} for k, v in ranked],
    }


def segment_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, segments: Mapping[str, Any], min_count: int
) -> list[dict[str, Any]]:
    """Metrics per value of each segment column (``{"state": values, ...}``) with at least ``min_count`` loans."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    rows = []
    for column, values in segments.items():
        labels = pd.Series(values).astype(object).fillna("<missing>").to_numpy()
        for value in sorted(set(labels), key=str):
            mask = labels == value
            count = int(mask.sum())
            if count < min_count:
                continue
            auc, ks = auc_and_ks(y[mask], p[mask])
            rows.append(
                {
                    "segment": column,
                    "value": str(value),
                    "count": count,
                    "bad_rate": float(y[mask].mean()),
                    "mean_score": float(p[mask].mean()),
                    "flagged_share": float((p[mask] >= threshold).mean()),
                    "roc_auc": auc,
                    "ks": ks,
                }
            )
    return rows


def expected_cost_threshold(
    y: np.ndarray, p: np.ndarray, cost_bad_approved: float, cost_good_declined: float
) -> tuple[float, float]:
    """The threshold minimising ``cost_bad_approved · FN + cost_good_declined · FP`` and that cost per loan;
    candidates are the distinct scores and one above all (ties go to the lowest)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if len(p) == 0:
        raise ValueError("expected_cost_threshold: no scores")
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    # one above every score (flag nobody) last, so a tie with it goes to a real score
    candidates = np.r_[np.unique(ps), np.nextafter(ps[-1], math.inf)]
    # at candidate c the rows below c are approved: FN = bads below c, FP = goods at or above c
    below = np.searchsorted(ps, candidates, side="left")
    bads_below = np.r_[0.0, np.cumsum(ys)][below]
    goods_above = (len(ys) - ys.sum()) - (below - bads_below)
    cost = cost_bad_approved * bads_below + cost_good_declined * goods_above
    i = int(np.argmin(cost))
    return float(candidates[i]), float(cost[i] / len(ys))


def fit_calibrator(y: np.ndarray, p: np.ndarray, method: str) -> Calibrator:
    """Fit an ``isotonic`` or ``platt`` calibrator of ``p`` to ``y`` (scikit-learn fits, stored as plain numbers)."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibrator("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        z = Calibrator.logit(p).reshape(-1, 1)
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(z, y.astype(int))
        return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    raise ValueError(f"calibration method must be 'isotonic' or 'platt', got {method!r}")
