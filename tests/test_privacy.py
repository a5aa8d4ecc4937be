"""Personal data stops at the feature boundary: keyed pseudonyms, the key's keeping, and what a bundle may hold."""

from __future__ import annotations

import math
import secrets
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from serving.bundle import BundleError, BundleMeta, write_bundle
from serving.features import build_rows
from serving.privacy import (
    KEY_FILE,
    REFERENCE_FIELDS,
    Pseudonymiser,
    load_key,
    reference_record,
    reference_records,
)
from tasks.model.features import ModelTable
from tasks.settings import Settings
from tests.test_features import RECORD

KEY = Pseudonymiser(b"privacy-tests-key")


def test_pseudonyms_are_keyed_stable_and_keep_missing_values() -> None:
    assert KEY.token("LL-I-07399092") == KEY.token("LL-I-07399092")
    assert len(KEY.token("LL-I-07399092")) == 32 and "07399092" not in KEY.token("LL-I-07399092")
    assert KEY.token("LL-I-07399092") != Pseudonymiser(b"other-key").token("LL-I-07399092")
    assert KEY.token("LL-I-07399092") != KEY.token("LL-I-07399093")
    for missing in (None, "", math.nan):
        assert KEY.token(missing) is missing and KEY.clarity_id(missing) is missing
    assert "privacy-tests-key" not in repr(KEY)


def test_clarity_pseudonym_keeps_the_report_time_only() -> None:
    original = "5669ef78e4b0c9d3936440e6"
    pseudonym = KEY.clarity_id(original)
    assert len(pseudonym) == 24 and pseudonym[:8] == original[:8] and pseudonym[8:] != original[8:]
    assert KEY.clarity_id(original.upper()) == pseudonym  # the id's case does not matter
    assert KEY.field("underwritingid", original) == KEY.field("clarityFraudId", original) == pseudonym
    assert KEY.clarity_id("not-an-object-id") == KEY.token("not-an-object-id")  # malformed: a plain token


def test_reference_record_keeps_what_the_features_read_and_gives_the_same_row() -> None:
    record = {**RECORD, "loanStatus": "Paid Off Loan", "underwritingid": RECORD["clarityFraudId"]}
    clean = reference_record(record, KEY)
    assert set(clean) <= REFERENCE_FIELDS and not {
        "loanId",
        "anon_ssn",
        "underwritingid",
        "loanStatus",
    } & set(clean)
    assert clean["clarityFraudId"] == KEY.clarity_id(RECORD["clarityFraudId"])
    records = reference_records([record, {**record, "clarityFraudId": None, "hasCF": 0}], KEY)
    assert [r["clarityFraudId"] for r in records] == [clean["clarityFraudId"], None]
    assert pd.DataFrame(build_rows(records)).equals(pd.DataFrame(build_rows([record, records[1]])))


def test_write_bundle_refuses_identifiers_in_the_reference(tmp_path: Path) -> None:
    from catboost import CatBoostClassifier

    model = CatBoostClassifier(iterations=2, verbose=0, allow_writing_files=False)
    model.fit([[0.0], [1.0]], [0, 1])
    meta = BundleMeta(model_name="loan-risk", threshold=0.5)
    with pytest.raises(BundleError, match="'anon_ssn'") as err:
        write_bundle(tmp_path / "b", model, meta, {"records": [RECORD], "probabilities": [0.5]})
    assert RECORD["anon_ssn"] not in str(err.value) and "loanId" in str(err.value)
    assert not (tmp_path / "b").exists()
    ok = {"records": [reference_record(RECORD, KEY)], "probabilities": [0.5]}
    assert (write_bundle(tmp_path / "b", model, meta, ok) / "reference.json").is_file()


def test_training_reference_sample_holds_no_identifier() -> None:
    from tasks.model.package import reference_sample

    records = [{**RECORD, "loanId": f"LL-I-{i:08d}", "anon_ssn": f"{i:032x}"} for i in range(10)]
    table = ModelTable.from_records(records, np.zeros(10), np.zeros(10), [r["loanId"] for r in records])
    reference = reference_sample(table, [i / 10 for i in range(10)], 5, KEY)
    assert len(reference["records"]) == len(reference["probabilities"]) == 5
    text = repr(reference)
    assert "LL-I-" not in text and "anon_ssn" not in text and RECORD["clarityFraudId"] not in text
    assert {k for r in reference["records"] for k in r} <= REFERENCE_FIELDS


def test_key_is_made_once_kept_0600_and_the_setting_wins(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "state" / "secrets"
    key = load_key(None, secrets_dir)
    path = secrets_dir / KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert load_key(None, secrets_dir) == key  # stable across runs
    given = "from-the-setting-" + secrets.token_hex(16)  # made per run: a literal key would be published
    assert load_key(given, secrets_dir) == given.encode()
    path.write_text("not hex\n")
    with pytest.raises(ValueError, match="remove it"):
        load_key(None, secrets_dir)


def test_settings_pseudonymiser_uses_the_env_key_or_the_kept_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = Settings(state_dir=tmp_path).pseudonymiser()
    assert (tmp_path / "secrets" / KEY_FILE).is_file()
    assert Settings(state_dir=tmp_path).pseudonymiser().token("x") == kept.token("x")
    operator_key = "operator-key-" + secrets.token_hex(16)  # made per run: a literal key would be published
    monkeypatch.setenv("LOANRISK_PSEUDONYM_KEY", operator_key)
    from_env = Settings(state_dir=tmp_path).pseudonymiser()
    assert from_env.token("x") == Pseudonymiser(operator_key.encode()).token("x") != kept.token("x")
    assert operator_key not in repr(Settings(state_dir=tmp_path))


def test_label_statuses_must_be_dataset_statuses(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="Paid Of Loan"):
        Settings(state_dir=tmp_path, label_good_statuses=["Paid Of Loan"])


def test_the_kept_keys_text_given_as_the_setting_is_the_same_key(tmp_path: Path) -> None:
    """An operator gives the service (LOANRISK_PSEUDONYM_KEY) the training side's kept key file: the same key,
    so the prediction log's ids join the outcomes pseudonymised by training and the monitor."""
    secrets_dir = tmp_path / "secrets"
    kept = load_key(None, secrets_dir)
    text = (secrets_dir / KEY_FILE).read_text()
    assert load_key(text, tmp_path / "elsewhere") == kept
    assert load_key(text.strip().upper(), tmp_path / "elsewhere") == kept
    text_key = "0123abcd" * 4 + "-" + secrets.token_hex(8)  # hex digits, but not only: taken as text
    assert load_key(text_key, tmp_path) == text_key.encode()
