"""The MLflow peer of the serving benchmark: the loan-risk model as an MLflow pyfunc ("models from code", no
pickle: this file is the model code) on the same raw application records as the service, through the same
feature code. ``save_peer_model(bundle_dir, out_dir)``, then ``mlflow models serve -m out_dir --env-manager
local``; ``signature=True`` logs it with an input example, so MLflow infers and enforces a signature.
"""

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

_REPO = Path(__file__).resolve().parent.parent
_REQUIREMENTS = ("mlflow", "catboost", "pandas", "numpy")


class LoanRiskRecordsModel(PythonModel):
    """Raw application records (a DataFrame MLflow built from the request) → probability of the risky class."""

    def load_context(self, context: Any) -> None:
        from serving.bundle import load_bundle  # from the model's code path (or the repository)

        self.bundle = load_bundle(context.artifacts["bundle"], thread_count=1)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        # NaN (a null or absent field) back to None, which the feature code reads as missing
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        return self.bundle.predict_records(records)


def peer_input_example(records: list[dict[str, Any]], size: int = 5) -> pd.DataFrame:
    """``size`` raw records (plus ones filling columns null in them, plus an all-missing record) shaped so the
    signature MLflow infers accepts what the service does: every field optional, integers as double, flags as
    CSV text (MLflow's ``astype(bool)`` turns a missing flag into False), all-null columns as None."""
    from serving.features import CLARITY_COLUMNS, LOAN_COLUMNS

    columns = list(dict.fromkeys([*LOAN_COLUMNS, *CLARITY_COLUMNS, *(k for r in records for k in r)]))
    chosen = list(records[:size])
    for name in columns:
        if all(r.get(name) is None for r in chosen):
            chosen.extend(next(([r] for r in records if r.get(name) is not None), []))
    frame = pd.DataFrame([*chosen, {}], columns=columns)
    for name in frame.columns:
        present = frame[name].dropna()
        if not len(present):
            frame[name] = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        elif all(isinstance(v, bool) for v in present):
            frame[name] = frame[name].map(lambda v: None if pd.isna(v) else str(bool(v))).astype(object)
    return frame


def save_peer_model(bundle_dir: str | Path, out_dir: str | Path, *, signature: bool = False) -> Path:
    """Save the bundle as an MLflow pyfunc in ``out_dir`` (``signature``: from its reference records)."""
    extra: dict[str, Any] = {}
    if signature:
        from serving.bundle import REFERENCE_FILE

        reference_file = Path(bundle_dir) / REFERENCE_FILE
        records = json.loads(reference_file.read_text()).get("records") if reference_file.exists() else None
        if not records:
            raise ValueError(f"{bundle_dir} has no reference records for an input example ({REFERENCE_FILE})")
        extra["input_example"] = peer_input_example(records)
    mlflow.pyfunc.save_model(
        path=str(out_dir),
        python_model=str(Path(__file__).resolve()),
        artifacts={"bundle": str(Path(bundle_dir).resolve())},
        code_paths=[str(_REPO / "serving")],
        pip_requirements=[f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENTS],
        **extra,
    )
    return Path(out_dir)


mlflow.models.set_model(LoanRiskRecordsModel())
