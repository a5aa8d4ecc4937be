"""The served model (:class:`ServedModel`) and the reference check every bundle passes before it is served."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import orjson

from serving.bundle import CARD_HTML, REFERENCE_FILE, Bundle
from serving.errors import BundleError, FeatureError
from serving.features import build_row

REFERENCE_TOLERANCE = 1e-6
REFERENCE_LIMIT = 200
_COPIED = "metrics", "data_fingerprint", "params", "run_id", "feature_version", "bundle_format", "created_at"


@dataclass(frozen=True)
class ServedModel:
    """A loaded bundle plus what every answer repeats, precomputed."""

    bundle: Bundle
    name: str
    version: str | None
    threshold: float
    directory: Path
    info_body: bytes

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ServedModel:
        meta, explainer = bundle.meta, bundle.explainer
        info = {
            "name": meta.model_name,
            "version": meta.model_version,
            "features": list(meta.features),
            "categorical_features": list(meta.categorical_features),
            "threshold": float(meta.threshold),
            **{k: getattr(meta, k) for k in _COPIED},
            "reason_codes": None if explainer is None else explainer.table.as_dict(),
            "decision_policy": meta.decision_policy,
            "calibrator": None if bundle.calibrator is None else bundle.calibrator.to_dict(),
            "model_card": (bundle.directory / CARD_HTML).is_file(),
        }
        if explainer is None:
            info["notes"] = [
                "this bundle has no reason-code table (reason_codes.toml): predictions carry no reasons"
            ]
        info_body = orjson.dumps(info, default=str)
        return cls(
            bundle, meta.model_name, meta.model_version, float(meta.threshold), bundle.directory, info_body
        )


def check_reference(
    bundle: Bundle, limit: int = REFERENCE_LIMIT, tolerance: float = REFERENCE_TOLERANCE
) -> int:
    """Score the bundle's reference records and compare with training's probabilities; returns rows checked.
    :class:`BundleError` when ``reference.json`` is unreadable, incomplete or not reproduced; without records it
    scores one all-missing row (a warm-up)."""
    path = bundle.directory / REFERENCE_FILE
    try:
        reference = bundle.reference()
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    if reference is not None and not isinstance(reference, dict):
        raise BundleError(f"{path}: expected an object with 'records' and 'probabilities'")
    if not (records := (reference or {}).get("records")):
        bundle.predict_input([build_row({})])
        return 0
    expected = reference.get("probabilities")  # type: ignore[union-attr]
    if type(records) is not list or not all(type(r) is dict for r in records):
        raise BundleError(f"{path}: 'records' must be a list of records (objects of field names to values)")
    if type(expected) is not list or len(expected) != len(records):
        have = len(expected) if type(expected) is list else "no list of"
        raise BundleError(
            f"{path}: {len(records)} reference records but {have} probabilities; training's probability for "
            "every record is what proves this service reproduces training"
        )
    records, expected = records[:limit], expected[:limit]
    try:
        got = bundle.predict_records(records)
    except FeatureError as exc:
        raise BundleError(f"{path}: reference record unreadable by this service ({exc})") from None
    for i, (e, p) in enumerate(zip(expected, got, strict=True)):
        number = isinstance(e, int | float) and not isinstance(e, bool) and math.isfinite(e)
        if not number or abs(e - p) > tolerance:
            raise BundleError(
                f"{path}: reference record {i} scores {p:.9f} here but {e} in training "
                "(training and serving features differ)"
            )
    return len(records)
