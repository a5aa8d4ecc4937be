"""The tree sum (serving/trees.py) gives CatBoost's probabilities to the last bit, or stands aside."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catboost import Pool

from serving import trees
from serving.bundle import ROWS_BELOW, Bundle, load_bundle
from serving.features import CATEGORICAL_INDICES, build_row, build_rows
from serving.trees import TreeSum, model_document

CATEGORICAL = list(CATEGORICAL_INDICES)


def catboost(bundle: Bundle, rows: list[list[Any]]) -> np.ndarray:
    pool = Pool(rows, cat_features=CATEGORICAL)
    return bundle.model.predict(pool, prediction_type="Probability")[:, 1]


def in_fives(tree_sum: TreeSum, rows: list[list[Any]]) -> np.ndarray:
    return np.concatenate([tree_sum.probabilities(rows[i : i + 5]) for i in range(0, len(rows), 5)])


def borders(bundle: Bundle) -> dict[int, list[float]]:
    """Each float feature's split borders (model column -> borders), from the model's JSON export."""
    info = model_document(bundle.model)["features_info"]
    return {f["flat_feature_index"]: f.get("borders") or [] for f in info["float_features"]}


def odd_rows(bundle: Bundle, records: list[dict[str, Any]], n: int = 1500) -> list[list[Any]]:
    """Rows of the records with values CatBoost must be matched on: missing numbers, categories it never saw,
    numbers on a border and one float32 step either side of it, scaled numbers, numbers beyond float32's
    range, categories swapped between rows."""
    rng = random.Random(7)
    base, edges = build_rows(records), borders(bundle)
    out = []
    for i in range(n):
        row = list(base[i % len(base)])
        for j in range(len(row)):
            u = rng.random()
            if j in CATEGORICAL_INDICES:
                if u < 0.1:
                    row[j] = f"never-seen-{rng.randint(0, 30)}"
                elif u < 0.2:
                    row[j] = base[rng.randrange(len(base))][j]
            elif u < 0.1:
                row[j] = float("nan")
            elif u < 0.3 and edges.get(j):
                b = np.float32(rng.choice(edges[j]))
                with np.errstate(over="ignore"):  # a border at float32's largest value steps to infinity
                    steps = [b, np.nextafter(b, np.float32(-np.inf)), np.nextafter(b, np.float32(np.inf))]
                row[j] = float(rng.choice(steps))
            elif u < 0.4 and row[j] == row[j]:
                row[j] = row[j] * rng.uniform(0.5, 1.5)
            elif u < 0.42:
                row[j] = rng.choice([1e300, -1e300])  # beyond float32: infinite once cast
        out.append(row)
    return out


def test_the_tree_sum_equals_catboost_bit_for_bit(bundle: Bundle, records: list[dict[str, Any]]) -> None:
    assert bundle.trees is not None, "the test bundle's model should be one the tree sum takes"
    rows = [build_row({}), *build_rows(records), *odd_rows(bundle, records)]
    got, want = in_fives(bundle.trees, rows), catboost(bundle, rows)
    assert np.array_equal(got, want), float(np.max(np.abs(got - want)))


def test_the_bundle_uses_it_for_a_few_records_only(
    bundle: Bundle, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = TreeSum.probabilities

    def counted(self: TreeSum, rows: list[list[Any]]) -> np.ndarray:
        calls.append(len(rows))
        return real(self, rows)

    monkeypatch.setattr(TreeSum, "probabilities", counted)
    few, many = build_rows(records[: ROWS_BELOW - 1]), build_rows(records[:ROWS_BELOW])
    assert bundle.predict_input(few) == catboost(bundle, few).tolist()
    assert bundle.predict_input(many) == catboost(bundle, many).tolist()
    assert calls == [ROWS_BELOW - 1]


def test_kept_category_values_stay_bounded_and_right(
    bundle_dir: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trees, "MAX_KEPT_VALUES", 16)
    bundle = load_bundle(bundle_dir)
    assert bundle.trees is not None
    rows = odd_rows(bundle, records, 400)
    for i, row in enumerate(rows):  # a new category value in every row
        row[CATEGORICAL[0]] = f"new-{i}"
    assert np.array_equal(in_fives(bundle.trees, rows), catboost(bundle, rows))
    assert max(len(kept) for kept in bundle.trees.kept.values()) <= 16
    assert len(bundle.trees.kept_rows) <= 16


def test_a_tree_sum_that_disagrees_with_catboost_is_not_used(
    bundle_dir: Path, records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    real = TreeSum.raw
    monkeypatch.setattr(TreeSum, "raw", lambda self, rows: real(self, rows) + 1e-6)
    bundle = load_bundle(bundle_dir)
    assert bundle.trees is None
    assert "differs from CatBoost" in caplog.text
    rows = build_rows(records[:1])
    assert bundle.predict_input(rows) == catboost(bundle, rows).tolist()


def test_a_model_with_combined_categories_is_left_to_catboost(bundle: Bundle) -> None:
    document = model_document(bundle.model)
    ctrs = document["features_info"]["ctrs"]
    assert ctrs, "the test model should have CTR splits"
    pair = [{"cat_feature_index": 0, "combination_element": "cat_feature_value"}] * 2
    ctrs[0] = {**ctrs[0], "elements": pair}
    assert TreeSum.build(bundle.model, document, CATEGORICAL, build_row({})) is None
