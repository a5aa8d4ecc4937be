"""Metrics on the held-out future, a decision threshold chosen on validation, plots and a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from tasks.common import run_logger


def choose_threshold(y: np.ndarray, p: np.ndarray, min_precision: float, min_recall: float) -> float:
    """The validation threshold with the best F1 among those meeting both minimums.

    When no threshold meets both, the one where precision and recall are closest (the balanced point) is used,
    which is where both have the best chance to clear the promotion policy.
    """
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    ok = (precision >= min_precision) & (recall >= min_recall)
    if ok.any():
        i = int(np.argmax(np.where(ok, f1, -1.0)))
    else:
        i = int(np.argmin(np.abs(precision - recall)))
    return float(thresholds[i])


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float, prefix: str) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, Brier, and precision/recall/F1 at ``threshold``."""
    pred = (p >= threshold).astype(int)
    both_classes = len(np.unique(y)) == 2
    return {
        f"{prefix}_roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        f"{prefix}_pr_auc": float(average_precision_score(y, p)) if both_classes else float("nan"),
        f"{prefix}_log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        f"{prefix}_brier": float(brier_score_loss(y, p)),
        f"{prefix}_precision": float(precision_score(y, pred, zero_division=0)),
        f"{prefix}_recall": float(recall_score(y, pred, zero_division=0)),
        f"{prefix}_f1": float(f1_score(y, pred, zero_division=0)),
        f"{prefix}_positive_rate": float(pred.mean()),
    }


def evaluate(
    y_valid: np.ndarray,
    p_valid: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    min_precision: float,
    min_recall: float,
) -> dict[str, float]:
    """Threshold from validation, then validation and test metrics at that threshold."""
    threshold = choose_threshold(y_valid, p_valid, min_precision, min_recall)
    return {
        "threshold": threshold,
        **classification_metrics(y_valid, p_valid, threshold, "valid"),
        **classification_metrics(y_test, p_test, threshold, "test"),
    }


def save_plots(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    importances: list[tuple[str, float]],
    out_dir: Path,
) -> list[Path]:
    """ROC, PR, calibration, confusion-matrix and feature-importance plots of the test slice, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(rec, prec, label=f"AP {average_precision_score(y, p):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    ax.legend(loc="lower left")
    save(fig, "pr.png")

    frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(mean_pred, frac, "o-")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed risky share", title="Calibration (test)")
    save(fig, "calibration.png")

    cm = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["good", "risky"], yticklabels=["good", "risky"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion at {threshold:.3f}")
    save(fig, "confusion_matrix.png")

    top = sorted(importances, key=lambda kv: kv[1], reverse=True)[:25][::-1]
    fig, ax = plt.subplots(figsize=(6, 7))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(title="Feature importance (top 25)", xlabel="importance")
    save(fig, "feature_importance.png")
    return paths


def summary_markdown(metrics: dict[str, float], boundaries: dict[str, Any], tuning: dict[str, Any]) -> str:
    """A markdown summary of the run for the Prefect UI."""
    rows = "\n".join(
        f"| {name} | {metrics.get('valid_' + name, float('nan')):.4f} | {metrics['test_' + name]:.4f} |"
        for name in ("roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1")
    )
    return (
        "# Loan-risk model evaluation\n\n"
        f"Decision threshold (chosen on validation): **{metrics['threshold']:.4f}**\n\n"
        "| metric | validation | test |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Train {boundaries['train_start']} → {boundaries['train_end']} ({boundaries['n_train']} loans); "
        f"validation → {boundaries['valid_end']} ({boundaries['n_valid']}); "
        f"test {boundaries['test_start']} → {boundaries['test_end']} ({boundaries['n_test']}).\n\n"
        f"Tuning: {tuning['n_complete']} complete trials, {tuning['n_pruned']} pruned; best validation "
        f"ROC-AUC {tuning['best_value']:.4f} with `{tuning['best_params']}`.\n"
    )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    y_valid: np.ndarray,
    p_valid: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    min_precision: float,
    min_recall: float,
) -> dict[str, float]:
    """Prefect task: metrics at a validation-chosen threshold."""
    metrics = evaluate(y_valid, p_valid, y_test, p_test, min_precision, min_recall)
    run_logger().info(
        "test: ROC-AUC %.4f, PR-AUC %.4f, precision %.4f, recall %.4f, F1 %.4f at threshold %.4f",
        metrics["test_roc_auc"], metrics["test_pr_auc"], metrics["test_precision"],
        metrics["test_recall"], metrics["test_f1"], metrics["threshold"],
    )  # fmt: skip
    return metrics
