"""The evaluate stage's pure decisions (issue 9, item 6): the validation threshold, the metrics, the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.model.evaluate import choose_threshold, classification_metrics, evaluate, summary_markdown

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize(
    ("p", "min_precision", "min_recall", "expected", "why"),
    [
        (
            np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]),
            0.7,
            0.7,
            0.6,
            "separable: the cut between classes",
        ),
        # precision >= 0.75 and recall >= 0.75 only from 0.35 (P 0.8, R 1.0, F1 0.889) and 0.55 (P 1, R 0.75,
        # F1 0.857): the best F1 wins, not the highest precision
        (
            np.array([0.1, 0.2, 0.3, 0.6, 0.35, 0.55, 0.8, 0.9]),
            0.75,
            0.75,
            0.35,
            "best F1 among those allowed",
        ),
        # nothing meets both minimums: the balanced point (precision closest to recall)
        (np.array([0.9, 0.8, 0.2, 0.1, 0.85, 0.3, 0.25, 0.15]), 0.9, 0.9, 0.3, "fallback: balanced point"),
        # equal scores tie across classes: thresholds are the distinct scores, the tie moves together
        (np.array([0.5, 0.5, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9]), 0.6, 0.9, 0.5, "a tie crosses the classes"),
        # two thresholds with the same F1: the first (lowest) one, as argmax keeps the first maximum
        (np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9]), 0.5, 0.5, 0.4, "equal F1: the lower threshold"),
    ],
)
def test_choose_threshold(p, min_precision, min_recall, expected, why) -> None:
    assert choose_threshold(Y, p, min_precision, min_recall) == pytest.approx(expected), why


def test_metrics_at_the_threshold_and_with_one_class() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.35, 0.55, 0.8, 0.9])
    m = classification_metrics(Y, p, 0.35, "test")
    assert (m["test_precision"], m["test_recall"], m["test_positive_rate"]) == (0.8, 1.0, 0.625)
    assert m["test_f1"] == pytest.approx(2 * 0.8 / 1.8) and m["test_roc_auc"] == pytest.approx(14 / 16)
    one = classification_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]), 0.5, "valid")
    assert (
        math.isnan(one["valid_roc_auc"]) and math.isnan(one["valid_pr_auc"]) and one["valid_precision"] == 0.0
    )


def test_evaluate_chooses_on_validation_and_scores_test() -> None:
    p_valid = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    p_test = np.array([0.7, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9])
    m = evaluate(Y, p_valid, Y, p_test, 0.7, 0.7)
    assert m["threshold"] == 0.6 and m["valid_f1"] == 1.0
    assert m["test_recall"] == 0.75 and m["test_precision"] == 0.75


BOUNDARIES = {
    "train_start": "2015-01-01",
    "train_end": "2016-06-30",
    "valid_end": "2016-10-31",
    "test_start": "2016-11-01",
    "test_end": "2017-03-18",
    "n_train": 700,
    "n_valid": 150,
    "n_test": 150,
}
TUNING = {"n_complete": 8, "n_pruned": 12, "best_value": 0.83456, "best_params": {"depth": 6}}


def test_summary_markdown_renders_every_metric_and_n_a_for_missing() -> None:
    metrics = {"threshold": 0.41234, **{f"test_{k}": 0.5 for k in ("roc_auc", "pr_auc", "log_loss", "brier")}}
    metrics |= {"test_precision": 0.75, "test_recall": 0.8, "test_f1": 0.774, "valid_roc_auc": float("nan")}
    text = summary_markdown(metrics, BOUNDARIES, TUNING)
    assert "Decision threshold (chosen on validation): **0.4123**" in text
    assert "| roc_auc | n/a | 0.5000 |" in text and "| precision | n/a | 0.7500 |" in text
    assert text.count("\n| ") == 8  # the header and seven metric rows
    assert "Train 2015-01-01 → 2016-06-30 (700 loans); validation → 2016-10-31 (150)" in text
    assert "Tuning: 8 complete trials, 12 pruned; best validation ROC-AUC 0.8346 with `{'depth': 6}`." in text
