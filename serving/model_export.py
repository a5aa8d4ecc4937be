"""CatBoost's JSON export of a model, read for its trees' splits (the per-leaf SHAP table of serving/reasons.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from catboost import CatBoostClassifier


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
