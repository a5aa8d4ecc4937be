"""The model bundle: what training writes and serving reads. A directory with ``model.cbm`` (no pickle),
``bundle.json`` (metadata, an optional calibrator), and optionally ``reason_codes.toml``, ``reference.json``
(records and training's probabilities, reproduced at load), ``profile.json``, the evaluation and the model card."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from catboost import CatBoostClassifier, Pool

from serving.calibration import Calibrator
from serving.errors import BundleError
from serving.features import (
    CATEGORICAL_INDICES,
    FEATURE_NAMES,
    FEATURE_VERSION,
    build_columns,
    build_row,
    build_rows,
    rows_of,
)
from serving.logs import LOGGER_NAME
from serving.privacy import foreign_fields
from serving.reason_table import TABLE_FILE, ReasonTable
from serving.reasons import Explainer, ModelInput
from serving.trees import TreeSum, model_document

BUNDLE_FORMAT = 1
# Fewer records than this go as rows (a DataFrame Pool has a fixed cost), scored by the tree sum when it agrees
# with CatBoost to TREE_SUM_TOLERANCE on the reference records at load.
ROWS_BELOW = 8
TREE_SUM_TOLERANCE = 1e-9
_COLUMN_INDEX = pd.Index(list(FEATURE_NAMES), dtype=object)
_CATEGORICAL = list(CATEGORICAL_INDICES)
MODEL_FILE = "model.cbm"
META_FILE = "bundle.json"
REFERENCE_FILE = "reference.json"
PROFILE_FILE = "profile.json"
# The evaluation report, its plots and the model card (tasks/model/card.py; GET /model/card serves the card).
EVALUATION_FILE = "evaluation.json"
CARD_MARKDOWN = "card.md"
CARD_HTML = "card.html"
PLOTS_DIR = "plots"

logger = logging.getLogger(LOGGER_NAME)


def _categorical(values: list[str]) -> pd.Categorical:
    """A categorical column CatBoost hashes once per distinct text (Python text, not Arrow strings)."""
    categories = list(dict.fromkeys(values))
    position = {v: i for i, v in enumerate(categories)}
    codes = np.fromiter(map(position.__getitem__, values), np.int32, len(values))
    dtype = pd.CategoricalDtype(pd.Index(categories, dtype=object))
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _few_as_rows(model_input: ModelInput) -> ModelInput:
    few = not isinstance(model_input, list) and len(model_input["apr"]) < ROWS_BELOW
    return rows_of(model_input) if few else model_input


@dataclass
class BundleMeta:
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
    calibrator: dict[str, Any] | None = None  # serving.calibration.Calibrator.to_dict(), or None
    decision_policy: dict[str, Any] = field(default_factory=dict)  # threshold and label policy, their inputs

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleMeta:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_JSON_OPTIONS = (
    orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON (NaN as null) atomically (temp file + rename), so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; the service may run as another user than the writer
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps(data, option=_JSON_OPTIONS))
    os.replace(tmp, path)


def write_bundle(
    directory: str | Path,
    model: CatBoostClassifier,
    meta: BundleMeta,
    reference: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle; ``reference`` is ``{"records": [...], "probabilities": [...]}``. Raises
    :class:`BundleError` when a reference record holds a field the features do not read."""
    if reference is not None and (foreign := foreign_fields(reference.get("records", []))):
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
    data = {**json.loads(path.read_bytes()), "model_version": str(model_version), **extra}
    _write_json(path, data)
    return BundleMeta.from_dict(data)


def write_profile(directory: str | Path, profile: dict[str, Any]) -> Path:
    """Write the reference profile into a bundle directory; returns its path."""
    _write_json(path := Path(directory) / PROFILE_FILE, profile)
    return path


def read_profile(directory: str | Path) -> dict[str, Any] | None:
    """A bundle directory's reference profile, or None when it has none."""
    return _read_json(Path(directory) / PROFILE_FILE)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes()) if path.is_file() else None


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
            self.meta = BundleMeta.from_dict(json.loads(meta_path.read_bytes()))
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
        try:
            self.calibrator = Calibrator.from_dict(self.meta.calibrator)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{meta_path}: unusable 'calibrator' ({exc})") from None
        document = model_document(self.model)  # read by both, then dropped (~5 MB of JSON for 800 trees)
        self.explainer = None
        if (table := self.directory / TABLE_FILE).is_file():  # without one, the bundle gives no reasons
            try:
                self.explainer = Explainer(self.model, ReasonTable.read(table), self.meta.features, document)
            except BundleError as exc:
                raise BundleError(f"{self.directory}: {exc}") from None
        self.trees = self._load_tree_sum(document)

    @property
    def version(self) -> str | None:
        return self.meta.model_version

    def _load_tree_sum(self, document: dict[str, Any]) -> TreeSum | None:
        """The trees summed here for a few records, once they agree with CatBoost (to
        :data:`TREE_SUM_TOLERANCE`) on the reference records and a row of missing values; else None."""
        try:
            trees = TreeSum.build(self.model, document, _CATEGORICAL, build_row({}))
        except (KeyError, TypeError, ValueError) as exc:  # an export this code does not know: CatBoost scores
            logger.warning("%s: no tree sum (%r); CatBoost scores all", self.directory, exc)
            return None
        if trees is None:
            return None
        rows = [trees.missing_row]
        # a malformed reference file is the reference check's to name (serving.model.check_reference)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            records = (self.reference() or {}).get("records")
            rows += build_rows(records) if isinstance(records, list) else []
        difference = float(np.max(np.abs(trees.probabilities(rows) - self._catboost(rows))))
        if not difference <= TREE_SUM_TOLERANCE:
            message = (
                "%s: the tree sum differs from CatBoost by %g on the reference records; CatBoost scores all"
            )
            logger.warning(message, self.directory, difference)
            return None
        return trees

    def input_pool(self, model_input: ModelInput) -> Pool:
        """The CatBoost Pool of a model input (columns, or rows for a few records)."""
        model_input = _few_as_rows(model_input)
        if isinstance(model_input, list):
            return Pool(model_input, cat_features=_CATEGORICAL, thread_count=self.thread_count)
        frame = pd.DataFrame(
            {k: _categorical(v) if type(v) is list else v for k, v in model_input.items()}, copy=False
        )
        frame.columns = _COLUMN_INDEX  # Python text: pandas would make Arrow strings, read back one by one
        return Pool(frame, cat_features=_CATEGORICAL, thread_count=self.thread_count)

    def predict_input(self, model_input: ModelInput) -> list[float]:
        """Probability of the risky class for a model input, through the calibrator: summed here
        (:mod:`serving.trees`) for fewer than :data:`ROWS_BELOW` records, by CatBoost for more."""
        model_input = _few_as_rows(model_input)
        if not model_input:
            return []
        if self.trees is not None and isinstance(model_input, list) and len(model_input) < ROWS_BELOW:
            p = self.trees.probabilities(model_input)
        else:
            p = self._catboost(model_input)
        return (p if self.calibrator is None else self.calibrator.apply(p)).tolist()

    def _catboost(self, model_input: ModelInput) -> np.ndarray:
        pool = self.input_pool(model_input)
        return self.model.predict(pool, prediction_type="Probability", thread_count=self.thread_count)[:, 1]

    def predict_records(self, records: list[dict[str, Any]]) -> list[float]:
        """Probability of the risky class for raw records (field names of the source files)."""
        return self.predict_input(build_columns(records)) if records else []

    def reference(self) -> dict[str, list[Any]] | None:
        """The reference records and training-time probabilities, when the bundle has them."""
        return _read_json(self.directory / REFERENCE_FILE)


def load_bundle(directory: str | Path, thread_count: int = 1) -> Bundle:
    """Load and check a bundle directory."""
    return Bundle(directory, thread_count=thread_count)
