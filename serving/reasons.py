"""Reason codes: why the model scored an application risky, from the model's own SHAP values (path-dependent
TreeSHAP tabulated per leaf at load, so a record's values are a gather and a sum), summed per code of the reviewed
table (:mod:`serving.reason_table`); only codes that raised the risk are reasons, largest first."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from catboost import CatBoostClassifier, EFstrType, Pool

from serving.config import DEFAULT_REASON_COUNT
from serving.features import FEATURE_SOURCES, take
from serving.reason_table import ReasonTable
from serving.trees import split_features

MODES = ("risky", "all", "none")
DEFAULT_MODE = "risky"
POOL_BLOCK = 16_384  # records whose leaves CatBoost finds at once (3.3 KB of leaf indexes a record)
SHAP_BLOCK = 256  # records whose per-leaf SHAP rows are gathered at once (~23 KB each: cache-sized)
ModelInput = list[list[Any]] | dict[str, Any]
Column = Callable[[str], Sequence[Any]]


def _tree_table(tree: dict[str, Any], binary: list[int]) -> tuple[np.ndarray, list[int]]:
    """One symmetric tree's SHAP values per leaf (leaves × its distinct features) and those features:
    path-dependent TreeSHAP as CatBoost computes it, exact over the tree's distinct features."""
    splits = tree["splits"]
    values = np.asarray(tree["leaf_values"], dtype=np.float64)
    weights = np.asarray(tree["leaf_weights"], dtype=np.float64)
    depth = len(splits)
    total = weights.sum()
    if depth == 0:
        return np.zeros((1, 0)), []
    leaves = np.arange(1 << depth)
    # ratio[d, leaf]: the share of its parent's weight under the leaf's side of split d (root: the last split)
    ratio = np.ones((depth, leaves.size))
    parent, mask = np.full(leaves.size, total), 0
    for level in range(depth - 1, -1, -1):
        mask |= 1 << level
        key = leaves & mask
        node = np.bincount(key, weights=weights, minlength=leaves.size)[key]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[level] = np.where(parent > 0, node / parent, 0.0)
        parent = node
    features = [binary[s["split_index"]] for s in splits]
    groups = list(dict.fromkeys(features))
    n_groups = len(groups)
    group_levels = [sum(1 << d for d in range(depth) if features[d] == g) for g in groups]
    coalitions = np.arange(1 << n_groups)
    level_mask = np.zeros(coalitions.size, dtype=np.int64)
    for g, levels in enumerate(group_levels):
        level_mask[(coalitions >> g) & 1 == 1] |= levels
    # v[S, leaf]: the tree's expected value given the features in S take the leaf's side
    reach = np.ones((coalitions.size, leaves.size))
    for d in range(depth):
        reach[(level_mask >> d) & 1 == 0] *= ratio[d]
    key = leaves[None, :] & level_mask[:, None]
    flat = (coalitions[:, None] * leaves.size + key).ravel()
    sums = np.bincount(flat, weights=(reach * values).ravel(), minlength=coalitions.size * leaves.size)
    v = np.take_along_axis(sums.reshape(coalitions.size, leaves.size), key, axis=1)
    sizes = np.array([bin(int(c)).count("1") for c in coalitions])
    phi = np.zeros((leaves.size, n_groups))
    for g in range(n_groups):
        without = coalitions[(coalitions >> g) & 1 == 0]
        w = np.array([math.factorial(k) * math.factorial(n_groups - k - 1) for k in sizes[without]])
        phi[:, g] = w / math.factorial(n_groups) @ (v[without | (1 << g)] - v[without])
    return phi, groups


class ShapTable:
    """Every tree's SHAP values per leaf, so a record's SHAP values are a gather and a sum."""

    def __init__(self, document: dict[str, Any], n_features: int) -> None:
        scale = document.get("scale_and_bias", [1.0])[0]
        splits = split_features(document["features_info"])
        trees = document.get("oblivious_trees")
        if splits is None or not trees:
            raise ValueError("the model has combined categorical features or no symmetric trees")
        binary = [feature for _, feature, _ in splits]
        tables = [_tree_table(tree, binary) for tree in trees]
        width = max(1, max(len(groups) for _, groups in tables))
        self.offsets = np.cumsum([0] + [phi.shape[0] for phi, _ in tables[:-1]])
        # float32: SHAP values to ~1e-6 log-odds, and the lookup twice as fast
        self.phi = np.zeros((sum(phi.shape[0] for phi, _ in tables), width), dtype=np.float32)
        self.feature = np.full((len(tables), width), n_features, dtype=np.int64)  # padding: a dummy feature
        for t, ((phi, groups), start) in enumerate(zip(tables, self.offsets, strict=True)):
            self.phi[start : start + phi.shape[0], : len(groups)] = phi * scale
            self.feature[t, : len(groups)] = groups
        self.n_features = n_features
        # slot (tree, k) -> its feature, as a 0/1 matrix: a row's per-slot values times it sum into features
        slots = self.feature.ravel()
        self.to_features = np.zeros((slots.size, n_features), dtype=np.float32)
        real = slots < n_features
        self.to_features[np.flatnonzero(real), slots[real]] = 1.0

    def values(self, model: CatBoostClassifier, pool: Pool, thread_count: int) -> np.ndarray:
        """SHAP values (rows × features, log-odds) of the records in ``pool``."""
        leaves = model.calc_leaf_indexes(pool, thread_count=thread_count)  # rows × trees, uint32
        leaves += self.offsets.astype(leaves.dtype)  # each tree's leaf -> its row of the table
        n, width = leaves.shape[0], self.phi.shape[1] * self.offsets.size
        out = np.empty((n, self.n_features), dtype=np.float32)
        for start in range(0, n, SHAP_BLOCK):
            block = leaves[start : start + SHAP_BLOCK]
            # rows × (trees × slots): each tree's leaf row of the table (np.take: faster than indexing)
            picked = np.take(self.phi, block, axis=0).reshape(block.shape[0], width)
            np.matmul(picked, self.to_features, out=out[start : start + block.shape[0]])
        return out


class Explainer:
    """A model's reason codes: its SHAP table (or CatBoost's own call) and the reason-code table."""

    def __init__(
        self, model: CatBoostClassifier, table: ReasonTable, features: Sequence[str], document: dict[str, Any]
    ) -> None:
        """``document``: the model's JSON export (:func:`serving.trees.model_document`), for its SHAP table."""
        table.check(features)
        self.model, self.table, self.features = model, table, list(features)
        position = {f: i for i, f in enumerate(features)}
        self.members = [np.array([position[f] for f in r.features]) for r in table.reasons]
        # the features ordered code by code, so each code's members are one slice (a view) of a reordered row
        self.by_code = np.concatenate(self.members)
        self.code_slices = list(
            zip(
                np.cumsum([0] + [m.size for m in self.members[:-1]]).tolist(),
                np.cumsum([m.size for m in self.members]).tolist(),
                strict=True,
            )
        )
        self.family = np.zeros((len(features), len(table.reasons)))
        for code, members in enumerate(self.members):
            self.family[members, code] = 1.0
        self.sources = [FEATURE_SOURCES.get(f) for f in features]
        try:
            self.shap: ShapTable | None = ShapTable(document, len(features))
        except (ValueError, KeyError, TypeError):
            self.shap = None

    def contributions(self, pool: Pool, thread_count: int = 1) -> np.ndarray:
        """Each record's SHAP value per feature (log-odds; positive: it raised the risk)."""
        if self.shap is not None:
            return self.shap.values(self.model, pool, thread_count)
        shap = self.model.get_feature_importance(
            data=pool, type=EFstrType.ShapValues, thread_count=thread_count
        )
        return np.asarray(shap)[:, : len(self.features)]

    def reasons(
        self, shap: np.ndarray, count: int, values: Callable[[int, np.ndarray], list[Any]]
    ) -> list[list[dict[str, Any]]]:
        """Up to ``count`` reasons per row of ``shap``; ``values(feature, rows)`` gives a feature's values at
        those rows."""
        by_code = shap @ self.family
        order = np.argsort(-by_code, axis=1, kind="stable")[:, :count]
        sums = np.take_along_axis(by_code, order, axis=1).round(6)
        # the member of each code that contributed most, for every row at once (first one on a tie)
        ordered = shap[:, self.by_code]
        top = np.stack(
            [self.by_code[a + np.argmax(ordered[:, a:b], axis=1)] for a, b in self.code_slices], axis=1
        )
        tops = np.take_along_axis(top, order, axis=1)
        # a reason raised the risk; sorted largest first, so a row's reasons are a prefix of its codes
        rows, slots = np.nonzero(sums > 0)
        feature = tops[rows, slots]
        value = np.empty(rows.size, dtype=object)
        by_feature = np.argsort(feature, kind="stable")
        edges = np.flatnonzero(np.diff(feature[by_feature])) + 1
        for group in np.split(by_feature, edges) if rows.size else []:
            value[group] = values(int(feature[group[0]]), rows[group])
        codes, names = self.table.reasons, self.features
        found = [
            {"code": codes[c].code, "text": codes[c].text, "feature": names[f], "value": v, "contribution": t}
            for c, f, v, t in zip(
                order[rows, slots].tolist(),
                feature.tolist(),
                value.tolist(),
                sums[rows, slots].tolist(),
                strict=True,
            )
        ]
        ends = np.cumsum(np.bincount(rows, minlength=shap.shape[0])).tolist()
        return [found[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _plain(value: Any) -> Any:
    """A model value as JSON can carry it: NumPy scalars as Python numbers, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def _subset(model_input: ModelInput, index: Sequence[int]) -> ModelInput:
    return [model_input[i] for i in index] if isinstance(model_input, list) else take(model_input, index)


def explain_selected(
    bundle: Any,  # a loaded serving.bundle.Bundle (which imports this module)
    model_input: ModelInput,
    probabilities: Sequence[float],
    threshold: float,
    mode: str = DEFAULT_MODE,
    count: int = DEFAULT_REASON_COUNT,
    raw: Column | None = None,
) -> list[list[dict[str, Any]] | None] | None:
    """Reasons for the records ``mode`` selects (risky: labelled risky; all; none), aligned with ``probabilities``
    (None where not selected); None altogether for ``none`` or a bundle without a table. ``raw(field)`` gives the
    values as sent, so ``value`` is the applicant's own."""
    if mode == "none" or (explainer := bundle.explainer) is None:
        return None
    out: list[list[dict[str, Any]] | None] = [None] * len(probabilities)
    if not (positions := [i for i, p in enumerate(probabilities) if mode == "all" or p >= threshold]):
        return out
    part, n = _subset(model_input, positions), len(positions)
    # blocks of POOL_BLOCK records bound the memory of CatBoost's leaf indexes
    starts = range(0, n, POOL_BLOCK)
    blocks = [part] if n <= POOL_BLOCK else [_subset(part, range(i, min(i + POOL_BLOCK, n))) for i in starts]
    shap = np.concatenate(
        [explainer.contributions(bundle.input_pool(b), bundle.thread_count) for b in blocks]
    )

    def values(feature: int, rows: np.ndarray) -> list[Any]:
        source = explainer.sources[feature]
        if raw is not None and source is not None:  # the applicant's own value, as sent
            sent = raw(source)
            return [sent[positions[i]] for i in rows.tolist()]
        if isinstance(part, list):
            return [_plain(part[i][feature]) for i in rows.tolist()]
        column = part[explainer.features[feature]]
        if type(column) is list:
            return [_plain(column[i]) for i in rows.tolist()]
        return [_plain(v) for v in column[rows].tolist()]

    for i, found in zip(positions, explainer.reasons(shap, count, values), strict=True):
        out[i] = found
    return out
