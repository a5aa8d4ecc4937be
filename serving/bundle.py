"""The model bundle: what training writes and serving reads.

A bundle is a directory with
- ``model.cbm``: the CatBoost model in its native format (no pickle anywhere),
- ``bundle.json``: metadata (model name and version, features, categorical features, decision threshold,
  metrics, data fingerprint, feature contract version),
- ``reference.json`` (optional): test records with the probabilities training computed for them, so a
  deployed image can prove it reproduces training's predictions. The records hold only the fields the features
  read, ``clarityFraudId`` pseudonymised (:func:`serving.privacy.reference_records`): no ``loanId``, no
  ``anon_ssn``. :func:`write_bundle` refuses any other field, since the bundle ships inside the image.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier, Pool

from serving.features import (
    CATEGORICAL_INDICES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    build_columns,
    build_rows,
    columns_from,
)
from serving.privacy import foreign_fields

BUNDLE_FORMAT = 1
# Fewer records than this are built row by row (build_rows): for a handful, the columnar builder's fixed cost
# per column is more than the per-value cost it saves.
COLUMNS_FROM = 8
_COLUMN_INDEX = pd.Index(list(FEATURE_NAMES), dtype=object)
_CATEGORICAL = list(CATEGORICAL_INDICES)
MODEL_FILE = "model.cbm"
META_FILE = "bundle.json"
REFERENCE_FILE = "reference.json"


def _categorical(values: list[str]) -> pd.Categorical:
    """A categorical column: CatBoost then hashes each distinct text once, not every value (text as Python
    objects: pandas would make Arrow strings, which CatBoost reads back one by one)."""
    categories = list(dict.fromkeys(values))
    position = {v: i for i, v in enumerate(categories)}
    codes = np.fromiter(map(position.__getitem__, values), np.int32, len(values))
    dtype = pd.CategoricalDtype(pd.Index(categories, dtype=object))
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


class BundleError(RuntimeError):
    """A bundle directory is missing, incomplete or does not match this code's feature contract."""


@dataclass
class BundleMeta:
    """Metadata stored beside the model."""

    model_name: str
    threshold: float
    features: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    categorical_features: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    data_fingerprint: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    run_id: str | None = None
    feature_version: str = FEATURE_VERSION
    bundle_format: int = BUNDLE_FORMAT
    created_at: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the service may run as another user than the writer
    with os.fdopen(fd, "w") as fh:
        json.dump(_json_safe(data), fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def write_bundle(
    directory: str | Path,
    model: CatBoostClassifier,
    meta: BundleMeta,
    reference: dict[str, list[Any]] | None = None,
) -> Path:
    """Write a bundle; ``reference`` is ``{"records": [...], "probabilities": [...]}``.

    Raises :class:`BundleError` when a reference record holds a field the features do not read (an identifier,
    personal data, an outcome), naming the record and field but not the value.
    """
    if reference is not None:
        foreign = foreign_fields(reference.get("records", []))
        if foreign:
            fields = sorted({f for _, f in foreign})
            raise BundleError(
                f"reference record {foreign[0][0]} holds {foreign[0][1]!r}: reference records may hold only the "
                f"fields the features read ({len(foreign)} foreign field(s): {fields})"
            )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_model(str(out / MODEL_FILE), format="cbm")
    _write_json(out / META_FILE, asdict(meta))
    if reference is not None:
        _write_json(out / REFERENCE_FILE, reference)
    return out


def stamp_version(directory: str | Path, model_version: str, **extra: Any) -> BundleMeta:
    """Record the registry version (and any extra metadata fields) in an exported bundle."""
    path = Path(directory) / META_FILE
    data = json.loads(path.read_text())
    data["model_version"] = str(model_version)
    data.update(extra)
    _write_json(path, data)
    return BundleMeta.from_dict(data)


class Bundle:
    """A loaded bundle: the CatBoost model plus its metadata, ready to score raw records."""

    def __init__(self, directory: str | Path, thread_count: int = 1) -> None:
        self.directory = Path(directory)
        meta_path, model_path = self.directory / META_FILE, self.directory / MODEL_FILE
        if not meta_path.is_file() or not model_path.is_file():
            raise BundleError(
                f"{self.directory} is not a model bundle: it needs {META_FILE} and {MODEL_FILE}"
            )
        try:
            self.meta = BundleMeta.from_dict(json.loads(meta_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{meta_path}: unreadable metadata ({exc})") from exc
        if self.meta.features != list(FEATURE_NAMES) or self.meta.feature_version != FEATURE_VERSION:
            raise BundleError(
                f"{meta_path}: feature contract {self.meta.feature_version} with {len(self.meta.features)} "
                f"features does not match this service's contract {FEATURE_VERSION} ({len(FEATURE_NAMES)} features)"
            )
        self.model = CatBoostClassifier(thread_count=thread_count)
        self.model.load_model(str(model_path), format="cbm")
        self.thread_count = thread_count

    @property
    def version(self) -> str | None:
        return self.meta.model_version

    def predict_rows(self, rows: list[list[Any]]) -> list[float]:
        """Probability of the risky class for rows already built by :func:`serving.features.build_rows`."""
        if not rows:
            return []
        pool = Pool(rows, cat_features=_CATEGORICAL, thread_count=self.thread_count)
        proba = self.model.predict(pool, prediction_type="Probability", thread_count=self.thread_count)
        return [float(p) for p in proba[:, 1]]

    def predict_columns(self, columns: dict[str, Any]) -> np.ndarray:
        """Probability of the risky class for columns built by :func:`serving.features.columns_from`."""
        frame = pd.DataFrame(
            {k: _categorical(v) if type(v) is list else v for k, v in columns.items()}, copy=False
        )
        frame.columns = _COLUMN_INDEX  # Python text: pandas would make Arrow strings, read back one by one
        pool = Pool(frame, cat_features=_CATEGORICAL, thread_count=self.thread_count)
        return self.model.predict(pool, prediction_type="Probability", thread_count=self.thread_count)[:, 1]

    def score_fast(self, column: Callable[[str], Sequence[Any]], n: int) -> tuple[np.ndarray, Any] | None:
        """:meth:`predict_fast`'s probabilities (an array) with the columns they were computed from."""
        if n < COLUMNS_FROM:
            return None
        try:
            columns = columns_from(column, n)
        except (ValueError, OverflowError, TypeError):
            return None
        return self.predict_columns(columns), columns

    def predict_fast(self, column: Callable[[str], Sequence[Any]], n: int) -> list[float] | None:
        """Probabilities for ``n`` records read a column at a time (:func:`serving.features.columns_from`): the
        fast way for batches. None when they are too few to gain, or a value needs the checked way
        (:meth:`predict_records`, which names it)."""
        scored = self.score_fast(column, n)
        return None if scored is None else scored[0].tolist()

    def score_records(self, records: list[dict[str, Any]]) -> tuple[list[float], Any]:
        """:meth:`predict_records`'s probabilities with the model input they were computed from (rows for a
        few records, columns for more)."""
        if len(records) < COLUMNS_FROM:
            rows = build_rows(records)
            return self.predict_rows(rows), rows
        columns = build_columns(records)
        return self.predict_columns(columns).tolist(), columns

    def predict_records(self, records: list[dict[str, Any]]) -> list[float]:
        """Probability of the risky class for raw records (field names of the source files)."""
        return self.score_records(records)[0]

    def reference(self) -> dict[str, list[Any]] | None:
        """The reference records and training-time probabilities, when the bundle has them."""
        path = self.directory / REFERENCE_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def load_bundle(directory: str | Path, thread_count: int = 1) -> Bundle:
    """Load and check a bundle directory."""
    return Bundle(directory, thread_count=thread_count)
