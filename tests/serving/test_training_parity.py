"""Parity with training: every row of the sample's test split scores over HTTP exactly as training scored it.

The model is fitted and scored by the training code (tasks.model.train); the service gets the raw records, as typed
JSON and as CSV strings (a CSV row posted as JSON), through /predict (row builder), /predict/batch and
/invocations (batches of more than 50: the columnar builder), and the bundle scores them both ways in process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.app import create_app
from serving.bundle import BundleMeta, load_bundle, write_bundle
from serving.features import build_columns, build_rows
from tasks.data.validate import read_tables, validate_tables
from tasks.model.features import DECISION_LOAN_FIELDS, build_model_table
from tasks.model.split import split_by_time
from tasks.model.train import fit_model, make_pool, predict_proba
from tasks.settings import Settings

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def trained(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    s = Settings(state_dir=tmp_path_factory.mktemp("parity-state"), max_iterations=150)
    tables = validate_tables(read_tables(sample_dir), max_quarantine_share=0.01,
                             quarantine_dir=s.quarantine_dir).tables  # fmt: skip
    split = split_by_time(build_model_table(tables["loan"], tables["clarity"], s.data.label_bad_statuses,
                                            s.data.label_good_statuses), s.data.split_fractions)  # fmt: skip
    model = fit_model(
        {"depth": 6, "learning_rate": 0.1}, make_pool(split.train), make_pool(split.valid), s.tuning
    )
    expected = [float(p) for p in predict_proba(model, make_pool(split.test))]
    bundle = write_bundle(tmp_path_factory.mktemp("parity") / "bundle", model,
                          BundleMeta(model_name="loan-risk", threshold=0.5, model_version="1"))  # fmt: skip
    return {"bundle": bundle, "test": split.test, "expected": expected}


@pytest.fixture(scope="module")
def client(trained: dict[str, Any]):
    return create_app({"bundle_dir": trained["bundle"]}).test_client()


def csv_string_records(sample_dir: Path, loan_ids: list[str]) -> list[dict[str, str]]:
    """The same loans read as raw CSV text (every value a string, blanks as ''), joined to their report."""
    loan = pd.read_csv(sample_dir / "loan.csv", dtype=str, keep_default_na=False)
    clarity = pd.read_csv(sample_dir / "clarity_underwriting_variables.csv", dtype=str, keep_default_na=False)
    loan = loan.set_index("loanId", drop=False).loc[loan_ids, list(DECISION_LOAN_FIELDS)]
    joined = loan.merge(clarity, how="left", left_on="clarityFraudId", right_on="underwritingid").fillna("")
    return joined.drop(columns=["underwritingid"]).to_dict("records")


def close(got: list[float], want: list[float]) -> float:
    assert len(got) == len(want)
    return max(abs(a - b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("form", ["typed", "csv-strings"])
def test_every_test_row_matches_training(client, trained, sample_dir: Path, form: str) -> None:
    test, expected = trained["test"], trained["expected"]
    records = test.records if form == "typed" else csv_string_records(sample_dir, test.loan_ids)
    assert len(records) == len(expected) > 50

    single = [client.post("/predict", json=r).get_json()["probability"] for r in records]
    assert close(single, expected) <= TOLERANCE

    batch = client.post("/predict/batch", json={"data": records}).get_json()["predictions"]
    assert close([p["probability"] for p in batch], expected) <= TOLERANCE

    answer = client.post("/invocations", json={"dataframe_records": records}).get_json()["predictions"]
    got = [p if isinstance(p, float) else p["probability"] for p in answer]
    assert close(got, expected) <= TOLERANCE

    columns = list(records[0])
    split_payload = {
        "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}
    }
    answer = client.post("/invocations", json=split_payload).get_json()["predictions"]
    got = [p if isinstance(p, float) else p["probability"] for p in answer]
    assert close(got, expected) <= TOLERANCE


@pytest.mark.parametrize("form", ["typed", "csv-strings"])
def test_columns_rows_and_training_agree(trained, sample_dir: Path, form: str) -> None:
    test, expected = trained["test"], trained["expected"]
    records = test.records if form == "typed" else csv_string_records(sample_dir, test.loan_ids)
    bundle = load_bundle(trained["bundle"])
    by_rows = bundle.predict_input(build_rows(records))
    by_columns = bundle.predict_input(build_columns(records))
    assert close(by_rows, expected) <= TOLERANCE
    assert close(by_columns, expected) <= TOLERANCE
    assert by_columns == by_rows
