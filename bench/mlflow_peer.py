"""The MLflow peer of the serving benchmark: the loan-risk model as an MLflow pyfunc on raw application records.

What a user who serves this model with ``mlflow models serve`` would run: a pyfunc that receives the same raw
loan application records as this service (``loan.csv`` and clarity field names, as ``dataframe_records`` or
``dataframe_split``), applies the same feature code (``serving.features.build_rows``) and returns the
probabilities of the risky class.

The model is saved with MLflow's "models from code" (no pickle): this file is the model code. MLflow copies it
into the model directory and runs it on load; the last line (``mlflow.models.set_model``) hands MLflow the model
object. The bundle directory is a model artifact and the ``serving`` package goes along as a code path, so the
model serves from its own directory.

    from bench.mlflow_peer import save_peer_model
    save_peer_model(bundle_dir, out_dir)      # then: mlflow models serve -m out_dir --env-manager local

Two variants. Without a signature (the default) MLflow hands the pyfunc the DataFrame as pandas built it from the
JSON. With ``signature=True`` the model is logged the way MLflow recommends, with an ``input_example`` (a few of
the bundle's reference records, see :func:`peer_input_example`) from which MLflow infers a signature; the
scoring server then casts every request to it and enforces it before ``predict``.
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
        # Missing values (None in the JSON, or a field absent from some records) become NaN in the DataFrame;
        # the feature code reads None as missing, as it does for the service's JSON.
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        return self.bundle.predict_records(records)


def peer_input_example(records: list[dict[str, Any]], size: int = 5) -> pd.DataFrame:
    """The input example of the signature variant: ``size`` raw records, shaped so that the signature MLflow
    infers from it accepts what the service accepts, and leaves the values as the service reads them.

    Inferred from a few typed records as they are, the signature would reject valid requests and change
    answers; so:

    - every column of the example is *required*, so a record without (say) ``leadCost`` would be refused: here
      every application field (``loan.csv`` and clarity columns) is a column, and a last record with every
      field missing makes each column optional (a request may omit any field or send null);
    - integer columns (``hasCF``, ``leadCost``) would be ``long``: MLflow then refuses a null and truncates 3.5
      to 3; the missing record makes them ``double``;
    - flags (True/False/None) would be ``boolean``: MLflow parses a request with ``astype(bool)``, which turns a
      missing flag (None) into False, a different answer; here flags hold their CSV text ("True"/"False"), so
      the columns are ``string``, which MLflow passes on as sent (typed or text);
    - a column null in all the records would be ``double`` (refusing text): records that give a value to such
      columns are added to the first ``size``; a column null in all of them (e.g. outcome fields, never sent)
      holds None, which MLflow infers as "any type" and passes on.

    Numbers stay ``double``: typed numbers, nulls and numeric text ("590.0") are accepted; an empty string in a
    numeric column (CSV style) is refused by MLflow, where the service reads it as missing.
    """
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
    """Save the bundle as an MLflow pyfunc model (models from code, no pickle) in ``out_dir``; returns it.

    ``signature=True``: log it with an input example built from the bundle's reference records
    (:func:`peer_input_example`), so that MLflow infers a signature and enforces it on every request.
    """
    out = Path(out_dir)
    requirements = [f"{name}=={importlib.metadata.version(name)}" for name in _REQUIREMENTS]
    extra: dict[str, Any] = {}
    if signature:
        from serving.bundle import REFERENCE_FILE

        reference_file = Path(bundle_dir) / REFERENCE_FILE
        records = json.loads(reference_file.read_text()).get("records") if reference_file.exists() else None
        if not records:
            raise ValueError(f"{bundle_dir} has no reference records for an input example ({REFERENCE_FILE})")
        extra["input_example"] = peer_input_example(records)
    mlflow.pyfunc.save_model(
        path=str(out),
        python_model=str(Path(__file__).resolve()),
        artifacts={"bundle": str(Path(bundle_dir).resolve())},
        code_paths=[str(_REPO / "serving")],
        pip_requirements=requirements,
        **extra,
    )
    return out


mlflow.models.set_model(LoanRiskRecordsModel())
