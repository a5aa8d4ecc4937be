"""The model's symmetric trees summed here for the few records of one request (fewer than
:data:`serving.bundle.ROWS_BELOW`): CatBoost's ``predict`` costs far more per call than its trees. It gives
CatBoost's probability to the last bit, or None from :meth:`TreeSum.build`; the bundle checks the sum at load."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, Pool

MAX_KEPT_VALUES = 4096  # values kept per categorical feature (and rows of them); once full, all are forgotten


def model_document(model: CatBoostClassifier) -> dict[str, Any]:
    """The model as CatBoost's JSON export describes it (features, borders, CTR tables, trees, leaf values)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.json"
        model.save_model(str(path), format="json")
        return json.loads(path.read_text())


def split_features(info: dict[str, Any]) -> list[tuple[str, int, float]] | None:
    """Each binary split of CatBoost's JSON export in ``split_index`` order, as (kind, flat feature
    index, border); None when a split combines several features."""
    out: list[tuple[str, int, float]] = []
    for f in info.get("float_features", []):
        out += [("float", f["flat_feature_index"], float(b)) for b in f.get("borders") or []]
    cats = {c["feature_index"]: c["flat_feature_index"] for c in info.get("categorical_features", [])}
    for c in info.get("categorical_features", []):
        out += [("onehot", c["flat_feature_index"], 0.0)] * len(c.get("values") or [])
    for ctr in info.get("ctrs", []):
        elements = ctr.get("elements", [])
        if len(elements) != 1 or elements[0].get("combination_element") != "cat_feature_value":
            return None
        out += [("ctr", cats[elements[0]["cat_feature_index"]], 0.0)] * len(ctr.get("borders") or [])
    return out


class TreeSum:
    """The probability of the risky class for a few model rows (:func:`serving.features.build_rows`)."""

    def __init__(
        self,
        model: CatBoostClassifier,
        splits: list[tuple[str, int, float]],
        trees: list[dict[str, Any]],
        scale_and_bias: tuple[float, float],
        categorical: Sequence[int],
        missing_row: list[Any],
    ) -> None:
        self.model, self.categorical = model, list(categorical)
        self.scale, self.bias = scale_and_bias
        depth = max(len(t["splits"]) for t in trees)
        used = sorted({s["split_index"] for t in trees for s in t["splits"]})
        floats = [s for s in used if splits[s][0] == "float"]
        self.cat_features = sorted({splits[s][1] for s in used if splits[s][0] != "float"})
        by_feature = {
            f: [s for s in used if splits[s][0] != "float" and splits[s][1] == f] for f in self.cat_features
        }
        # outcome positions: the float splits first, then each categorical feature's splits, then an always-0
        # one that pads trees shallower than the deepest; so a row's outcomes are filled by two slices
        order = floats + [s for f in self.cat_features for s in by_feature[f]]
        position = {s: i for i, s in enumerate(order)}
        self.n_float, self.width = len(floats), len(order) + 1
        slot = np.full((len(trees), depth), len(order), dtype=np.intp)
        where: dict[int, tuple[int, int]] = {}  # a split -> one (tree, level) that uses it
        for t, tree in enumerate(trees):
            for d, s in enumerate(tree["splits"]):
                slot[t, d] = position[s["split_index"]]
                where.setdefault(s["split_index"], (t, d))
        self.slots, self.depth = slot.ravel(), depth
        self.powers = (2.0 ** np.arange(depth)).astype(np.float32)  # exact: a leaf index has <= 16 bits
        leaves = [np.asarray(t["leaf_values"], dtype=np.float64) for t in trees]
        self.leaf_values = np.concatenate(leaves)
        self.offsets = np.cumsum([0] + [v.size for v in leaves[:-1]]).astype(np.intp)
        self.float_columns = sorted({splits[s][1] for s in floats})
        column = {c: i for i, c in enumerate(self.float_columns)}
        self.float_of_split = np.array([column[splits[s][1]] for s in floats], dtype=np.intp)
        self.borders = np.array([splits[s][2] for s in floats], dtype=np.float32)
        # per categorical feature: where each of its splits' outcomes shows in a leaf index
        self.cat_places = {f: [where[s] for s in by_feature[f]] for f in self.cat_features}
        self.kept: dict[int, dict[Any, np.ndarray]] = {f: {} for f in self.cat_features}
        self.kept_rows: dict[tuple[Any, ...], np.ndarray] = {}  # a row's categorical values -> all outcomes
        self.missing_row = list(missing_row)
        leaf = self._catboost_leaves([self.missing_row])[0]
        self.nan_outcomes = np.array([(leaf[where[s][0]] >> where[s][1]) & 1 for s in floats], dtype=bool)

    @classmethod
    def build(
        cls,
        model: CatBoostClassifier,
        document: dict[str, Any],
        categorical: Sequence[int],
        missing_row: list[Any],
    ) -> TreeSum | None:
        """The tree sum of a model's JSON export (:func:`model_document`); None for a model it does not take."""
        trees = [{**t, "splits": t.get("splits") or []} for t in document.get("oblivious_trees") or []]
        splits = split_features(document.get("features_info", {}))
        scale, bias = document.get("scale_and_bias", [1.0, [0.0]])
        bias = np.ravel(bias)
        unfit = any(len(t["leaf_values"]) != 1 << len(t["splits"]) for t in trees)
        if splits is None or bias.size != 1 or not any(t["splits"] for t in trees) or unfit:
            return None
        return cls(model, splits, trees, (float(scale), float(bias[0])), categorical, missing_row)

    def _catboost_leaves(self, rows: list[list[Any]]) -> np.ndarray:
        pool = Pool(rows, cat_features=self.categorical, thread_count=1)
        return self.model.calc_leaf_indexes(pool, thread_count=1)

    def _categorical_outcomes(self, row: list[Any]) -> np.ndarray:
        """The outcomes of every categorical split for one row, from the kept values (CatBoost for new ones)."""
        if not self.cat_features:
            return np.empty(0, dtype=np.float32)
        key = tuple([row[f] for f in self.cat_features])
        if (outcomes := self.kept_rows.get(key)) is None:
            parts = [self.kept[f].get(v) for f, v in zip(self.cat_features, key, strict=True)]
            outcomes = self._learn(row) if any(p is None for p in parts) else np.concatenate(parts)
            if len(self.kept_rows) >= MAX_KEPT_VALUES:
                self.kept_rows.clear()
            self.kept_rows[key] = outcomes
        return outcomes

    def _learn(self, row: list[Any]) -> np.ndarray:
        """Read a row's categorical outcomes off CatBoost's leaf indexes, and keep them per value."""
        probe = list(self.missing_row)
        for f in self.cat_features:
            probe[f] = row[f]
        leaf = self._catboost_leaves([probe])[0]
        parts = []
        for f in self.cat_features:
            outcome = np.array([(leaf[t] >> d) & 1 for t, d in self.cat_places[f]], dtype=np.float32)
            values = self.kept[f]
            if len(values) >= MAX_KEPT_VALUES:
                values.clear()
            values[row[f]] = outcome
            parts.append(outcome)
        return np.concatenate(parts)

    def raw(self, rows: list[list[Any]]) -> np.ndarray:
        """The raw scores (log-odds) of model rows."""
        n, f = len(rows), self.n_float
        with np.errstate(over="ignore"):  # beyond float32's range: infinite, as CatBoost's cast makes it
            x = np.array([[row[c] for c in self.float_columns] for row in rows], dtype=np.float32)
        values = x[:, self.float_of_split]
        outcomes = np.zeros((n, self.width), dtype=np.float32)
        missing, above = np.isnan(values), values > self.borders
        outcomes[:, :f] = np.where(missing, self.nan_outcomes, above) if missing.any() else above
        for i, row in enumerate(rows):
            outcomes[i, f:-1] = self._categorical_outcomes(row)
        # each tree's leaf: its levels' outcomes as bits (a float32 product: exact for these small integers)
        bits = np.take(outcomes, self.slots, axis=1).reshape(-1, self.depth)
        leaves = (bits @ self.powers).astype(np.intp).reshape(n, -1)
        # summed tree after tree (cumsum adds in order, as CatBoost does; numpy's sum would pair them up)
        total = np.cumsum(np.take(self.leaf_values, leaves + self.offsets), axis=1)[:, -1]
        return self.scale * total + self.bias

    def probabilities(self, rows: list[list[Any]]) -> np.ndarray:
        """The logistic function of the raw score, with the C library's ``exp`` as CatBoost's
        (numpy's differs in the last bit for some values)."""
        return np.array([1.0 / (1.0 + math.exp(-v)) if v > -700.0 else 0.0 for v in self.raw(rows).tolist()])
