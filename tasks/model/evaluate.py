"""Metrics on the held-out future, a threshold chosen on validation, and the report the bundle carries
(``evaluation.json``, the card's source); past ``calibration_max_ece`` all is on calibrated scores, as served."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from catboost import CatBoostClassifier
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from serving.calibration import Calibrator
from tasks import stats
from tasks.common import run_logger, stage
from tasks.model import credit
from tasks.model.card import evaluation_markdown, num
from tasks.model.split import Split
from tasks.model.train import make_pool, predict_proba
from tasks.registry import tracking
from tasks.settings import EvaluationSettings, Settings

SEGMENT_COLUMNS = ("state", "leadType", "payFrequency")


def choose_threshold(y: np.ndarray, p: np.ndarray, min_precision: float, min_recall: float) -> float:
    """The validation threshold with the best F1 among those meeting both minimums, else the one where precision
    and recall are closest (where both have the best chance to clear the promotion policy)."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    ok = (precision >= min_precision) & (recall >= min_recall)
    i = np.argmax(np.where(ok, f1, -1.0)) if ok.any() else np.argmin(np.abs(precision - recall))
    return float(thresholds[int(i)])


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


def decide_threshold(
    evaluation: EvaluationSettings, min_precision: float, min_recall: float, y: np.ndarray, p: np.ndarray
) -> tuple[float, dict[str, Any]]:
    """The validation threshold by ``threshold_policy``, and the record of the policy and its inputs."""
    if evaluation.threshold_policy == "expected_cost":
        costs = {k: getattr(evaluation, k) for k in ("cost_bad_approved", "cost_good_declined")}
        threshold, cost = credit.expected_cost_threshold(y, p, *costs.values())
        record = {"threshold_policy": "expected_cost", **costs, "valid_cost_per_loan": cost}
    else:
        threshold = choose_threshold(y, p, min_precision, min_recall)
        record = {"threshold_policy": "f1", "min_precision": min_precision, "min_recall": min_recall}
    return threshold, {**record, "threshold": threshold}


def evaluate(
    y_valid: np.ndarray,
    p_valid: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    min_precision: float,
    min_recall: float,
    threshold: float | None = None,
) -> dict[str, float]:
    """Threshold from validation (unless given), then validation and test metrics at that threshold."""
    if threshold is None:
        threshold = choose_threshold(y_valid, p_valid, min_precision, min_recall)
    return {
        "threshold": threshold,
        **classification_metrics(y_valid, p_valid, threshold, "valid"),
        **classification_metrics(y_test, p_test, threshold, "test"),
    }


def calibrate(
    evaluation: EvaluationSettings, y_valid: np.ndarray, p_valid: np.ndarray
) -> tuple[Calibrator | None, dict[str, Any]]:
    """A calibrator fitted on validation when its ECE exceeds ``calibration_max_ece`` (else None), and the record."""
    ece = credit.expected_calibration_error(y_valid, p_valid)
    record: dict[str, Any] = {
        "method": evaluation.calibration_method,
        "max_ece": evaluation.calibration_max_ece,
        "valid_ece_uncalibrated": ece,
        "applied": bool(ece > evaluation.calibration_max_ece),
    }
    if not record["applied"]:
        return None, record
    calibrator = credit.fit_calibrator(y_valid, p_valid, evaluation.calibration_method)
    record["valid_ece_calibrated"] = credit.expected_calibration_error(y_valid, calibrator.apply(p_valid))
    return calibrator, record


METRIC_ROWS = ("roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1")


def summary_markdown(
    metrics: dict[str, float],
    boundaries: dict[str, Any],
    tuning: dict[str, Any],
    report: dict[str, Any] | None = None,
) -> str:
    """A markdown summary of the run for the Prefect UI, with the evaluation report's tables when given."""
    cell = lambda key: num(metrics.get(key))  # noqa: E731
    rows = "\n".join(f"| {n} | {cell(f'valid_{n}')} | {cell(f'test_{n}')} |" for n in METRIC_ROWS)
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
    ) + (f"\n{evaluation_markdown(report)}" if report else "")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def credit_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """The card's plots as PNG bytes: reliability (before and after calibration) and test decile bad rates."""
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


@dataclass
class Evaluation:
    """What the evaluate stage established; probabilities are as served (calibrated when a calibrator is)."""

    metrics: dict[str, float]
    test_probabilities: np.ndarray
    valid_probabilities: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    calibrator: Calibrator | None = None
    report: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, bytes] = field(default_factory=dict)


def build_evaluation(
    settings: Settings, model: CatBoostClassifier, split: Split, tuning: dict[str, Any]
) -> Evaluation:
    """Everything the evaluate stage establishes, without logging it: calibrate (when needed), choose the
    threshold, compute every metric, the report and its plots (all after calibration on calibrated scores)."""
    ev, floors = settings.evaluation, (settings.registry.min_precision, settings.registry.min_recall)
    y_valid, y_test = split.valid.label, split.test.label
    p_train, p_valid, p_test = (
        predict_proba(model, make_pool(t)) for t in (split.train, split.valid, split.test)
    )
    calibrator, calibration = calibrate(ev, y_valid, p_valid)
    uncalibrated = credit.calibration_bins(y_valid, p_valid)
    if calibrator is not None:
        p_train, p_valid, p_test = (calibrator.apply(p) for p in (p_train, p_valid, p_test))
    threshold, policy = decide_threshold(ev, *floors, y_valid, p_valid)
    metrics = evaluate(y_valid, p_valid, y_test, p_test, *floors, threshold)
    slices = {}
    for prefix, table, p in (("valid", split.valid, p_valid), ("test", split.test, p_test)):
        y, raw = table.label, table.raw
        auc, ks = stats.auc_and_ks(y, p)
        metrics |= {f"{prefix}_ks": ks, f"{prefix}_gini": credit.gini(auc)}
        metrics[f"{prefix}_ece"] = credit.expected_calibration_error(y, p)
        intervals = credit.bootstrap_intervals(y, p, ev.bootstrap_samples, settings.tuning.seed)
        metrics |= {f"{prefix}_{k}": v for k, v in intervals.items()}
        segments = {c: raw[c].to_numpy() for c in SEGMENT_COLUMNS if c in raw}
        slices[prefix] = {
            "deciles": credit.decile_table(y, p),
            "calibration": credit.calibration_bins(y, p),
            "segments": credit.segment_metrics(y, p, threshold, segments, ev.segment_min_count),
        }
    stability = credit.stability(p_train, p_test, split.train.features, split.test.features, ev.psi_bins)
    metrics["score_psi"] = stability["score_psi"]
    metrics |= {f"psi_{row['feature']}": row["psi"] for row in stability["feature_psi"]}
    report = {
        "policy": {**policy, "label_policy": settings.data.label_policy, "calibration": calibration},
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("psi_")},
        "slices": slices,
        "uncalibrated": uncalibrated,
        "stability": stability,
        "settings": {k: getattr(ev, k) for k in ("bootstrap_samples", "segment_min_count", "psi_bins")},
    }
    metrics["best_iteration"] = float(model.get_best_iteration() or 0)
    report["training"] = {k: tuning.get(k) for k in ("n_complete", "n_pruned", "best_value")}
    params = {**tuning["best_params"], "best_iteration": model.get_best_iteration()}
    return Evaluation(metrics, p_test, p_valid, params, calibrator, report, credit_plots(report))


@stage("evaluate")
def evaluate_task(
    settings: Settings,
    model: CatBoostClassifier,
    split: Split,
    tuning: dict[str, Any],
    run_id: str | None = None,
) -> Evaluation:
    """Stage: :func:`build_evaluation`, logged with the plots on ``run_id``; a summary artifact."""
    from prefect.artifacts import create_markdown_artifact

    evaluation = build_evaluation(settings, model, split, tuning)
    metrics, policy = evaluation.metrics, evaluation.report["policy"]
    shown = [metrics[f"test_{k}"] for k in ("roc_auc", "ks", "pr_auc", "precision", "recall", "f1")]
    shown += [metrics["threshold"], policy["threshold_policy"]]
    shown.append(evaluation.calibrator.method if evaluation.calibrator else "no")
    message = "test: ROC-AUC %.4f, KS %.4f, PR-AUC %.4f, precision %.4f, recall %.4f, F1 %.4f at threshold"
    run_logger().info(message + " %.4f (%s); calibrated: %s", *shown)
    if run_id:
        tracking.log_metrics(settings, run_id, {**metrics, "tuning_best_valid_roc_auc": tuning["best_value"]})
        flat = {f"policy.{k}": v for k, v in policy.items() if k != "calibration"}
        flat |= {f"policy.calibration.{k}": v for k, v in policy["calibration"].items()}
        tracking.log_params(settings, run_id, flat)
        tracking.log_dict(settings, run_id, evaluation.report, "evaluation.json")
        tracking.log_bytes(settings, run_id, evaluation.plots, "plots")
        importances = list(zip(split.train.features.columns, model.get_feature_importance(), strict=True))
        y, p, threshold = split.test.label, evaluation.test_probabilities, metrics["threshold"]
        tracking.log_figures(settings, run_id, evaluation_figures(y, p, threshold, importances), "plots")
    create_markdown_artifact(
        key="evaluation-summary",
        markdown=summary_markdown(metrics, split.boundaries, tuning, evaluation.report),
        description="Test metrics of the newly trained loan-risk model",
    )
    return evaluation
