"""Validation: faithful reading, table rules (raise), row rules (quarantine), the limit, the Prefect task."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from serving.contract import CLARITY_COLUMNS, LOAN_COLUMNS, PAYMENT_COLUMNS, clarity_column
from serving.privacy import Pseudonymiser
from tasks.data.contract import FILES, IDENTIFIER_COLUMNS
from tasks.data.reading import read_table, read_tables
from tasks.data.validate import DataValidationError, ValidationResult, validate_tables, validate_task
from tasks.settings import Settings

SSN = "0123456789abcdef0123456789abcdef"
PSEUDONYMS = Pseudonymiser(b"validation-tests-key")
CF1, CF2, CF3 = "5669ef78e4b0c9d3936440e6", "569eb3a3e4b096699f685d64", "579eab11e4b0d0502870ef2f"


def _loan_rows() -> list[dict[str, str]]:
    """Four valid loans, real quirks included (null-id row, TEST states, misspelt status, no-fraction date)."""
    base = {
        "loanId": "LL-I-00000001", "anon_ssn": SSN, "payFrequency": "B", "apr": "590.0",
        "applicationDate": "2016-02-23T17:29:01.940000", "originated": "True",
        "originatedDate": "2016-02-23T19:00:00", "nPaidOff": "0.0", "approved": "True", "isFunded": "1",
        "loanStatus": "Paid Off Loan", "loanAmount": "500.0", "originallyScheduledPaymentAmount": "1245.5",
        "state": "OH", "leadType": "bvMandatory", "leadCost": "3", "fpStatus": "Checked",
        "clarityFraudId": CF1, "hasCF": "1",
    }  # fmt: skip
    return [
        base,
        {**base, "loanId": "LL-I-00000002", "payFrequency": "W", "apr": "645.0", "originated": "False",
         "originatedDate": "", "approved": "False", "isFunded": "0", "loanStatus": "Withdrawn Application",
         "loanAmount": "400.0", "state": "TX-TEST", "leadType": "lead", "leadCost": "6", "fpStatus": "",
         "clarityFraudId": "", "hasCF": "0"},
        {**base, "loanId": "", "payFrequency": "M", "apr": "", "originated": "False", "originatedDate": "",
         "nPaidOff": "", "approved": "False", "isFunded": "0", "loanStatus": "", "loanAmount": "",
         "state": "OH-TEST", "leadType": "organic", "leadCost": "0", "fpStatus": "", "clarityFraudId": CF2},
        {**base, "loanId": "LL-I-00000004", "payFrequency": "", "originated": "False", "originatedDate": "",
         "approved": "False", "isFunded": "0", "loanStatus": "Customver Voided New Loan", "state": "",
         "fpStatus": "", "clarityFraudId": CF2},
    ]  # fmt: skip


def _payment_rows() -> list[dict[str, str]]:
    """Four valid payments: the literal None status, a collection row with a fraction, an unlisted R-code."""
    base = {
        "loanId": "LL-I-00000001", "installmentIndex": "1", "isCollection": "False",
        "paymentDate": "2016-03-04T05:00:00", "principal": "30.5", "fees": "50.1", "paymentAmount": "80.6",
        "paymentStatus": "Checked", "paymentReturnCode": "",
    }  # fmt: skip
    return [
        base,
        {**base, "installmentIndex": "2", "paymentDate": "2016-03-18T04:00:00", "paymentStatus": "None"},
        {**base, "isCollection": "True", "paymentDate": "2016-04-01T14:22:10.123000", "paymentStatus": "Rejected",
         "paymentReturnCode": "R01"},
        {**base, "loanId": "LL-I-00000002", "paymentStatus": "Cancelled", "paymentReturnCode": "R42"},
    ]  # fmt: skip


def _clarity_rows() -> list[dict[str, str]]:
    """Three valid reports; blank booleans and blank identity codes included."""
    inquiry = {clarity_column("clearfraudinquiry", f): "5.0" for f in ("thirtydaysago", "onehourago")}
    identity = {
        "ssnnamematch": "match", "nameaddressmatch": "partial", "phonematchtype": "M",
        "ssnnamereasoncodedescription": "(S03) SSN match to address only", "phonematchresult": "unavailable",
        "nameaddressreasoncodedescription": "", "phonematchtypedescription": "(M) Mobile Phone",
        "overallmatchresult": "partial", "phonetype": "", "ssndobreasoncode": "D07", "ssnnamereasoncode": "S03",
        "nameaddressreasoncode": "", "ssndobmatch": "match", "overallmatchreasoncode": "11.0",
    }  # fmt: skip
    row = dict.fromkeys(CLARITY_COLUMNS, "")
    row.update(inquiry)
    row.update({clarity_column("clearfraudidentityverification", k): v for k, v in identity.items()})
    for column in CLARITY_COLUMNS:
        if ".clearfraudindicator." in column:
            row[column] = "True" if column.endswith("address") else "False"
    row[clarity_column("clearfraudindicator", "totalnumberoffraudindicators")] = "2.0"
    row[clarity_column("clearfraudindicator", "maxnumberofssnswithanybankaccount")] = "1.0"
    row[clarity_column("clearfraudindicator", "driverlicenseinconsistentwithonfile")] = ""  # blank boolean
    row["clearfraudscore"] = "691.0"
    blank = {c: "" for c in CLARITY_COLUMNS if c != "underwritingid"}
    return [{**row, "underwritingid": CF1}, {**row, "underwritingid": CF2}, {**blank, "underwritingid": CF3}]


def _frames() -> dict[str, pd.DataFrame]:
    return {
        "loan": pd.DataFrame(_loan_rows(), columns=list(LOAN_COLUMNS)),
        "payment": pd.DataFrame(_payment_rows(), columns=list(PAYMENT_COLUMNS)),
        "clarity": pd.DataFrame(_clarity_rows(), columns=list(CLARITY_COLUMNS)),
    }


def _write(folder: Path, frames: dict[str, pd.DataFrame] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, frame in (frames or _frames()).items():
        frame.to_csv(folder / FILES[key], index=False)
    return folder


def _validate(tmp_path: Path, frames: dict[str, pd.DataFrame], share: float = 1.0) -> ValidationResult:
    tables = read_tables(_write(tmp_path / "data", frames))
    return validate_tables(
        tables, max_quarantine_share=share, quarantine_dir=tmp_path / "quarantine", pseudonymiser=PSEUDONYMS
    )


def _quarantine(result: ValidationResult, key: str) -> pd.DataFrame:
    return pd.read_csv(result.quarantine_files[key], dtype=str, keep_default_na=False)


def _as_quarantined(path: Path, line: int, key: str = "loan") -> list[str]:
    """Line ``line`` of a source file as its quarantine row holds it: identifiers pseudonymised."""
    cells = dict(zip(COLUMNS_OF[key], path.read_text().splitlines()[line - 1].split(","), strict=True))
    for column in IDENTIFIER_COLUMNS[key]:
        cells[column] = PSEUDONYMS.field(column, cells[column]) if cells[column] else ""
    return list(cells.values())


COLUMNS_OF = {"loan": LOAN_COLUMNS, "payment": PAYMENT_COLUMNS, "clarity": CLARITY_COLUMNS}


# --- clean data ---------------------------------------------------------------------------------------------


def test_real_quirks_read_faithfully_and_pass(tmp_path: Path) -> None:
    result = _validate(tmp_path, _frames(), share=0.0)
    assert [r["quarantined_rows"] for r in result.report] == [0, 0, 0]
    loan, pay, clarity = (result.tables[k] for k in ("loan", "payment", "clarity"))
    assert len(loan) == 4 and len(pay) == 4 and len(clarity) == 3
    # null-id row with null status / apr / amount survives
    null_id = loan[loan["loanId"].isna()]
    assert len(null_id) == 1 and null_id[["loanStatus", "apr", "loanAmount"]].isna().all().all()
    # the literal None payment status is a category, not a missing value
    assert pay["paymentStatus"].tolist() == ["Checked", "None", "Rejected", "Cancelled"]
    # timestamps stay the original strings, with or without fraction
    assert loan["originatedDate"].iloc[0] == "2016-02-23T19:00:00"
    assert pay["paymentDate"].iloc[2] == "2016-04-01T14:22:10.123000"
    assert set(loan["state"].dropna()) == {"OH", "TX-TEST", "OH-TEST"}
    assert "Customver Voided New Loan" in set(loan["loanStatus"])
    # dtypes: numbers numeric, True/False boolean (nullable where blanks occur), text str
    assert str(loan["apr"].dtype) == "float64" and str(loan["originated"].dtype) == "bool"
    assert str(loan["isFunded"].dtype) == "int64" and str(pay["isCollection"].dtype) == "bool"
    blank_bool = clarity[clarity_column("clearfraudindicator", "driverlicenseinconsistentwithonfile")]
    assert str(blank_bool.dtype) == "boolean" and blank_bool.isna().all()
    assert pd.api.types.is_string_dtype(loan["applicationDate"])
    # every report row is flat (a table artifact) and the quarantine files exist, header only
    for row in result.report:
        assert all(isinstance(v, str | int | float) for v in row.values())
    assert all(p.exists() and len(_quarantine(result, k)) == 0 for k, p in result.quarantine_files.items())


def test_generated_sample_passes_with_zero_quarantine(tmp_path: Path, sample_dir: Path) -> None:
    tables = read_tables(sample_dir)
    result = validate_tables(tables, max_quarantine_share=0.0, quarantine_dir=tmp_path / "q")
    assert {r["file"]: r["quarantined_rows"] for r in result.report} == dict.fromkeys(FILES.values(), 0)
    assert result.rule_counts == {"loan": {}, "payment": {}, "clarity": {}}
    for key, frame in tables.items():
        pd.testing.assert_frame_equal(result.tables[key], frame)
    assert (tables["payment"]["paymentStatus"] == "None").any()


# --- table rules ---------------------------------------------------------------------------------------------


def test_missing_file_names_it(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    (data / "payment.csv").unlink()
    with pytest.raises(DataValidationError, match=r"payment\.csv: file not found") as info:
        read_tables(data)
    assert info.value.file == "payment.csv"


def test_empty_file_and_header_only_file(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    (data / "loan.csv").write_text("")
    with pytest.raises(DataValidationError, match=r"loan\.csv: the file is empty"):
        read_tables(data)
    (data / "loan.csv").write_text(",".join(LOAN_COLUMNS) + "\n")
    with pytest.raises(DataValidationError, match=r"loan\.csv: the file has a header but no data rows"):
        read_tables(data)


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"] = frames["loan"].drop(columns=["apr"])
    with pytest.raises(DataValidationError, match=r"loan\.csv: missing column 'apr'") as info:
        read_tables(_write(tmp_path / "data", frames))
    assert (info.value.file, info.value.column) == ("loan.csv", "apr")
    # the same rule holds for tables handed to validate_tables directly
    with pytest.raises(DataValidationError, match=r"payment\.csv: missing column 'fees'"):
        validate_tables(
            {"payment": _frames()["payment"].drop(columns=["fees"])},
            max_quarantine_share=1.0,
            quarantine_dir=tmp_path / "q",
        )


def test_truncated_file_names_the_line(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    text = (data / "loan.csv").read_text()
    last_line = text.rstrip("\n").rfind("\n") + 1
    (data / "loan.csv").write_text(text[: last_line + 40])  # the copy stopped mid-row
    with pytest.raises(
        DataValidationError, match=r"loan\.csv: line 5 cannot be parsed: expected 19 fields"
    ) as info:
        read_tables(data)
    assert info.value.line == 5


def test_wrong_field_count_mid_file_names_the_line(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    lines = (data / "payment.csv").read_text().splitlines()
    lines[2] += ",extra"
    (data / "payment.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataValidationError, match=r"payment\.csv: line 3 cannot be parsed: expected 9 fields, found 10"
    ):
        read_tables(data)


def test_unterminated_quote_is_a_parse_error(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    (data / "payment.csv").write_text((data / "payment.csv").read_text() + 'LL-I-00000001,3,False,"2016-05')
    with pytest.raises(DataValidationError, match=r"payment\.csv: line 6 cannot be parsed"):
        read_tables(data)


def test_column_of_text_is_a_table_error(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"]["apr"] = "abc"
    with pytest.raises(
        DataValidationError, match=r"loan\.csv: column 'apr' holds no readable value: expected a number"
    ) as info:
        read_tables(_write(tmp_path / "data", frames))
    assert info.value.column == "apr" and "'abc'" in str(info.value)
    with pytest.raises(DataValidationError, match=r"loan\.csv: column 'apr'"):
        validate_tables({"loan": frames["loan"]}, max_quarantine_share=1.0, quarantine_dir=tmp_path / "q")


def test_empty_table_is_a_table_error(tmp_path: Path) -> None:
    empty = _frames()["clarity"].iloc[:0]
    with pytest.raises(DataValidationError, match=r"clarity_underwriting_variables\.csv: the table is empty"):
        validate_tables({"clarity": empty}, max_quarantine_share=1.0, quarantine_dir=tmp_path / "q")


# --- row rules -----------------------------------------------------------------------------------------------


def test_unreadable_number_is_quarantined_with_rule_line_and_original_row(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[1, "apr"] = "abc"
    tables = read_tables(_write(tmp_path / "data", frames))
    assert tables["loan"]["apr"].iloc[1] == "abc"  # kept as text for the validator
    result = validate_tables(
        tables, max_quarantine_share=1.0, quarantine_dir=tmp_path / "quarantine", pseudonymiser=PSEUDONYMS
    )
    assert str(result.tables["loan"]["apr"].dtype) == "float64"
    assert list(result.tables["loan"].index) == [0, 2, 3]
    assert result.rule_counts["loan"] == {"apr: not a number": 1}
    q = _quarantine(result, "loan")
    assert q["source_line"].tolist() == ["3"]
    assert q["broken_rules"].tolist() == ["apr: not a number"]
    assert q[list(LOAN_COLUMNS)].iloc[0].tolist() == _as_quarantined(tmp_path / "data" / "loan.csv", 3)
    # its payments: loan 2's payment row is quarantined too (its loan is)
    assert result.rule_counts["payment"] == {"loanId: its loan row is quarantined": 1}


def test_quarantine_files_hold_no_identifier_value(tmp_path: Path) -> None:
    """Issue 8, item 5: a quarantined row keeps its line and rules, but no loanId, anon_ssn or clarity id."""
    frames = _frames()
    frames["loan"].loc[1, "apr"] = "abc"  # LL-I-00000002 and its payment row are quarantined
    frames["clarity"].loc[0, "clearfraudscore"] = "high"
    data = _write(tmp_path / "data", frames)
    result = validate_tables(read_tables(data), max_quarantine_share=1.0, quarantine_dir=tmp_path / "q")
    assert result.quarantined_rows == 3
    written = "".join(path.read_text() for path in result.quarantine_files.values())
    identifiers = {
        str(v)
        for key, columns in (("loan", ["loanId", "anon_ssn", "clarityFraudId"]), ("payment", ["loanId"]),
                             ("clarity", ["underwritingid"]))
        for column in columns
        for v in frames[key][column].dropna()
        if str(v)
    }  # fmt: skip
    assert identifiers and not [v for v in identifiers if v in written]
    for key in ("loan", "payment", "clarity"):
        assert _quarantine(result, key)["source_line"].tolist() and "not a number" in written


def test_quarantine_pseudonyms_are_keyed_and_consistent(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[1, "apr"] = "abc"
    frames["clarity"].loc[0, "clearfraudscore"] = "high"
    result = _validate(tmp_path, frames)
    loan, payment, clarity = (_quarantine(result, k) for k in ("loan", "payment", "clarity"))
    assert loan["loanId"].tolist() == payment["loanId"].tolist() == [PSEUDONYMS.token("LL-I-00000002")]
    assert loan["anon_ssn"].tolist() == [PSEUDONYMS.token(SSN)]
    assert clarity["underwritingid"].tolist() == [PSEUDONYMS.clarity_id(CF1)]
    assert clarity["underwritingid"].iloc[0][:8] == CF1[:8] != clarity["underwritingid"].iloc[0]
    other = Pseudonymiser(b"another-key").token("LL-I-00000002")
    assert other != loan["loanId"].iloc[0]


def test_quarantine_file_keeps_typed_rows_as_written(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[3, "state"] = "ZZ"
    result = _validate(tmp_path, frames)
    q = _quarantine(result, "loan")
    assert q["source_line"].tolist() == ["5"]
    assert q[list(LOAN_COLUMNS)].iloc[0].tolist() == _as_quarantined(tmp_path / "data" / "loan.csv", 5)
    assert q["broken_rules"].iloc[0] == "state: unknown category"


def test_unknown_categories_and_bad_booleans(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[3, "leadType"] = "telemarketing"
    frames["payment"].loc[1, "paymentStatus"] = "Bounced"
    frames["payment"].loc[2, "paymentReturnCode"] = "X9"
    frames["payment"].loc[3, "isCollection"] = "maybe"
    frames["clarity"].loc[0, clarity_column("clearfraudidentityverification", "phonematchtype")] = "ZZ"
    result = _validate(tmp_path, frames)
    counts = result.rule_counts
    assert counts["loan"] == {"leadType: unknown category": 1}
    assert counts["payment"] == {
        "paymentStatus: unknown category": 1,
        "paymentReturnCode: not a return code": 1,
        "isCollection: not True or False": 1,
    }
    phone = clarity_column("clearfraudidentityverification", "phonematchtype")
    assert counts["clarity"] == {f"{phone}: unknown category": 1}


def test_ranges_formats_and_missing_values(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[0, "apr"] = "2000.0"
    frames["loan"].loc[1, "anon_ssn"] = "not-hex"
    frames["loan"].loc[3, "applicationDate"] = "23/02/2016 17:29"
    frames["payment"].loc[3, "installmentIndex"] = "0"
    frames["clarity"].loc[1, "clearfraudscore"] = "1200.0"
    frames["clarity"].loc[2, "underwritingid"] = "xyz"
    result = _validate(tmp_path, frames)
    assert set(result.rule_counts["loan"]) == {
        "apr: out of range [0, 1000]",
        "anon_ssn: not 32 hex characters",
        "applicationDate: not an ISO timestamp",
    }
    assert "installmentIndex: out of range [1, 1000]" in result.rule_counts["payment"]
    assert set(result.rule_counts["clarity"]) == {
        "clearfraudscore: out of range [0, 1000]",
        "underwritingid: not 24 hex characters",
    }
    frames = _frames()
    frames["loan"].loc[0, "originated"] = ""
    result = _validate(tmp_path / "nulls", frames)
    assert result.rule_counts["loan"] == {"originated: missing value": 1}
    assert str(result.tables["loan"]["originated"].dtype) == "bool"


def test_duplicate_ids_keep_the_first_occurrence(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[3, "loanId"] = "LL-I-00000001"
    frames["clarity"].loc[2, "underwritingid"] = CF1
    result = _validate(tmp_path, frames)
    assert result.rule_counts["loan"] == {"loanId: duplicate id": 1}
    assert (
        result.tables["loan"]["loanId"].tolist()[0] == "LL-I-00000001"
        and 3 not in result.tables["loan"].index
    )
    assert result.rule_counts["clarity"] == {"underwritingid: duplicate id": 1}
    assert list(result.tables["clarity"].index) == [0, 1]
    # payments of the surviving first loan stay
    assert result.rule_counts["payment"] == {}


def test_orphan_payment_and_has_cf_mismatch(tmp_path: Path) -> None:
    frames = _frames()
    frames["payment"].loc[3, "loanId"] = "LL-I-99999999"
    frames["loan"].loc[1, "hasCF"] = "1"  # no clarityFraudId
    result = _validate(tmp_path, frames)
    assert result.rule_counts["payment"] == {"loanId: no such loan in loan.csv": 1}
    assert result.rule_counts["loan"] == {"hasCF: must be 1 exactly when clarityFraudId is present": 1}
    q = _quarantine(result, "payment")
    assert q["source_line"].tolist() == ["5"] and q["loanId"].tolist() == [PSEUDONYMS.token("LL-I-99999999")]


def test_quarantine_over_the_limit_raises_with_details(tmp_path: Path) -> None:
    frames = _frames()
    frames["loan"].loc[3, "state"] = "ZZ"
    with pytest.raises(DataValidationError) as info:
        _validate(tmp_path, frames, share=0.10)
    message = str(info.value)
    path = tmp_path / "quarantine" / "loan.quarantine.csv"
    assert "loan.csv: 1 of 4 rows (25.00%)" in message
    assert "over the limit of 10.00%" in message
    assert "state: unknown category (1)" in message
    assert str(path) in message and path.exists()
    assert info.value.file == "loan.csv" and info.value.result is not None
    assert info.value.result.report[0]["quarantined_rows"] == 1


# --- the Prefect task ----------------------------------------------------------------------------------------


def test_the_stage_publishes_its_report_as_a_prefect_artifact_and_mlflow_files(
    tmp_path: Path, settings: Settings
) -> None:
    """The stage in a real flow run: the report is a table artifact of that run (read back from Prefect's API)
    and, with its quarantine files, artifacts of the MLflow run."""
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.logging import disable_run_logger

    from tasks.registry.tracking import start_run

    assert validate_task.name == "validate"
    frames = _frames()
    frames["loan"].loc[3, "state"] = "ZZ"
    data = _write(tmp_path / "data", frames)
    s = settings.model_copy(update={"quarantine_max_share": 0.5})
    run_id = start_run(s, "validate-test")

    @flow(name="validate-artifact-test")
    def validate_flow():
        return validate_task(s, data, run_id)

    state = validate_flow(return_state=True)
    result = state.result()
    assert result.quarantined_rows == 1
    assert result.quarantine_files["loan"].parent == s.quarantine_dir
    flow_run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
    with get_client(sync_client=True) as prefect_client:
        (artifact,) = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=flow_run))
    assert artifact.key == "validation-report" and artifact.type == "table"
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert table == json.loads(json.dumps(result.report))
    assert "1 row(s) quarantined" in artifact.description
    client = MlflowClient(tracking_uri=s.tracking_uri)
    names = sorted(a.path for a in client.list_artifacts(run_id, "validation"))
    assert names == [
        "validation/clarity_underwriting_variables.quarantine.csv",
        "validation/loan.quarantine.csv",
        "validation/payment.quarantine.csv",
        "validation/report.json",
    ]
    report = json.loads(
        Path(client.download_artifacts(run_id, "validation/report.json", str(tmp_path))).read_text()
    )
    assert report["rule_counts"]["loan"] == {"state: unknown category": 1}

    # a failing validation is not retried and still leaves its quarantine file behind
    with disable_run_logger(), pytest.raises(DataValidationError, match="over the limit"):
        validate_task.fn(settings.model_copy(update={"quarantine_max_share": 0.0}), data)
    assert (settings.quarantine_dir / "loan.quarantine.csv").exists()


def test_read_table_accepts_a_single_file(tmp_path: Path) -> None:
    data = _write(tmp_path / "data")
    loan = read_table(data / "loan.csv", "loan")
    assert list(loan.columns) == list(LOAN_COLUMNS) and len(loan) == 4
