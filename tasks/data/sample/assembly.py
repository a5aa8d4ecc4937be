"""Assembly: the loans, their clarity reports, the known risk and the payments put together, written as the
three CSV files (plus ``true_risk.csv``); the public entry points :func:`generate`, :func:`oracle_auc` and the
command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data.contract import BAD_LABEL_STATUSES, COLUMNS, FILES, GOOD_LABEL_STATUSES
from tasks.data.sample import loans
from tasks.data.sample.clarity import IDV, IND, INQ, clarity_ids, clarity_presence, clarity_table
from tasks.data.sample.common import BASE_ROWS, DAY, T_END, T_START, Plan, hex_random
from tasks.data.sample.drift import SHIFTS, apply_drift
from tasks.data.sample.payments import STORY, PaidLoans, payments
from tasks.data.sample.risk import risk_logit, risk_probability

log = logging.getLogger(__name__)

RISK_FILE = "true_risk.csv"
MIN_SCALE = 0.005
READ_OPTIONS = {"keep_default_na": False, "na_values": [""], "low_memory": False}


def _format_times(seconds: np.ndarray, no_fraction: np.ndarray | None = None) -> np.ndarray:
    """ISO timestamps (``2016-02-23T17:29:01.940000``) from seconds after ``T_START``; some without fraction."""
    stamp = T_START.astype("datetime64[us]") + np.round(seconds * 1e6).astype("timedelta64[us]")
    out = np.datetime_as_string(stamp, unit="us").astype(object)
    if no_fraction is not None:
        out[no_fraction] = np.datetime_as_string(stamp[no_fraction], unit="s")
    return out


def _originated_dates(
    rng: np.random.Generator, plan: Plan, t: np.ndarray, originated: np.ndarray
) -> np.ndarray:
    """originatedDate (seconds) for originated loans plus a few others; usually hours after application."""
    n = len(t)
    has = originated.copy()
    has[rng.choice(np.flatnonzero(~originated), size=plan.n(38), replace=False)] = True
    lag = rng.exponential(6 * 3600.0, n) + 60.0
    lag = np.where(rng.random(n) < 0.02, -rng.exponential(3 * 3600.0, n), lag)
    secs = np.round((t + lag) * 1000.0) / 1000.0
    return np.where(has, secs, np.nan)


RISK_CLARITY_COLUMNS = [
    INQ["thirtydaysago"],
    IND["totalnumberoffraudindicators"],
    IDV["ssnnamematch"],
    IDV["overallmatchresult"],
    IDV["phonematchtype"],
    "clearfraudscore",
    "underwritingid",
]


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` with missing (None / NaN) where ``index`` is negative."""
    out = values[np.maximum(index, 0)]
    if values.dtype.kind == "f":
        return np.where(index < 0, np.nan, out)
    return np.where(index < 0, None, out.astype(object))


def _object_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """DataFrame keeping text columns as plain object dtype (cheaper than string inference)."""
    return pd.DataFrame(
        {k: pd.Series(v, dtype=object if v.dtype == object else None) for k, v in columns.items()}
    )


def _population(rng: np.random.Generator, plan: Plan) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loans in application-time order (units, funded flag, person, clarity id, report row: -1 for none) and
    the clarity table (matched reports, then orphans)."""
    pop, unit_base, n_ids = loans.structure(rng, plan)
    funded = loans.pick_funded(rng, plan, pop, n_ids)
    present = clarity_presence(rng, plan, pop, funded, n_ids)
    order = np.argsort(pop["t"], kind="stable")
    pop = {k: v[order] for k, v in pop.items()} | {"funded": funded[order]}
    person = loans.persons(rng, plan, np.bincount(pop["unit"], minlength=len(unit_base)))
    pop["ssn"] = hex_random(rng, int(person.max()) + 1, 32).astype(object)[person[pop["unit"]]]
    ids = clarity_ids(rng, unit_base[:n_ids])
    n_orphan = max(0, plan.n(BASE_ROWS["clarity"]) - int(present.sum()))
    orphan_base = float((T_END - T_START).astype(np.int64)) * rng.random(n_orphan)
    clarity = clarity_table(rng, plan, np.concatenate([ids[present], clarity_ids(rng, orphan_base)]))
    report_of_unit = np.where(present, np.cumsum(present) - 1, -1)
    cf_unit = np.where(pop["has_cf"], pop["unit"], 0)
    pop["report"] = np.where(pop["has_cf"], report_of_unit[cf_unit], -1)
    pop["fraud_id"] = np.where(pop["has_cf"], ids[cf_unit].astype(object), None)
    return pop, clarity


def build_tables(rng: np.random.Generator, plan: Plan) -> dict[str, dict[str, np.ndarray]]:
    """Generate all tables in memory (column name -> array): loan, payment, clarity and true risk."""
    pop, clarity = _population(rng, plan)
    funded, t = pop["funded"], pop["t"]
    out = loans.unfunded_outcomes(rng, plan, funded)
    loan = loans.application(rng, plan, funded, out["null_id"]) | {"hasCF": pop["has_cf"].astype(np.int64)}
    # the known risk from decision-time fields only: the application joined with its report
    frame = _object_frame(loan | {c: _take(clarity[c], pop["report"]) for c in RISK_CLARITY_COLUMNS})
    frame["applicationDate"] = T_START.astype("datetime64[ms]") + np.round(t * 1000).astype("timedelta64[ms]")
    p_risky = risk_probability(risk_logit(frame))
    risky = (rng.random(len(funded)) < p_risky)[funded]
    t_frac = t[funded] / float((T_END - T_START).astype(np.int64))
    out["status"][funded] = loans.funded_statuses(rng, risky, t_frac)
    origin_secs = _originated_dates(rng, plan, t, out["originated"])
    loan |= {
        "loanId": loans.loan_ids(rng, plan, loan, out["null_id"], funded),
        "anon_ssn": pop["ssn"],
        "applicationDate": _format_times(t),
        "originated": out["originated"],
        "originatedDate": _originated_strings(rng, origin_secs),
        "approved": out["approved"],
        "isFunded": funded.astype(np.int64),
        "loanStatus": out["status"],
        "clarityFraudId": pop["fraud_id"],
    }
    file_order = rng.permutation(len(funded))
    payment = _payment_table(rng, plan, loan, funded, out, origin_secs, file_order)
    has_id = file_order[pd.notna(loan["loanId"][file_order])]
    shuffle = rng.permutation(len(clarity["underwritingid"]))
    return {
        "loan": {c: loan[c][file_order] for c in COLUMNS["loan"]},
        "payment": {c: payment[c] for c in COLUMNS["payment"]},
        "clarity": {c: clarity[c][shuffle] for c in COLUMNS["clarity"]},
        "risk": {"loanId": loan["loanId"][has_id], "p_risky": np.round(p_risky[has_id], 6)},
    }


def _originated_strings(rng: np.random.Generator, secs: np.ndarray) -> np.ndarray:
    """originatedDate strings (blank where missing; ~3% without the fraction)."""
    has = ~np.isnan(secs)
    out = np.full(len(secs), None, dtype=object)
    out[has] = _format_times(secs[has], rng.random(int(has.sum())) < 0.03)
    return out


def _payment_table(
    rng: np.random.Generator,
    plan: Plan,
    loan: dict[str, np.ndarray],
    funded: np.ndarray,
    out: dict[str, np.ndarray],
    origin_secs: np.ndarray,
    file_order: np.ndarray,
) -> dict[str, np.ndarray]:
    """Choose the loans with payments, generate their rows and fill in loan.csv's fpStatus."""
    n = len(funded)
    funded_idx = np.flatnonzero(funded)
    no_pay = rng.choice(funded_idx, size=min(plan.n(30), len(funded_idx)), replace=False)
    with_pay = funded.copy()
    with_pay[no_pay] = False
    with_pay[out["paid_unfunded"]] = True
    rank = np.argsort(file_order)  # each loan's row in loan.csv
    idx = np.flatnonzero(with_pay)
    idx = idx[np.argsort(rank[idx], kind="stable")]
    amount = loan["loanAmount"][idx]
    days = (np.nan_to_num(origin_secs[idx]) // DAY).astype("timedelta64[D]")  # originated, after T_START
    paid = PaidLoans(
        freq=loan["payFrequency"][idx],
        amount=np.where(np.isnan(amount), 300.0, amount),
        scheduled=loan["originallyScheduledPaymentAmount"][idx],
        start_day=T_START.astype("datetime64[D]") + days,
        story=np.array([STORY.get(s, 6) for s in loan["loanStatus"][idx]]),
    )
    payment, first = payments(rng, plan, paid, loan["loanId"][idx])
    fp = np.full(n, None, dtype=object)
    fp[idx] = np.where(first == "None", None, first)
    fp[no_pay] = "No Schedule"
    fp[out["paid_unfunded"]] = "No Payments"
    unfunded = np.flatnonzero(~funded & ~with_pay)
    prefer = unfunded[np.argsort(~out["originated"][unfunded], kind="stable")]
    counts = {
        "No Payments": max(0, plan.n(11_427) - len(out["paid_unfunded"])),
        "No Schedule": plan.n(1_323 - 30),
    }
    fp[prefer[: sum(counts.values())]] = loans.labels(rng, counts)
    loan["fpStatus"] = fp
    return payment


# ------------------------------------------------------------------------------------------ public API
def generate(out_dir: str | Path, scale: float = 1.0, seed: int = 42, drift: str | None = None) -> dict:
    """Write the three files and ``true_risk.csv`` with ``round(scale x BASE_ROWS)`` rows (scale floored at
    ``MIN_SCALE``), byte-identical per seed; ``drift`` names a shift. Returns row counts and paths per file."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan(max(float(scale), MIN_SCALE))  # below MIN_SCALE some relations would not hold
    tables = build_tables(np.random.default_rng(seed), plan)
    if drift is not None:
        tables = apply_drift(tables, drift, seed)
    files = FILES | {"risk": RISK_FILE}
    for key, name in files.items():  # True/False, shortest float repr, blank for missing
        _object_frame(tables[key]).to_csv(out / name, index=False, lineterminator="\n")
    rows = {key: len(next(iter(tables[key].values()))) for key in files}
    log.info("sample written to %s (scale %s, seed %s): %s", out, plan.f, seed, rows)
    return {"rows": rows, "paths": {key: str(out / name) for key, name in files.items()}}


def label_frame(loan: pd.DataFrame) -> pd.DataFrame:
    """Labelled loans (1 = risky, 0 = good) with ``loanId``, ``applicationDate`` and ``label``."""
    status = loan["loanStatus"]
    keep = (status.isin(BAD_LABEL_STATUSES) | status.isin(GOOD_LABEL_STATUSES)) & loan["loanId"].notna()
    out = loan.loc[keep, ["loanId", "applicationDate"]].copy()
    out["label"] = status[keep].isin(BAD_LABEL_STATUSES).astype(int)
    return out


def oracle_auc(out_dir: str | Path, test_share: float = 0.15) -> float:
    """ROC-AUC of ``true_risk.csv``'s p_risky against the drawn label on the latest ``test_share`` of loans."""
    from sklearn.metrics import roc_auc_score

    out = Path(out_dir)
    columns = ["loanId", "applicationDate", "loanStatus"]
    # 100k rows at a time, keeping the labelled loans only (~7%): whole columns would cost ~0.25 GB.
    chunks = pd.read_csv(out / FILES["loan"], usecols=columns, chunksize=100_000, **READ_OPTIONS)
    labelled = pd.concat([label_frame(chunk) for chunk in chunks], ignore_index=True)
    ids = set(labelled["loanId"])
    risk = pd.concat(
        [c[c["loanId"].isin(ids)] for c in pd.read_csv(out / RISK_FILE, chunksize=100_000, **READ_OPTIONS)],
        ignore_index=True,
    )
    data = labelled.merge(risk, on="loanId", how="inner", validate="1:1")
    data["t"] = pd.to_datetime(data["applicationDate"], format="ISO8601")
    data = data.sort_values(["t", "loanId"], kind="stable")
    test = data.iloc[int(len(data) * (1 - test_share)) :]
    return float(roc_auc_score(test["label"], test["p_risky"]))


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m tasks.data.sample OUT_DIR [--scale F] [--seed N] [--drift NAME]``; prints one JSON line."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.data.sample", description="Write the synthetic loan dataset (three CSV files)."
    )
    parser.add_argument("out_dir")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--drift", choices=sorted(SHIFTS), help="shift some applicant fields (tasks.data.sample.drift)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = generate(args.out_dir, args.scale, args.seed, args.drift)
    seconds = time.perf_counter() - started
    report = {k: v for k, v in vars(args).items() if v is not None} | {"rows": result["rows"]}
    report |= {"oracle_auc": round(oracle_auc(args.out_dir), 4), "seconds": round(seconds, 2)}
    sys.stdout.write(json.dumps(report) + "\n")
    return 0
