"""Drift statistics: the reference profile a version ships (binned shares of each feature and of the score, no
rows: the bundle ships inside the image), and how far a window of the prediction log has moved from it. PSI,
binning and KS come from :mod:`tasks.stats`; docs/monitoring.md says more.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES
from serving.predlog import read_log
from serving.readers import MISSING_CATEGORY
from tasks.errors import PermanentError
from tasks.settings import MonitoringSettings
from tasks.stats import auc_and_ks, categorical_counts, numeric_counts, psi, quantile_edges, shares

PROFILE_FORMAT = 1
OTHER, MISSING = "other", "missing"
_MISSING_TEXT = frozenset({"", MISSING_CATEGORY})

EVENT_DETECTED = "loan-risk.drift.detected"
EVENT_OK = "loan-risk.drift.ok"


class MissingFile(PermanentError, FileNotFoundError):
    """The prediction log folder or the outcomes file does not exist (no retry brings it)."""


def _numbers(values: Iterable[Any]) -> np.ndarray:
    """Values as float64, missing (None, NaN, text that is no number) as NaN."""
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)


def _texts(values: Iterable[Any]) -> list[str | None]:
    """Category values as text, missing (None, NaN, "", "NA") as None."""
    return [
        None if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) in _MISSING_TEXT else str(v)
        for v in values
    ]


def _counts(entry: Mapping[str, Any], values: Sequence[Any]) -> np.ndarray:
    if entry["kind"] == "categorical":
        return categorical_counts(_texts(values), entry["categories"])
    return numeric_counts(_numbers(values), entry["edges"])


def profile_entry(values: Iterable[Any], categorical: bool, bins: int, top: int) -> dict[str, Any]:
    """One feature's (or the score's) reference: its bins or categories and each one's share."""
    values = list(values)
    if categorical:
        present = pd.Series([t for t in _texts(values) if t is not None], dtype=object)
        entry = {"kind": "categorical", "categories": sorted(present.value_counts().head(top).index.tolist())}
    else:
        entry = {"kind": "numeric", "edges": quantile_edges(_numbers(values), bins)}
    return entry | {"shares": shares(_counts(entry, values)).tolist(), "n": len(values)}


def build_profile(
    features: pd.DataFrame, scores: Sequence[float], bins: int = 10, top: int = 20
) -> dict[str, Any]:
    """The reference profile: the shares of bins or categories of each model feature and of the ``scores``."""
    return {
        "format": PROFILE_FORMAT,
        "bins": bins,
        "top_categories": top,
        "features": {
            name: profile_entry(features[name].tolist(), name in CATEGORICAL_FEATURES, bins, top)
            for name in FEATURE_NAMES
            if name in features.columns
        },
        "score": profile_entry(list(scores), False, bins, top),
    }


def bin_labels(entry: Mapping[str, Any]) -> list[str]:
    """Readable names of an entry's bins, in order (for the report)."""
    if entry["kind"] == "categorical":
        return [*entry["categories"], OTHER, MISSING]
    edges = [f"{e:.4g}" for e in entry["edges"]]
    if not edges:
        return ["all", MISSING]
    inner = [f"({a}, {b}]" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"≤ {edges[0]}", *inner, f"> {edges[-1]}", MISSING]


def entry_drift(entry: Mapping[str, Any], values: Sequence[Any]) -> dict[str, Any]:
    """PSI of ``values`` against a profile entry, their missing rate beside the reference's, and the shares."""
    counts = _counts(entry, values)
    current = shares(counts).tolist()
    return {
        "psi": psi(entry["shares"], current),
        "n": int(counts.sum()),
        "missing_rate": current[-1],
        "reference_missing_rate": entry["shares"][-1],
        "bins": bin_labels(entry),
        "reference": entry["shares"],
        "current": current,
    }


@dataclass(frozen=True)
class Thresholds:
    """When a window counts as drift (the settings ``drift_*``)."""

    feature_psi: float = 0.25
    score_psi: float = 0.25
    min_features: int = 3
    min_records: int = 100

    @classmethod
    def of(cls, m: MonitoringSettings) -> Thresholds:
        return cls(
            m.drift_psi_threshold, m.drift_score_psi_threshold, m.drift_min_features, m.drift_min_records
        )


def drift_report(
    profile: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    thresholds: Thresholds,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The window's statistics against ``profile`` and the decision: ``status`` is ``detected`` (score PSI
    or enough drifted features), ``ok``, ``too_few`` (under ``min_records``) or ``no_data``; ``reasons`` say
    why, ``event`` is the Prefect event to emit (None for the last two)."""
    n = len(records)
    report: dict[str, Any] = {
        **dict(context or {}),
        "volume": n,
        "thresholds": asdict(thresholds),
        "features": {},
        "score": None,
        "drifted_features": [],
    }
    if n == 0:
        reasons = ["no prediction-log record in the window"]
        return report | {"status": "no_data", "event": None, "reasons": reasons}
    rows = [r.get("features") or {} for r in records]
    found = {name: entry_drift(e, [row.get(name) for row in rows]) for name, e in profile["features"].items()}
    features = report["features"] = dict(sorted(found.items(), key=lambda kv: -kv[1]["psi"]))  # largest first
    drifted = report["drifted_features"] = [
        k for k, d in features.items() if d["psi"] >= thresholds.feature_psi
    ]
    report["score"] = entry_drift(profile["score"], [r.get("probability") for r in records])
    score_psi = report["score"]["psi"]
    reasons = [
        f"score PSI {score_psi:.3f} {'≥' if score_psi >= thresholds.score_psi else '<'} {thresholds.score_psi}",
        f"{len(drifted)} feature(s) with PSI ≥ {thresholds.feature_psi} (a detection needs "
        f"{thresholds.min_features}): {', '.join(drifted) or 'none'}",
    ]
    if n < thresholds.min_records:
        reasons.insert(0, f"{n} record(s) in the window, fewer than {thresholds.min_records}: no decision")
        return report | {"status": "too_few", "event": None, "reasons": reasons}
    detected = score_psi >= thresholds.score_psi or len(drifted) >= thresholds.min_features
    event = EVENT_DETECTED if detected else EVENT_OK
    return report | {"status": "detected" if detected else "ok", "event": event, "reasons": reasons}


def event_payload(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the drift event carries: the PSIs, the drifted features and the counts (no bins)."""
    return {
        "status": report["status"],
        "score_psi": round(report["score"]["psi"], 6) if report.get("score") else None,
        "feature_psi": {k: round(v["psi"], 6) for k, v in report["features"].items()},
        "drifted_features": report["drifted_features"],
        "volume": report["volume"],
        "window": report.get("window"),
        "thresholds": report["thresholds"],
        "performance": report.get("performance"),
    }


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """``loanId`` and ``loanStatus`` of a ``loan.csv``-shaped file; a clear error naming what is missing."""
    if not Path(path).is_file():
        raise MissingFile(f"outcomes file {path} does not exist")
    missing = [c for c in ("loanId", "loanStatus") if c not in pd.read_csv(path, nrows=0).columns]
    if missing:
        raise ValueError(
            f"outcomes file {path}: column(s) {missing} missing (it needs loanId and loanStatus)"
        )
    return pd.read_csv(
        path, usecols=["loanId", "loanStatus"], dtype=str, keep_default_na=False, na_values=[""]
    )


def realised_performance(
    records: Sequence[Mapping[str, Any]],
    outcomes: pd.DataFrame,
    token: Any,
    bad: Iterable[str],
    good: Iterable[str],
) -> dict[str, Any]:
    """ROC-AUC and KS of the logged probabilities on the logged loans whose status has matured into a label;
    ``token`` pseudonymises a ``loanId`` as the service's log did, a loan logged twice counts once (last score)."""
    score_of = {
        str(r["id"]): float(r["probability"])
        for r in records
        if r.get("id") and r.get("probability") is not None
    }
    bad, good = set(bad), set(good)
    known = outcomes.dropna(subset=["loanId"])
    pairs = zip(map(token, known["loanId"]), known["loanStatus"], strict=True)
    matched = [(i, s) for i, s in pairs if i in score_of]
    matured = [(i, s in bad) for i, s in matched if s in bad or s in good]
    out: dict[str, Any] = {"matched": len(matched), "matured": len(matured), "roc_auc": None, "ks": None}
    if matured:
        y = np.array([int(risky) for _, risky in matured])
        p = np.array([score_of[i] for i, _ in matured])
        out["risky_share"] = float(y.mean())
        if len(np.unique(y)) == 2:
            out["roc_auc"], out["ks"] = auc_and_ks(y, p)
    return out


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_window(text: str) -> timedelta:
    """``"24h"``, ``"7d"``, ``"90m"``, ``"2w"``, ``"30s"`` → a timedelta; a clear error otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not match:
        raise ValueError(f"window {text!r}: expected a number and a unit s, m, h, d or w (e.g. 24h, 7d)")
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


def read_window(
    log_dir: str | Path, since: datetime, until: datetime | None = None, model_version: str | None = None
) -> list[dict[str, Any]]:
    """The prediction-log records of ``model_version`` with ``since ≤ time < until`` (service's reader)."""
    if not Path(log_dir).is_dir():
        raise MissingFile(f"prediction log folder {log_dir} does not exist")
    return list(read_log(Path(log_dir), since=since, until=until, model_version=model_version))
