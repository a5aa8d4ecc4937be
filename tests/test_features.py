"""The row-level feature code: leakage rule, identifiers dropped, CSV strings and typed values agree."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from serving.contract import CLARITY_COLUMNS, IDENTIFIER_FIELDS, LOAN_COLUMNS, OUTCOME_FIELDS, PAYMENT_COLUMNS
from serving.features import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FeatureError,
    build_row,
    build_rows,
    clarity_column,
)
from tasks.model.features import build_model_table, label_loans

RECORD = {
    "loanId": "LL-I-07399092",
    "anon_ssn": "beff4989be82aab4a5b47679216942fd",
    "payFrequency": "B",
    "apr": 360.0,
    "applicationDate": "2016-02-23T17:29:01.940000",
    "nPaidOff": 0.0,
    "loanAmount": 500.0,
    "originallyScheduledPaymentAmount": 978.27,
    "state": "IL",
    "leadType": "lead",
    "leadCost": 6,
    "clarityFraudId": "5669ef78e4b0c9d3936440e6",
    "hasCF": 1,
    clarity_column("clearfraudinquiry", "thirtydaysago"): 8.0,
    clarity_column("clearfraudinquiry", "threesixtyfivedaysago"): 10.0,
    clarity_column("clearfraudindicator", "inputssninvalid"): False,
    clarity_column("clearfraudidentityverification", "ssnnamematch"): "match",
    "clearfraudscore": 879.0,
}


def as_csv_strings(record: dict) -> dict:
    """The same record as a CSV row posted as JSON: every value a string, missing as ''."""
    return {k: "" if v is None else str(v) for k, v in record.items()}


def test_no_outcome_or_identifier_becomes_a_feature() -> None:
    """The leakage rule: outcomes, approval flags, payments and identifiers never reach the model."""
    forbidden = OUTCOME_FIELDS | IDENTIFIER_FIELDS | set(PAYMENT_COLUMNS)
    assert {"loanStatus", "fpStatus", "approved", "isFunded", "originated", "paymentStatus"} <= forbidden
    assert not forbidden & set(FEATURE_NAMES)
    base = build_row(RECORD)
    leaky = dict(RECORD, loanStatus="External Collection", fpStatus="Rejected", approved=True, isFunded=1,
                 originated=True, originatedDate="2016-02-24T10:00:00", paymentStatus="Rejected",
                 paymentReturnCode="R01", isCollection=True, principal=10.0, anon_ssn="0" * 32,
                 loanId="LL-I-00000001", underwritingid="f" * 24)  # fmt: skip
    assert repr(build_row(leaky)) == repr(base)  # repr: NaN equals NaN


def test_feature_table_shape() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    assert set(CATEGORICAL_FEATURES) <= set(FEATURE_NAMES)
    assert len(CLARITY_COLUMNS) == 54 and CLARITY_COLUMNS[-2:] == ("clearfraudscore", "underwritingid")
    assert len(LOAN_COLUMNS) == 19
    row = build_row(RECORD)
    assert len(row) == len(FEATURE_NAMES)
    named = dict(zip(FEATURE_NAMES, row, strict=True))
    assert named["report_age_days"] == pytest.approx(74.83, abs=0.01)
    assert named["payment_to_amount"] == pytest.approx(978.27 / 500)
    assert named["application_hour"] == 17.0 and named["application_weekday"] == 1.0
    assert named["identity_ssnnamematch"] == "match" and named["state"] == "IL"


def test_csv_strings_and_typed_values_give_the_same_row() -> None:
    typed = build_row(RECORD)
    strings = build_row(as_csv_strings(RECORD))
    for a, b in zip(typed, strings, strict=True):
        assert (isinstance(a, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_missing_fields_are_missing_values() -> None:
    row = dict(zip(FEATURE_NAMES, build_row({}), strict=True))
    assert row["state"] == "NA" and math.isnan(row["apr"]) and math.isnan(row["report_age_days"])


@pytest.mark.parametrize(
    ("field", "value"),
    [("apr", "abc"), ("hasCF", "maybe"), ("applicationDate", "23/02/2016"), ("clarityFraudId", "zz"),
     (clarity_column("clearfraudindicator", "inputssninvalid"), "perhaps"), ("state", {"a": 1})],
)  # fmt: skip
def test_bad_values_name_the_field_and_record(field: str, value: object) -> None:
    with pytest.raises(FeatureError) as err:
        build_rows([RECORD, dict(RECORD, **{field: value})])
    assert err.value.field == field and err.value.index == 1
    assert field in str(err.value) and "record 1" in str(err.value)


def test_one_row_per_loan_and_label_mapping() -> None:
    loan_fields = {k: v for k, v in RECORD.items() if k in LOAN_COLUMNS}
    loan = pd.DataFrame(
        [dict(loan_fields, loanId="L1", loanStatus="Paid Off Loan"), dict(loan_fields, loanId="L2", loanStatus="External Collection"),
         dict(loan_fields, loanId="L3", loanStatus="Withdrawn Application"), dict(loan_fields, loanId=None, loanStatus="New Loan")]
    )  # fmt: skip
    clarity = pd.DataFrame([{c: None for c in CLARITY_COLUMNS} | {"underwritingid": RECORD["clarityFraudId"],
                            "clearfraudscore": 700.0}])  # fmt: skip
    labelled = label_loans(loan, ["External Collection"], ["Paid Off Loan", "New Loan"])
    assert labelled["loanId"].tolist() == ["L1", "L2"] and labelled["label"].tolist() == [0, 1]
    table = build_model_table(loan, clarity, ["External Collection"], ["Paid Off Loan", "New Loan"])
    assert len(table) == 2 and table.label.tolist() == [0, 1]
    assert dict(zip(FEATURE_NAMES, table.rows[0], strict=True))["clearfraudscore"] == 700.0
    assert not {"loanStatus", "fpStatus", "approved", "isFunded"} & set(table.records[0])


def test_personal_data_stops_at_the_feature_boundary() -> None:
    """Issue 8, item 5: the model table's records (which feed the bundle's reference sample) hold no anon_ssn."""
    loan_fields = {k: v for k, v in RECORD.items() if k in LOAN_COLUMNS}
    loan = pd.DataFrame([dict(loan_fields, loanId="L1", loanStatus="Paid Off Loan")])
    clarity = pd.DataFrame(
        [{c: None for c in CLARITY_COLUMNS} | {"underwritingid": RECORD["clarityFraudId"]}]
    )
    table = build_model_table(loan, clarity, ["External Collection"], ["Paid Off Loan"])
    assert "anon_ssn" not in table.records[0]
    assert RECORD["anon_ssn"] not in repr(table.records) + repr(table.features.to_dict())
    assert pd.Series(table.rows[0]).equals(pd.Series(build_row(loan_fields)))  # the features never read it


def test_duplicate_loan_id_error_does_not_print_the_id() -> None:
    loan = pd.DataFrame([{"loanId": "LL-I-00000042", "loanStatus": "Paid Off Loan"}] * 2)
    with pytest.raises(Exception, match="appears 2 times") as err:
        label_loans(loan, ["External Collection"], ["Paid Off Loan"])
    assert "LL-I-00000042" not in str(err.value)


def test_features_stage_builds_the_table_column_wise_and_lets_the_raw_tables_go(tmp_path) -> None:
    """The model table keeps typed columns (not ~40k record dicts), its records and rows come back on demand,
    and the stage empties the validated tables it read (nothing after it needs them)."""
    from prefect.logging import disable_run_logger

    from tasks.data.validate import ValidationResult
    from tasks.model.features import features_task
    from tasks.settings import Settings

    loan_fields = {k: v for k, v in RECORD.items() if k in LOAN_COLUMNS}
    loan = pd.DataFrame([dict(loan_fields, loanId=f"L{i}", loanStatus="Paid Off Loan") for i in range(3)])
    clarity = pd.DataFrame(
        [{c: None for c in CLARITY_COLUMNS} | {"underwritingid": RECORD["clarityFraudId"]}]
    )
    validated = ValidationResult({"loan": loan, "clarity": clarity, "payment": pd.DataFrame()}, [], {})
    with disable_run_logger():
        table = features_task.fn(Settings(state_dir=tmp_path), validated)
    assert validated.tables == {}
    assert list(table.features.columns) == list(FEATURE_NAMES) and len(table) == 3
    assert table.features.drop(columns=list(CATEGORICAL_FEATURES)).dtypes.eq("float64").all()
    assert pd.Series(table.rows[1]).equals(pd.Series(build_rows(table.records)[1]))
    assert table.subset([2, 0]).loan_ids == ["L2", "L0"]


@pytest.mark.parametrize("policy", ["seed", "matured"])
def test_label_policy_matured_leaves_out_loans_not_final_and_counts_both(tmp_path, policy: str) -> None:
    """``matured`` leaves out 'New Loan' and 'Pending Paid Off' (outcome not final) instead of counting them
    good; the table's figures count what each policy labels, whichever one trained."""
    from prefect.logging import disable_run_logger

    from tasks.data.validate import ValidationResult
    from tasks.model.features import features_task
    from tasks.settings import Settings

    loan_fields = {k: v for k, v in RECORD.items() if k in LOAN_COLUMNS}
    statuses = ["Paid Off Loan", "New Loan", "Pending Paid Off", "Charged Off", "Rejected", "New Loan"]
    loan = pd.DataFrame([dict(loan_fields, loanId=f"L{i}", loanStatus=s) for i, s in enumerate(statuses)])
    clarity = pd.DataFrame([{c: None for c in CLARITY_COLUMNS} | {"underwritingid": "x"}])
    validated = ValidationResult({"loan": loan, "clarity": clarity, "payment": pd.DataFrame()}, [], {})
    with disable_run_logger():
        table = features_task.fn(Settings(state_dir=tmp_path, label_policy=policy), validated)
    expected = {"seed": ["L0", "L1", "L2", "L3", "L5"], "matured": ["L0", "L3"]}[policy]
    assert sorted(table.loan_ids) == expected
    assert table.stats["label_policy"] == policy
    assert table.stats["label_policies"] == {
        "seed": {"labelled": 5, "risky": 1, "good": 4, "left_out_not_final": 0},
        "matured": {"labelled": 2, "risky": 1, "good": 1, "left_out_not_final": 3},
    }
