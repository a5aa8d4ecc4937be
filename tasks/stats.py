"""Quantile binning, PSI, ROC-AUC and KS, defined once for evaluation, the model card and drift.

Bins: inner cut points at the reference's finite quantiles, ``(-inf, e0], ..., (e_last, inf)``, then missing.
``y`` is 1 for a risky loan, ``p`` the probability of risky.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PSI_FLOOR = 1e-4  # a share is floored here before the log, so an empty bin adds a large but finite term


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner cut points at the ``bins``-quantiles of the finite values (ties merged); the outer bins are open."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])).tolist()


def numeric_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin ``(-inf, e0], (e0, e1], ..., (e_last, inf)``, then the missing (NaN) count."""
    missing = np.isnan(values)
    index = np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="left")
    return np.append(np.bincount(index, minlength=len(edges) + 1), int(missing.sum()))


def categorical_counts(values: Sequence[str | None], categories: Sequence[str]) -> np.ndarray:
    """Counts per category of ``categories``, then "other" (any other value), then missing (None)."""
    position = {c: i for i, c in enumerate(categories)}
    counts = np.zeros(len(categories) + 2, dtype=np.int64)
    for v in values:
        counts[-1 if v is None else position.get(v, len(categories))] += 1
    return counts


def shares(counts: np.ndarray) -> np.ndarray:
    """Counts as shares of their total (all zero when there is nothing)."""
    return counts / total if (total := counts.sum()) else np.zeros(len(counts))


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, floor: float = PSI_FLOOR
) -> float:
    """Population stability index ``Σ (a − e) · ln(a / e)`` over the same bins' shares, each floored at ``floor``."""
    e = np.maximum(np.asarray(expected, dtype=float), floor)
    a = np.maximum(np.asarray(actual, dtype=float), floor)
    if e.shape != a.shape:
        raise ValueError(f"psi: {len(e)} expected shares against {len(a)} actual ones")
    return float(np.sum((a - e) * np.log(a / e)))


def grouped(p: np.ndarray, weights: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of bads and goods per distinct score, ascending; ``weights`` is (n,) or (B, n) (bootstrap)."""
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    w = weights[..., order]
    bad = np.add.reduceat(w * y[order], starts, axis=-1)
    good = np.add.reduceat(w * (1 - y[order]), starts, axis=-1)
    return bad, good


def grouped_auc_ks(bad: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC (ties count half) and KS from the grouped weights (last axis: distinct scores ascending)."""
    n_bad, n_good = bad.sum(axis=-1), good.sum(axis=-1)
    good_below = np.cumsum(good, axis=-1) - good
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (bad * (good_below + 0.5 * good)).sum(axis=-1) / (n_bad * n_good)
        gap = np.cumsum(good, axis=-1) / n_good[..., None] - np.cumsum(bad, axis=-1) / n_bad[..., None]
    ks = np.abs(gap).max(axis=-1)
    return auc, ks


def auc_and_ks(y: Any, p: Any) -> tuple[float, float]:
    """ROC-AUC and KS; NaN when one class is absent."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    auc, ks = grouped_auc_ks(*grouped(p, np.ones_like(p), y))
    return float(auc), float(ks)
