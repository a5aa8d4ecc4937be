"""The synthetic loan dataset: shape, formats, categories, key relations, determinism and the known risk."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tasks.data import sample

SCALE, SEED = 0.02, 42
READ = {"keep_default_na": False, "na_values": [""], "low_memory": False}

# Expected shape, written out from docs/dataset.md (not imported from the module under test).
LOAN_COLUMNS = (
    "loanId,anon_ssn,payFrequency,apr,applicationDate,originated,originatedDate,nPaidOff,approved,isFunded,"
    "loanStatus,loanAmount,originallyScheduledPaymentAmount,state,leadType,leadCost,fpStatus,clarityFraudId,hasCF"
).split(",")
PAYMENT_COLUMNS = (
    "loanId,installmentIndex,isCollection,paymentDate,principal,fees,paymentAmount,paymentStatus,paymentReturnCode"
).split(",")
INQUIRY = (
    "thirtydaysago twentyfourhoursago oneminuteago onehourago ninetydaysago sevendaysago tenminutesago "
    "fifteendaysago threesixtyfivedaysago"
).split()
INDICATOR = (
    "inquiryonfilecurrentaddressconflict totalnumberoffraudindicators telephonenumberinconsistentwithaddress "
    "inquiryageyoungerthanssnissuedate onfileaddresscautious inquiryaddressnonresidential onfileaddresshighrisk "
    "ssnreportedmorefrequentlyforanother currentaddressreportedbytradeopenlt90days inputssninvalid "
    "inputssnissuedatecannotbeverified inquiryaddresscautious morethan3inquiriesinthelast30days "
    "onfileaddressnonresidential creditestablishedpriortossnissuedate driverlicenseformatinvalid "
    "inputssnrecordedasdeceased inquiryaddresshighrisk inquirycurrentaddressnotonfile "
    "bestonfilessnissuedatecannotbeverified highprobabilityssnbelongstoanother maxnumberofssnswithanybankaccount "
    "bestonfilessnrecordedasdeceased currentaddressreportedbynewtradeonly creditestablishedbeforeage18 "
    "telephonenumberinconsistentwithstate driverlicenseinconsistentwithonfile "
    "workphonepreviouslylistedascellphone workphonepreviouslylistedashomephone"
).split()
IDENTITY = (
    "ssnnamematch nameaddressmatch phonematchtype ssnnamereasoncodedescription phonematchresult "
    "nameaddressreasoncodedescription phonematchtypedescription overallmatchresult phonetype ssndobreasoncode "
    "ssnnamereasoncode nameaddressreasoncode ssndobmatch overallmatchreasoncode"
).split()
P = ".underwritingdataclarity.clearfraud."
CLARITY_COLUMNS = (
    [f"{P}clearfraudinquiry.{n}" for n in INQUIRY]
    + [f"{P}clearfraudindicator.{n}" for n in INDICATOR]
    + [f"{P}clearfraudidentityverification.{n}" for n in IDENTITY]
    + ["clearfraudscore", "underwritingid"]
)
RISKY = {
    "External Collection", "Internal Collection", "Returned Item", "Charged Off", "Charged Off Paid Off",
    "Settled Bankruptcy", "Settlement Paid Off", "Settlement Pending Paid Off",
}  # fmt: skip
GOOD = {"Paid Off Loan", "New Loan", "Pending Paid Off"}
LOAN_STATUS = RISKY | GOOD | {
    "Withdrawn Application", "Rejected", "CSR Voided New Loan", "Credit Return Void", "Customer Voided New Loan",
    "Pending Application Fee", "Pending Rescind", "Pending Application", "Voided New Loan",
    "Customver Voided New Loan",
}  # fmt: skip
STATES = set(
    "OH IL TX MO WI MI TN NC FL IN SC CA NV PA VA NJ UT AL MS CO LA AZ NM KY SD MN GA OK WY CT WA KS IA DE ID "
    "RI NE HI AK ND NY MD OH-TEST TX-TEST".split()
)
ALLOWED = {
    "payFrequency": {"B", "W", "M", "I", "S"},
    "loanStatus": LOAN_STATUS,
    "state": STATES,
    "leadType": {"bvMandatory", "lead", "organic", "prescreen", "rc_returning", "california", "lionpay",
                 "repeat", "instant-offer", "express"},
    "fpStatus": {"Checked", "No Payments", "Rejected", "No Schedule", "Cancelled", "Skipped", "Pending",
                 "Returned"},
}  # fmt: skip
PAYMENT_STATUS = {"Cancelled", "Checked", "None", "Rejected", "Pending", "Skipped", "Rejected Awaiting Retry",
                  "Complete", "Returned"}  # fmt: skip
RETURN_CODES = set(
    "R01 R02 R08 R16 R10 MISSED R03 RXS R09 R07 C01 C02 C03 C05 LPP01 R04 R06 R13 R15 R19 R20 R29 R99 RAF RBW "
    "RFG RIR RUP RWC RXL".split()
)
FILES = ("loan.csv", "payment.csv", "clarity_underwriting_variables.csv")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample at scale 0.02, seed 42."""
    out = tmp_path_factory.mktemp("sample-a")
    sample.generate(out, scale=SCALE, seed=SEED)
    return out


@pytest.fixture(scope="module")
def loan(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "loan.csv", **READ)


@pytest.fixture(scope="module")
def payment(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "payment.csv", **READ)


@pytest.fixture(scope="module")
def clarity(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "clarity_underwriting_variables.csv", **READ)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\n").split(",")


def _labelled(loan: pd.DataFrame) -> pd.DataFrame:
    out = loan[loan["loanStatus"].isin(RISKY | GOOD) & loan["loanId"].notna()].copy()
    out["label"] = out["loanStatus"].isin(RISKY).astype(int)
    return out


# ------------------------------------------------------------------------------------------ shape


def test_exact_columns_and_order(out_dir: Path) -> None:
    assert _header(out_dir / "loan.csv") == LOAN_COLUMNS
    assert _header(out_dir / "payment.csv") == PAYMENT_COLUMNS
    assert _header(out_dir / "clarity_underwriting_variables.csv") == CLARITY_COLUMNS
    assert len(CLARITY_COLUMNS) == 54 and "clearfraudscore" in CLARITY_COLUMNS


def test_row_counts_scale(loan: pd.DataFrame, payment: pd.DataFrame, clarity: pd.DataFrame) -> None:
    assert len(loan) == round(SCALE * 577_682)
    assert len(payment) == round(SCALE * 689_364)
    assert len(clarity) == round(SCALE * 49_752)


def test_tiny_scale_keeps_relations(tmp_path: Path) -> None:
    rows = sample.generate(tmp_path, scale=1e-6, seed=1)["rows"]
    assert rows["loan"] >= 500 and rows["payment"] >= 500 and rows["clarity"] >= 100
    loan = pd.read_csv(tmp_path / "loan.csv", **READ)
    assert len(_labelled(loan)) >= 100
    with pytest.raises(ValueError):
        sample.generate(tmp_path, scale=0)


def test_value_formats(loan: pd.DataFrame, payment: pd.DataFrame, out_dir: Path) -> None:
    assert loan["applicationDate"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}").all()
    orig = loan["originatedDate"].dropna()
    assert orig.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?").all()
    assert (~orig.str.contains(".", regex=False)).any(), "some originatedDate values lack the fraction"
    inst = payment.loc[~payment["isCollection"], "paymentDate"]
    assert inst.str.fullmatch(r"\d{4}-\d\d-\d\dT0[45]:00:00").all()
    assert set(inst.str[11:13]) == {"04", "05"}
    assert loan["anon_ssn"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert loan["clarityFraudId"].dropna().str.fullmatch(r"[0-9a-f]{24}").all()
    ids = loan["loanId"].dropna()
    assert ids.str.fullmatch(r"(LL-I-|LL-T-|LP-I-)\d{8}").all()
    assert ids.str.startswith("LL-T-").any() and ids.str.startswith("LP-I-").any()
    text = (out_dir / "loan.csv").read_text(encoding="utf-8")
    assert ",True," in text and ",False," in text
    assert loan["originated"].dtype == bool and loan["approved"].dtype == bool
    assert set(loan["isFunded"]) == {0, 1} and set(loan["hasCF"]) == {0, 1}
    assert payment["isCollection"].dtype == bool
    assert (payment["paymentStatus"] == "None").any(), (
        "literal None status must survive keep_default_na=False"
    )


def test_null_patterns(loan: pd.DataFrame) -> None:
    null_id = loan["loanId"].isna()
    assert null_id.sum() >= 2
    assert loan.loc[null_id, ["loanStatus", "apr", "loanAmount"]].isna().all().all()
    assert loan["loanStatus"].isna().sum() > null_id.sum()
    assert loan["originallyScheduledPaymentAmount"].notna().all()
    assert loan["originatedDate"].notna().sum() >= loan["originated"].sum()


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(out_dir: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    sample.generate(again, scale=SCALE, seed=SEED)
    sample.generate(other, scale=SCALE, seed=SEED + 1)
    for name in (*FILES, "true_risk.csv"):
        assert (again / name).read_bytes() == (out_dir / name).read_bytes(), name
        assert (other / name).read_bytes() != (out_dir / name).read_bytes(), name


# -------------------------------------------------------------------------------------- key relations


def test_key_relations(loan: pd.DataFrame, payment: pd.DataFrame, clarity: pd.DataFrame) -> None:
    ids = loan["loanId"].dropna()
    assert ids.is_unique
    assert set(payment["loanId"]) <= set(ids)
    assert (loan["hasCF"] == 1).equals(loan["clarityFraudId"].notna())
    assert clarity["underwritingid"].notna().all() and clarity["underwritingid"].is_unique
    funded = loan["isFunded"] == 1
    assert (loan.loc[funded, "originated"] & loan.loc[funded, "approved"]).all()
    assert (loan["originated"] | ~loan["approved"]).all()
    cf_ids = set(loan["clarityFraudId"].dropna())
    matched = clarity["underwritingid"].isin(cf_ids)
    assert 0.5 < matched.mean() < 0.8, "some clarity rows match no loan"
    assert len(cf_ids & set(clarity["underwritingid"])) < 0.2 * len(cf_ids)
    share = loan.loc[funded, "clarityFraudId"].isin(set(clarity["underwritingid"])).mean()
    assert 0.75 < share < 0.9
    assert loan["clarityFraudId"].value_counts().max() <= 15
    assert loan["anon_ssn"].value_counts().max() <= 35
    assert 1.1 < len(loan) / loan["anon_ssn"].nunique() < 1.45


def test_payments_mostly_funded(loan: pd.DataFrame, payment: pd.DataFrame) -> None:
    paid = loan[loan["loanId"].isin(set(payment["loanId"]))]
    assert paid["isFunded"].mean() > 0.9 and (paid["isFunded"] == 0).any()
    per_loan = payment.groupby("loanId").size()
    assert 12 < per_loan.mean() < 23 and per_loan.max() <= 105


def test_loan_ids_rise_with_application_date(loan: pd.DataFrame) -> None:
    ll = loan[loan["loanId"].str.startswith("LL-", na=False)]
    ll = ll.assign(number=ll["loanId"].str[5:].astype(int)).sort_values("number")
    assert ll["number"].is_unique
    assert ll["applicationDate"].is_monotonic_increasing


def test_clarity_id_time_precedes_application(loan: pd.DataFrame) -> None:
    cf = loan.dropna(subset=["clarityFraudId"])
    id_time = pd.to_datetime(cf["clarityFraudId"].str[:8].map(lambda h: int(h, 16)), unit="s")
    app = pd.to_datetime(cf["applicationDate"], format="ISO8601")
    lag_days = (app - id_time).dt.total_seconds() / 86_400
    assert (lag_days >= -1 / 1440).all() and lag_days.median() < 1


def test_collection_rows_restart_at_one(payment: pd.DataFrame) -> None:
    coll = payment[payment["isCollection"]]
    assert len(coll) > 0
    assert (coll.groupby("loanId")["installmentIndex"].min() == 1).all()
    inst = payment[~payment["isCollection"]]
    assert (inst.groupby("loanId")["installmentIndex"].min() == 1).all()


def test_cancelled_none_same_date_pairs(payment: pd.DataFrame) -> None:
    prev = payment.shift(1)
    pair = (
        (payment["loanId"] == prev["loanId"])
        & (payment["paymentDate"] == prev["paymentDate"])
        & (prev["paymentStatus"] == "Cancelled")
        & (payment["paymentStatus"] == "None")
        & (payment["installmentIndex"] == prev["installmentIndex"] + 1)
    )
    assert pair.any()


# ---------------------------------------------------------------------------------------- categories


def test_categories_within_allowed_sets(
    loan: pd.DataFrame, payment: pd.DataFrame, clarity: pd.DataFrame
) -> None:
    for column, allowed in ALLOWED.items():
        assert set(loan[column].dropna()) <= allowed, column
    assert set(payment["paymentStatus"]) <= PAYMENT_STATUS
    assert set(payment["paymentReturnCode"].dropna()) <= RETURN_CODES
    assert payment["paymentReturnCode"].isna().mean() > 0.9
    identity = f"{P}clearfraudidentityverification."
    assert set(clarity[identity + "ssnnamematch"].dropna()) <= {"match", "partial", "mismatch", "unavailable",
                                                                "invalid"}  # fmt: skip
    assert set(clarity[identity + "overallmatchresult"].dropna()) <= {"partial", "match", "other", "mismatch"}
    assert set(clarity[identity + "phonematchtype"].dropna()) <= {"M", "U", "FA", "LA", "A", "F", "P", "L"}
    pairs = clarity[[identity + "phonematchtype", identity + "phonematchtypedescription"]].drop_duplicates()
    assert pairs[identity + "phonematchtype"].is_unique, "phonematchtypedescription is one-to-one"
    score = clarity["clearfraudscore"].dropna()
    assert score.between(122, 965).all()


def test_shares_near_published(loan: pd.DataFrame) -> None:
    funded = loan["isFunded"] == 1
    assert abs(funded.mean() - 0.0675) < 0.005
    assert abs(loan["payFrequency"].eq("B").mean() - 316_654 / 577_682) < 0.01
    assert abs(loan["loanStatus"].eq("Withdrawn Application").mean() - 450_984 / 577_682) < 0.01
    assert loan.loc[~funded, "loanStatus"].dropna().isin(LOAN_STATUS - GOOD).all()


# ------------------------------------------------------------------------------------- label and risk


def test_label_share_and_count(loan: pd.DataFrame) -> None:
    labelled = _labelled(loan)
    assert len(labelled) >= 500
    assert 0.43 < labelled["label"].mean() < 0.56


def test_true_risk_is_separate(out_dir: Path, loan: pd.DataFrame) -> None:
    risk = pd.read_csv(out_dir / "true_risk.csv", **READ)
    assert list(risk.columns) == ["loanId", "p_risky"]
    assert risk["p_risky"].between(0, 1).all()
    assert set(_labelled(loan)["loanId"]) <= set(risk["loanId"])
    for name in FILES:
        assert not {"p_risky", "true_risk", "label"} & set(_header(out_dir / name)), name


def test_true_risk_predicts_label(out_dir: Path, loan: pd.DataFrame) -> None:
    risk = pd.read_csv(out_dir / "true_risk.csv", **READ)
    data = _labelled(loan).merge(risk, on="loanId")
    assert roc_auc_score(data["label"], data["p_risky"]) > 0.75
    assert 0.6 < sample.oracle_auc(out_dir) <= 1.0


def test_risk_uses_decision_time_fields_only(
    loan: pd.DataFrame, clarity: pd.DataFrame, out_dir: Path
) -> None:
    decision = [c for c in loan.columns if c not in {"loanStatus", "fpStatus", "originated", "originatedDate",
                                                     "approved", "isFunded"}]  # fmt: skip
    frame = loan[decision].merge(clarity, how="left", left_on="clarityFraudId", right_on="underwritingid")
    frame = frame[frame["loanId"].notna()]
    p = sample.risk_probability(sample.risk_logit(frame))
    risk = pd.read_csv(out_dir / "true_risk.csv", **READ).set_index("loanId")["p_risky"]
    assert np.allclose(p, risk.loc[frame["loanId"]].to_numpy(), atol=2e-6)


def test_outcome_fields_leak_the_label(loan: pd.DataFrame, payment: pd.DataFrame) -> None:
    labelled = _labelled(loan)
    pay = payment.assign(
        rejected=payment["paymentStatus"].isin(["Rejected", "Rejected Awaiting Retry"]),
        code=payment["paymentReturnCode"].notna(),
    )
    per_loan = pay.groupby("loanId")[["rejected", "code", "isCollection"]].sum()
    data = labelled.join(per_loan, on="loanId").fillna(0.0)
    fp_rejected = data["fpStatus"].eq("Rejected").astype(float)
    assert roc_auc_score(data["label"], data["rejected"] + data["code"]) > 0.85
    risky, good = data[data["label"] == 1], data[data["label"] == 0]
    assert fp_rejected[risky.index].mean() > 3 * fp_rejected[good.index].mean()
    assert not data.loc[data["isCollection"] > 0, "label"].eq(0).any(), (
        "collection plans only for risky loans"
    )


def test_unfunded_loans_get_non_label_statuses(loan: pd.DataFrame) -> None:
    unfunded = loan[loan["isFunded"] == 0]
    assert unfunded["loanStatus"].isin(RISKY | GOOD).mean() < 0.001


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_prints_one_json_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample.main([str(tmp_path), "--scale", "0.01", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["rows"]["loan"] == round(0.01 * 577_682)
    assert {"oracle_auc", "seconds"} <= set(report)
    assert all((tmp_path / name).exists() for name in (*FILES, "true_risk.csv"))


@pytest.mark.slow
@pytest.mark.nightly
def test_full_scale_counts_and_oracle_auc(tmp_path: Path) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        rows = sample.generate(tmp_path, scale=1.0, seed=SEED)["rows"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Python allocations at their highest while generating: 866 MB when the files' text was made whole and the
    # statuses were unicode arrays, 550 MB since (the training flow's memory goal counts this in its ingest).
    assert peak < 640 * 2**20, f"generating the full-size sample peaked at {peak / 2**20:.0f} MB"
    assert (rows["loan"], rows["payment"], rows["clarity"]) == (577_682, 689_364, 49_752)
    assert 0.80 <= sample.oracle_auc(tmp_path) <= 0.88
    loan = pd.read_csv(tmp_path / "loan.csv", usecols=["loanId", "loanStatus"], **READ)
    labelled = _labelled(loan)
    assert abs(len(labelled) - 38_990) < 200 and 0.46 < labelled["label"].mean() < 0.53
    assert re.fullmatch(r"\d+", str(rows["risk"]))


# ------------------------------------------------------------------------------------------------ contract


def test_generator_draws_only_what_the_dataset_contract_knows() -> None:
    """The generator's count tables use the contract's names: no status or category of its own."""
    from tasks.data import contract as dataset
    from tasks.data.sample import clarity, loans, payments

    assert tuple(clarity.INDICATOR_SHARES) == dataset.INDICATOR_FIELDS  # same columns, same draw order
    statuses = (set(loans.UNFUNDED_STATUS) | set(loans.FUNDED_RISKY)) - {None}
    assert statuses <= set(dataset.LOAN_STATUSES)
    assert set(loans.FUNDED_RISKY) <= set(dataset.BAD_LABEL_STATUSES)
    assert set(loans.PAY_FREQ_ALL) - {None} <= set(dataset.PAY_FREQUENCIES)
    assert set(loans.LEAD_ALL) <= set(dataset.LEAD_TYPES)
    states = set(loans.STATE_TOP) | set(loans.STATE_REST) | set(loans.STATE_RARE)
    assert states <= set(dataset.STATES) and len(states) == 44
    assert set(payments.STORY) <= set(dataset.BAD_LABEL_STATUSES) | set(dataset.GOOD_LABEL_STATUSES)


def test_split_into_a_package_kept_the_bytes(tmp_path: Path) -> None:
    """The files of seed 1 at the smallest scale, hashed from the single-module generator before the split."""
    import hashlib

    sample.generate(tmp_path, scale=0.005, seed=1)
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(tmp_path.iterdir())}
    assert got == {
        "clarity_underwriting_variables.csv": "9b589ec3a43ed5fa",
        "loan.csv": "95b6cb1e149371a5",
        "payment.csv": "abf505a53f29c11e",
        "true_risk.csv": "835e0402fdad9301",
    }


def test_module_cli_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "tasks.data.sample", str(tmp_path), "--scale", "0.005", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    assert json.loads(out)["rows"]["loan"] == round(0.005 * 577_682)
