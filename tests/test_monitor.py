"""The reference profile, PSI, the drift decision, realised performance, the log window and the drift sample."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES, build_rows
from serving.privacy import Pseudonymiser
from tasks.data.contract import BAD_LABEL_STATUSES, GOOD_LABEL_STATUSES
from tasks.data.reading import read_tables
from tasks.data.sample import generate
from tasks.data.sample.drift import SHIFTED_FIELDS
from tasks.model.features import build_model_table, feature_frame
from tasks.model.split import split_by_time
from tasks.monitoring import drift as monitor


def test_categorical_counts_keep_top_then_other_then_missing() -> None:
    entry = monitor.profile_entry(["a", "a", "b", "c", None, "NA", ""], categorical=True, bins=10, top=2)
    assert entry["categories"] == ["a", "b"]  # the two most frequent, in name order
    assert entry["shares"] == pytest.approx([2 / 7, 1 / 7, 1 / 7, 3 / 7])
    assert monitor.bin_labels(entry) == ["a", "b", "other", "missing"]


# --- the profile of a real training split ----------------------------------------------------------------


@pytest.fixture(scope="module")
def table(sample_dir: Path) -> Any:
    tables = read_tables(sample_dir)
    return build_model_table(
        tables["loan"], tables["clarity"], list(BAD_LABEL_STATUSES), list(GOOD_LABEL_STATUSES)
    )


@pytest.fixture(scope="module")
def profile(table: Any) -> dict[str, Any]:
    split = split_by_time(table, (0.7, 0.15, 0.15))
    scores = np.random.default_rng(0).beta(2, 3, len(split.valid))
    return monitor.build_profile(split.train.features, scores, bins=10, top=20)


def test_profile_covers_every_feature_and_the_score(profile: dict[str, Any]) -> None:
    assert set(profile["features"]) == set(FEATURE_NAMES)
    for name, entry in profile["features"].items():
        assert entry["kind"] == ("categorical" if name in CATEGORICAL_FEATURES else "numeric"), name
        assert sum(entry["shares"]) == pytest.approx(1.0), name
        if entry["kind"] == "numeric":
            assert len(entry["shares"]) == len(entry["edges"]) + 2 and len(entry["edges"]) <= 9, name
    apr = profile["features"]["apr"]
    assert len(apr["edges"]) >= 5  # a real spread of APRs
    assert max(apr["shares"][:-1]) < 0.5  # quantile bins: no bin holds most loans (one APR level holds ~37%)
    assert len(profile["score"]["edges"]) == 9 and all(
        s == pytest.approx(0.1, abs=0.01) for s in profile["score"]["shares"][:-1]
    )


def test_profile_is_small_json_without_identifiers(profile: dict[str, Any], sample_dir: Path) -> None:
    text = json.dumps(profile)
    assert len(text) < 64_000, len(text)
    loan = pd.read_csv(sample_dir / "loan.csv", usecols=["loanId", "anon_ssn", "clarityFraudId"], dtype=str)
    for column in loan.columns:
        values = set(loan[column].dropna().head(500))
        assert not any(v in text for v in values), f"the profile holds a value of {column}"


def _records(features: pd.DataFrame, scores: np.ndarray) -> list[dict[str, Any]]:
    """Prediction-log records of the documented shape (features as the model saw them)."""
    now = datetime.now(UTC).isoformat()
    rows = features.astype(object).where(features.notna(), None).to_dict("records")
    return [
        {"time": now, "request_id": f"r{i}", "endpoint": "/predict", "model_name": "loan-risk",
         "model_version": "1", "id": f"{i:032x}", "features": row, "probability": float(p), "label": int(p > 0.5)}
        for i, (row, p) in enumerate(zip(rows, scores, strict=True))
    ]  # fmt: skip


def test_the_same_population_is_no_drift(table: Any, profile: dict[str, Any]) -> None:
    split = split_by_time(table, (0.7, 0.15, 0.15))
    records = _records(split.train.features, np.random.default_rng(1).beta(2, 3, len(split.train)))
    report = monitor.drift_report(profile, records, monitor.Thresholds())
    assert report["status"] == "ok" and report["event"] == monitor.EVENT_OK
    assert report["drifted_features"] == []
    assert report["score"]["psi"] < 0.1  # the same distribution, ~120 reference scores: sampling noise only
    assert max(d["psi"] for d in report["features"].values()) < 0.01  # the very rows the profile came from


def test_shifted_features_and_score_are_detected(table: Any, profile: dict[str, Any]) -> None:
    split = split_by_time(table, (0.7, 0.15, 0.15))
    shifted = split.train.features.copy()
    shifted["apr"] = shifted["apr"] * 1.3
    shifted["clearfraudscore"] = shifted["clearfraudscore"] - 150
    shifted["leadType"] = np.where(shifted["leadType"] == "bvMandatory", "lead", shifted["leadType"])
    scores = np.random.default_rng(1).beta(2, 3, len(shifted))
    report = monitor.drift_report(profile, _records(shifted, scores), monitor.Thresholds())
    assert set(report["drifted_features"]) == {"apr", "clearfraudscore", "leadType"}
    assert report["status"] == "detected" and report["event"] == monitor.EVENT_DETECTED
    # two drifted features alone are not enough; a shifted score is
    two = monitor.drift_report(profile, _records(shifted, scores), monitor.Thresholds(min_features=4))
    assert two["status"] == "ok"
    high = _records(split.train.features, np.random.default_rng(1).beta(5, 2, len(shifted)))
    by_score = monitor.drift_report(profile, high, monitor.Thresholds())
    assert by_score["drifted_features"] == [] and by_score["score"]["psi"] >= 0.25
    assert by_score["status"] == "detected"
    payload = monitor.event_payload(report)
    assert payload["drifted_features"] == report["drifted_features"]
    assert set(payload["feature_psi"]) == set(FEATURE_NAMES) and payload["volume"] == len(shifted)
    json.dumps(payload)  # an event payload is JSON


def test_missing_values_show_as_missing_rate(profile: dict[str, Any], table: Any) -> None:
    features = table.features.head(300).copy()
    features["clearfraudscore"] = np.nan
    report = monitor.drift_report(profile, _records(features, np.full(300, 0.4)), monitor.Thresholds())
    entry = report["features"]["clearfraudscore"]
    assert entry["missing_rate"] == 1.0 and entry["reference_missing_rate"] < 0.2
    assert entry["psi"] >= 0.25


def test_no_records_and_too_few_records_make_no_event(profile: dict[str, Any], table: Any) -> None:
    empty = monitor.drift_report(profile, [], monitor.Thresholds(), {"model_version": "1"})
    assert empty["status"] == "no_data" and empty["event"] is None and empty["volume"] == 0
    assert "no prediction-log record" in empty["reasons"][0]
    few = monitor.drift_report(
        profile, _records(table.features.head(20), np.full(20, 0.9)), monitor.Thresholds()
    )
    assert few["status"] == "too_few" and few["event"] is None
    assert "fewer than 100" in few["reasons"][0]


# --- realised performance ----------------------------------------------------------------------------------


def test_realised_auc_and_ks_join_on_the_pseudonymised_id() -> None:
    from scipy.stats import ks_2samp
    from sklearn.metrics import roc_auc_score

    pseudonymiser = Pseudonymiser(b"k" * 32)
    rng = np.random.default_rng(3)
    n = 400
    loan_ids = [f"LL-I-{i:08d}" for i in range(n)]
    statuses = rng.choice(["Paid Off Loan", "Charged Off", "External Collection", "Withdrawn Application"], n)
    risky = np.isin(statuses, ["Charged Off", "External Collection"])
    p = np.clip(0.3 + 0.3 * risky + rng.normal(0, 0.2, n), 0, 1)
    records = [
        {"id": pseudonymiser.token(i), "probability": float(s)} for i, s in zip(loan_ids, p, strict=True)
    ]
    outcomes = pd.DataFrame(
        {"loanId": loan_ids + ["LL-I-unlogged"], "loanStatus": [*statuses, "Paid Off Loan"]}
    )
    got = monitor.realised_performance(
        records, outcomes, pseudonymiser.token, BAD_LABEL_STATUSES, GOOD_LABEL_STATUSES
    )
    matured = np.isin(statuses, ["Paid Off Loan", "Charged Off", "External Collection"])
    assert got["matched"] == n and got["matured"] == int(matured.sum())
    assert got["roc_auc"] == pytest.approx(roc_auc_score(risky[matured], p[matured]), abs=1e-12)
    ks = ks_2samp(p[matured & risky], p[matured & ~risky]).statistic
    assert got["ks"] == pytest.approx(ks, abs=1e-12)


def test_outcomes_file_without_a_status_is_named(tmp_path: Path) -> None:
    path = tmp_path / "loan.csv"
    path.write_text("loanId,apr\nLL-1,300\n")
    with pytest.raises(ValueError, match=r"loan.csv: column\(s\) \['loanStatus'\] missing"):
        monitor.read_outcomes(path)


# --- the log window --------------------------------------------------------------------------------------


def test_window_parsing() -> None:
    assert monitor.parse_window("24h") == timedelta(hours=24)
    assert monitor.parse_window("7d") == timedelta(days=7)
    assert monitor.parse_window("90m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="'yesterday'"):
        monitor.parse_window("yesterday")


def test_read_window_filters_time_and_version_and_skips_a_torn_line(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    lines = [
        {"time": (now - timedelta(hours=1)).isoformat(), "model_version": "1", "id": "a"},
        {"time": (now - timedelta(hours=30)).isoformat(), "model_version": "1", "id": "old"},
        {"time": (now - timedelta(minutes=5)).isoformat(), "model_version": "2", "id": "other"},
    ]
    with gzip.open(tmp_path / "predictions-w1-0001.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in lines) + '\n{"time": "20')
    got = monitor.read_window(tmp_path, now - timedelta(hours=24), model_version="1")
    assert [r["id"] for r in got] == ["a"]
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        monitor.read_window(tmp_path / "does-not-exist", now)


# --- the drift option of the sample generator ----------------------------------------------------------


def test_drift_option_shifts_only_its_fields(tmp_path: Path) -> None:
    plain, drifted = tmp_path / "plain", tmp_path / "drifted"
    generate(plain, scale=0.005, seed=3)
    generate(drifted, scale=0.005, seed=3, drift="applicants")
    assert (plain / "payment.csv").read_bytes() == (drifted / "payment.csv").read_bytes()
    a, b = read_tables(plain), read_tables(drifted)
    shifted = SHIFTED_FIELDS["applicants"]
    for key in ("loan", "clarity"):
        for column in a[key].columns:
            same = a[key][column].equals(b[key][column])
            assert same == (column not in shifted), f"{key}.{column}"
    assert b["loan"]["apr"].mean() > 1.25 * a["loan"]["apr"].mean()
    assert b["clarity"]["clearfraudscore"].mean() < a["clarity"]["clearfraudscore"].mean() - 100
    assert (b["loan"]["leadType"] == "bvMandatory").mean() < 0.6 * (
        a["loan"]["leadType"] == "bvMandatory"
    ).mean()


def test_drifted_sample_still_passes_validation(tmp_path: Path) -> None:
    from tasks.data.validate import validate_tables

    generate(tmp_path / "d", scale=0.005, seed=3, drift="applicants")
    result = validate_tables(
        read_tables(tmp_path / "d"), max_quarantine_share=0.01, quarantine_dir=tmp_path / "q"
    )
    assert result.quarantined_rows <= 0.01 * sum(len(t) for t in result.tables.values())


def test_drifted_features_are_found_in_model_rows(tmp_path: Path, profile: dict[str, Any]) -> None:
    """The shifted files, featurised the training way, drift on the shifted features' model columns only."""
    generate(tmp_path / "d", scale=0.02, seed=8, drift="applicants")
    tables = read_tables(tmp_path / "d")
    shifted = build_model_table(
        tables["loan"], tables["clarity"], list(BAD_LABEL_STATUSES), list(GOOD_LABEL_STATUSES)
    )
    features = feature_frame(build_rows(shifted.records))
    report = monitor.drift_report(
        profile, _records(features, np.full(len(features), 0.4)), monitor.Thresholds()
    )
    assert set(report["drifted_features"]) == {"apr", "clearfraudscore", "leadType"}
