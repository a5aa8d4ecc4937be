"""Metrics on the held-out future, a decision threshold chosen on validation, plots and a summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from catboost import CatBoostClassifier
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

from tasks import tracking
from tasks.common import run_logger, stage
from tasks.settings import Settings
from tasks.split import Split
from tasks.train import make_pool, predict_proba


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


def evaluation_figures(
    y: np.ndarray, p: np.ndarray, threshold: float, importances: list[tuple[str, float]]
) -> dict[str, Any]:
    """ROC, PR, calibration, confusion-matrix and feature-importance plots of the test slice (matplotlib figures
    by file name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    figures: dict[str, Any] = {}

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    figures["roc.png"] = fig

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(rec, prec, label=f"AP {average_precision_score(y, p):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    ax.legend(loc="lower left")
    figures["pr.png"] = fig

    frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(mean_pred, frac, "o-")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed risky share", title="Calibration (test)")
    figures["calibration.png"] = fig

    cm = confusion_matrix(y, (p >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["good", "risky"], yticklabels=["good", "risky"])
    ax.set(xlabel="predicted", ylabel="actual", title=f"Confusion at {threshold:.3f}")
    figures["confusion_matrix.png"] = fig

    top = sorted(importances, key=lambda kv: kv[1], reverse=True)[:25][::-1]
    fig, ax = plt.subplots(figsize=(6, 7))
    ax.barh([k for k, _ in top], [v for _, v in top])
    ax.set(title="Feature importance (top 25)", xlabel="importance")
    figures["feature_importance.png"] = fig
    for fig in figures.values():
        fig.tight_layout()
    return figures


METRIC_ROWS = ("roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1")


def summary_markdown(metrics: dict[str, float], boundaries: dict[str, Any], tuning: dict[str, Any]) -> str:
    """A markdown summary of the run for the Prefect UI (a metric missing on one side shows as n/a)."""

    def cell(key: str) -> str:
        value = metrics.get(key)
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"

    rows = "\n".join(f"| {name} | {cell('valid_' + name)} | {cell('test_' + name)} |" for name in METRIC_ROWS)
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


@dataclass
class Evaluation:
    """What the evaluate stage established: the metrics (threshold included), the test slice's probabilities
    (for the bundle's reference sample) and the parameters the model was trained with."""

    metrics: dict[str, float]
    test_probabilities: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


@stage("evaluate")
def evaluate_task(
    settings: Settings,
    model: CatBoostClassifier,
    split: Split,
    tuning: dict[str, Any],
    run_id: str | None = None,
) -> Evaluation:
    """Stage: metrics at a validation-chosen threshold, logged with the plots on ``run_id``; a summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    p_valid = predict_proba(model, make_pool(split.valid))
    p_test = predict_proba(model, make_pool(split.test))
    metrics = evaluate(
        split.valid.label, p_valid, split.test.label, p_test, settings.min_precision, settings.min_recall
    )
    metrics["best_iteration"] = float(model.get_best_iteration() or 0)
    run_logger().info(
        "test: ROC-AUC %.4f, PR-AUC %.4f, precision %.4f, recall %.4f, F1 %.4f at threshold %.4f",
        metrics["test_roc_auc"],
        metrics["test_pr_auc"],
        metrics["test_precision"],
        metrics["test_recall"],
        metrics["test_f1"],
        metrics["threshold"],
    )
    if run_id:
        tracking.log_metrics(settings, run_id, {**metrics, "tuning_best_valid_roc_auc": tuning["best_value"]})
        importances = list(zip(split.train.features.columns, model.get_feature_importance(), strict=True))
        figures = evaluation_figures(split.test.label, p_test, metrics["threshold"], importances)
        tracking.log_figures(settings, run_id, figures, "plots")
    create_markdown_artifact(
        key="evaluation-summary",
        markdown=summary_markdown(metrics, split.boundaries, tuning),
        description="Test metrics of the newly trained loan-risk model",
    )
    params = {**tuning["best_params"], "best_iteration": model.get_best_iteration()}
    return Evaluation(metrics, p_test, params)
