"""Batch scoring (issue 11): the service's answers for the same rows, chunk by chunk, bad rows named, nothing
personal written; the flow's command line and the registry path."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from serving.app import create_app
from serving.bundle import Bundle, load_bundle
from serving.config import ServiceConfig
from tasks.model.features import join_clarity
from tasks.monitoring.score_files import (
    INPUT_FIELDS,
    OUTPUT_COLUMNS,
    REPORT_FIELDS,
    ScoreError,
    join_reports,
    read_chunks,
    read_reports,
)
from tasks.monitoring.scoring import score_file, service_reasons
from tests.serving.synthetic import make_bundle, records_from_files

ROOT = Path(__file__).resolve().parent.parent
CLARITY = "clarity_underwriting_variables.csv"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.data.sample import generate

    out = tmp_path_factory.mktemp("score-sample")
    generate(out, scale=0.02, seed=11)
    return out


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    records = records_from_files(data_dir)
    return make_bundle(tmp_path_factory.mktemp("score-bundle"), records, iterations=40, model_version="7")


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def scored(
    tmp_path_factory: pytest.TempPathFactory, bundle: Bundle, data_dir: Path
) -> tuple[Any, pd.DataFrame]:
    """loan.csv + the clarity file scored in chunks of 1,000 rows, to CSV."""
    out = tmp_path_factory.mktemp("scored") / "scores.csv"
    result = score_file(bundle, data_dir / "loan.csv", out, clarity=data_dir / CLARITY, chunk_rows=1000)
    return result, pd.read_csv(out, dtype={"loanId": str, "model_version": str}, keep_default_na=False)


def _service_records(data_dir: Path) -> list[dict[str, Any]]:
    """Every row of loan.csv joined with its clarity report, as a client posts them: CSV text, blanks ''."""
    with (data_dir / CLARITY).open(newline="") as fh:
        reports: dict[str, dict[str, str]] = {}
        for r in csv.DictReader(fh):
            reports.setdefault(r["underwritingid"], r)
    with (data_dir / "loan.csv").open(newline="") as fh:
        loans = list(csv.DictReader(fh))
    blank = dict.fromkeys(REPORT_FIELDS, "")
    return [
        {**loan, **{k: reports.get(loan["clarityFraudId"], blank)[k] for k in REPORT_FIELDS}}
        for loan in loans
    ]


def test_scores_equal_the_services_answers(
    scored: tuple[Any, pd.DataFrame], bundle_dir: Path, data_dir: Path
) -> None:
    result, frame = scored
    records = _service_records(data_dir)
    assert result.rows_in == result.rows_scored == len(records) == len(frame)
    assert result.chunks >= 10  # really chunked (11k rows, 1,000 at a time)
    client = create_app(ServiceConfig(bundle_dir=bundle_dir)).test_client()
    probabilities: list[float] = []
    labels: list[int] = []
    ids: list[Any] = []
    for start in range(0, len(records), 5000):
        answer = client.post("/predict/batch", json={"data": records[start : start + 5000]})
        assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
        body = answer.get_json()
        probabilities += [p["probability"] for p in body["predictions"]]
        labels += [p["label"] for p in body["predictions"]]
        ids += [p.get("loanId") for p in body["predictions"]]
    assert np.max(np.abs(frame["probability"].to_numpy() - np.array(probabilities))) <= 1e-9
    assert frame["label"].tolist() == labels
    assert frame["loanId"].tolist() == [i or "" for i in ids]  # rows without an id: empty in both
    assert set(frame["model_version"]) == {"7"}
    assert result.flagged == sum(labels)


def test_one_joined_parquet_file_scores_like_the_two_csv_files(
    scored: tuple[Any, pd.DataFrame], bundle: Bundle, data_dir: Path, tmp_path: Path
) -> None:
    """A typed Parquet input (numbers as float64, flags as bool), already joined: the same scores."""
    from tasks.data.reading import read_table

    loans, reports = read_table(data_dir / "loan.csv", "loan"), read_table(data_dir / CLARITY, "clarity")
    joined = join_clarity(loans, reports)
    assert len(joined) == len(loans)
    joined.to_parquet(tmp_path / "applications.parquet")
    result = score_file(bundle, tmp_path / "applications.parquet", tmp_path / "out.parquet", chunk_rows=4096)
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert result.rows_scored == len(scored[1])
    assert np.max(np.abs(out["probability"].to_numpy() - scored[1]["probability"].to_numpy())) <= 1e-9


def test_the_arrow_join_is_trainings_join(data_dir: Path) -> None:
    reports = read_reports(data_dir / CLARITY)
    loans = next(
        read_chunks(data_dir / "loan.csv", [c for c in INPUT_FIELDS if c not in REPORT_FIELDS], 10**6)
    )
    ours = join_reports(loans, reports).to_pandas()
    theirs = join_clarity(loans.to_pandas(), reports.to_pandas())[list(INPUT_FIELDS)]
    assert ours["clarityFraudId"].notna().sum() > 100 and ours["clearfraudscore"].notna().sum() > 100
    pd.testing.assert_frame_equal(ours, theirs.reset_index(drop=True), check_dtype=False)


def test_duplicate_report_ids_keep_the_first_report_like_training(bundle: Bundle, tmp_path: Path) -> None:
    reports = pa.table({**{f: ["1", "2"] for f in REPORT_FIELDS}, "underwritingid": ["a" * 24, "a" * 24]})
    loans = pa.table(
        {f: ["x"] for f in INPUT_FIELDS if f not in REPORT_FIELDS} | {"clarityFraudId": ["a" * 24]}
    )
    joined = join_reports(loans, reports)
    expected = join_clarity(loans.to_pandas(), reports.to_pandas())
    assert joined.column("clearfraudscore").to_pylist() == expected["clearfraudscore"].tolist() == ["1"]


def _with_bad_cell(data_dir: Path, tmp_path: Path, row: int, field: str, value: str) -> Path:
    frame = pd.read_csv(data_dir / "loan.csv", dtype=str, keep_default_na=False)
    frame.loc[row, field] = value
    path = tmp_path / "loan.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_bad_value_names_the_file_line_and_field(bundle: Bundle, data_dir: Path, tmp_path: Path) -> None:
    loan = _with_bad_cell(data_dir, tmp_path, 2500, "apr", "abc")
    out = tmp_path / "scores.csv"
    with pytest.raises(ScoreError) as caught:
        score_file(bundle, loan, out, clarity=data_dir / CLARITY, chunk_rows=1000)
    err = caught.value
    assert (err.file, err.line, err.field) == ("loan.csv", 2502, "apr")  # data row 2500 is line 2502
    assert "loan.csv: line 2502, field 'apr'" in str(err) and "'abc'" in str(err)
    assert not out.exists() and not list(tmp_path.glob(".scores.csv*"))  # no half output left


def test_a_bad_identifier_is_named_but_never_shown(bundle: Bundle, data_dir: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(data_dir / "loan.csv", dtype=str, keep_default_na=False)
    row = int(np.flatnonzero(frame["clarityFraudId"] != "")[3])
    loan = _with_bad_cell(data_dir, tmp_path, row, "clarityFraudId", "zz-not-hex-secret-value")
    with pytest.raises(ScoreError) as caught:
        score_file(bundle, loan, tmp_path / "scores.csv", clarity=data_dir / CLARITY)
    assert caught.value.field == "clarityFraudId" and caught.value.line == row + 2
    assert "secret-value" not in str(caught.value)


def test_rejects_file_lists_bad_rows_and_the_rest_are_scored(
    scored: tuple[Any, pd.DataFrame], bundle: Bundle, data_dir: Path, tmp_path: Path
) -> None:
    loan = _with_bad_cell(data_dir, tmp_path, 10, "loanAmount", "lots")
    frame = pd.read_csv(loan, dtype=str, keep_default_na=False)
    frame.loc[4000, "applicationDate"] = "yesterday"
    frame.to_csv(loan, index=False)
    result = score_file(
        bundle,
        loan,
        tmp_path / "s.parquet",
        clarity=data_dir / CLARITY,
        rejects=tmp_path / "rejects.csv",
        chunk_rows=1000,
    )
    assert result.rows_rejected == 2 and result.rows_scored == result.rows_in - 2
    rejects = pd.read_csv(tmp_path / "rejects.csv", dtype={"loanId": str})
    assert rejects[["line", "field"]].values.tolist() == [[12, "loanAmount"], [4002, "applicationDate"]]
    assert rejects["loanId"].tolist() == [frame.loc[10, "loanId"], frame.loc[4000, "loanId"]]
    out = pq.read_table(tmp_path / "s.parquet").to_pandas()
    kept = scored[1].drop(index=[10, 4000]).reset_index(drop=True)
    assert out["loanId"].tolist() == kept["loanId"].replace("", None).tolist()
    assert np.max(np.abs(out["probability"].to_numpy() - kept["probability"].to_numpy())) <= 1e-9


def test_output_holds_no_personal_field(
    scored: tuple[Any, pd.DataFrame], data_dir: Path, tmp_path: Path
) -> None:
    _, frame = scored
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    written = frame.to_csv(index=False)
    loans = pd.read_csv(data_dir / "loan.csv", dtype=str, keep_default_na=False)
    reports = pd.read_csv(data_dir / CLARITY, dtype=str, keep_default_na=False)
    for values in (loans["anon_ssn"], loans["clarityFraudId"], reports["underwritingid"]):
        present = [v for v in values.head(2000) if v and v in written]
        assert present == [], f"{len(present)} personal or identifier values in the output"


def test_reasons_column_is_one_call_per_chunk_and_only_when_computed(
    bundle: Bundle, data_dir: Path, tmp_path: Path
) -> None:
    calls: list[int] = []

    def reasons(b: Bundle, columns: dict[str, Any], probabilities: np.ndarray, raw: Any) -> list[str]:
        calls.append(len(probabilities))
        return [f"apr={a}" for a in columns["apr"]]

    result = score_file(
        bundle,
        data_dir / "loan.csv",
        tmp_path / "r.csv",
        clarity=data_dir / CLARITY,
        chunk_rows=3000,
        reasons=reasons,
    )
    out = pacsv.read_csv(tmp_path / "r.csv").to_pandas()
    assert list(out.columns) == [*OUTPUT_COLUMNS, "reasons"] and result.reasons
    assert len(calls) == result.chunks > 1 and sum(calls) == result.rows_scored
    assert out["reasons"].iloc[0].startswith("apr=")


def test_reasons_column_equals_the_services_reasons(
    bundle: Bundle, bundle_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """With the bundle's reason table, the reasons column holds what /predict/batch answers for the same rows
    (risky rows by default; codes, features and values equal, contributions to 1e-9), null for the others."""
    assert bundle.explainer is not None
    result = score_file(
        bundle,
        data_dir / "loan.csv",
        tmp_path / "r.parquet",
        clarity=data_dir / CLARITY,
        chunk_rows=2000,
        reasons=service_reasons(),
    )
    column = pq.read_table(tmp_path / "r.parquet").column("reasons").to_pylist()
    records = _service_records(data_dir)[:3000]
    client = create_app(ServiceConfig(bundle_dir=bundle_dir)).test_client()
    answer = client.post("/predict/batch", json={"data": records})
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    served = [p.get("reasons") for p in answer.get_json()["predictions"]]
    written = [None if r is None else json.loads(r) for r in column[:3000]]
    assert (
        result.flagged > 0 and sum(r is not None for r in written) == sum(r is not None for r in served) > 0
    )
    for mine, theirs in zip(written, served, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is None:
            continue
        # a blank CSV field is null in the file's columns and "" in the JSON the service got: both "not given"
        assert [(r["code"], r["feature"], r["value"]) for r in mine] == [
            (r["code"], r["feature"], None if r["value"] == "" else r["value"]) for r in theirs
        ]
        assert np.allclose([r["contribution"] for r in mine], [r["contribution"] for r in theirs], atol=1e-9)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("loan.json", "{}", "expected a .csv or .parquet file"),
        ("loan.csv", "", "the file is empty"),
        ("loan.csv", "loanId,apr\nLL-1,590\n", "missing column 'payFrequency'"),
    ],
)
def test_unusable_inputs_are_refused_by_name(
    bundle: Bundle, data_dir: Path, tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ScoreError, match=expected) as caught:
        score_file(bundle, path, tmp_path / "out.csv", clarity=data_dir / CLARITY)
    assert caught.value.file == name


def test_a_loan_file_alone_needs_the_clarity_file(bundle: Bundle, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ScoreError, match="give the clarity file with --clarity"):
        score_file(bundle, data_dir / "loan.csv", tmp_path / "out.csv")


def test_fetch_model_takes_the_champion_from_the_registry(
    settings: Any, bundle_dir: Path, tmp_path: Path
) -> None:
    from tasks.monitoring.scoring import fetch_model_task
    from tasks.registry import tracking, versions

    copy = shutil.copytree(bundle_dir, tmp_path / "copy")  # registration stamps the version into it
    with tracking.run(settings, "score-test", {}) as run_id:
        version = versions.register_bundle(settings, run_id, copy, {})
    versions.set_alias(settings, "champion", version)
    path = fetch_model_task.fn(settings, None, None, tmp_path / "fetched")
    assert load_bundle(path).version == version
    with pytest.raises(Exception, match="no alias 'candidate'"):
        fetch_model_task.fn(settings, None, "candidate", tmp_path / "other")


def test_command_line_prints_one_json_line(
    bundle_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOANRISK_SCORE_OUTPUT_ROOT", str(tmp_path))  # outputs go only under the score root
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "flows.score", str(data_dir / "loan.csv"), "--output", "scores.parquet"]
    cmd += ["--clarity", str(data_dir / CLARITY), "--bundle", str(bundle_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["output"] == str(out.resolve())  # a relative output lands under the root
    assert line["rows_scored"] == pq.read_metadata(out).num_rows > 10_000
    assert line["model_version"] == "7"
