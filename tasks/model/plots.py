"""The evaluation's plots, as matplotlib figures by file name."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def credit_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """The card's plots as PNG bytes: reliability (validation before and after calibration, test) and test decile
    bad rates."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    curves = [("valid_uncalibrated", "validation (model)"), ("valid", "validation"), ("test", "test")]
    if not report["policy"]["calibration"]["applied"]:
        curves = curves[1:]
    for key, label in curves:
        bins = report["slices"][key]["calibration"] if key != "valid_uncalibrated" else report["uncalibrated"]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed risky share", title="Reliability")
    ax.legend(loc="upper left")
    figures = {"reliability.png": fig}
    rows = report["slices"]["test"]["deciles"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(r["decile"]) for r in rows], [r["bad_rate"] for r in rows])
    ax.set(xlabel="score decile (1 = riskiest)", ylabel="bad rate", title="Bad rate by decile (test)")
    figures["deciles.png"] = fig
    plots = {}
    for name, fig in figures.items():
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        plots[name] = buffer.getvalue()
    return plots


def evaluation_figures(
    y: np.ndarray, p: np.ndarray, threshold: float, importances: list[tuple[str, float]]
) -> dict[str, Any]:
    """ROC, PR, confusion-matrix and feature-importance plots of the test slice (scikit-learn's displays)."""
    plt = _pyplot()
    roc = RocCurveDisplay.from_predictions(y, p, name="test", plot_chance_level=True)
    pr = PrecisionRecallDisplay.from_predictions(y, p, name="test")
    flagged = (p >= threshold).astype(int)
    cm = ConfusionMatrixDisplay.from_predictions(y, flagged, labels=[0, 1], display_labels=["good", "risky"])
    roc.ax_.set_title("ROC (test)")
    pr.ax_.set_title("Precision-recall (test)")
    cm.ax_.set_title(f"Confusion at {threshold:.3f}")
    top = sorted(importances, key=lambda kv: kv[1], reverse=True)[:25][::-1]
    fig, ax = plt.subplots(figsize=(6, 7))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(title="Feature importance (top 25)", xlabel="importance")
    figures = {"roc.png": roc.figure_, "pr.png": pr.figure_, "confusion_matrix.png": cm.figure_}
    figures["feature_importance.png"] = fig
    for fig in figures.values():
        fig.tight_layout()
    return figures
