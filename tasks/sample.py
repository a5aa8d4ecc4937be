"""Synthetic stand-in for the MoneyLion loan dataset (``loan.csv``, ``payment.csv``,
``clarity_underwriting_variables.csv``).

The three files have exactly the real files' columns, value formats, categories, key relations and quirks
(see ``docs/dataset.md``). Whether a funded loan turns out risky is drawn from a known probability that
depends on decision-time fields only (the application and the clarity report) plus an unobserved noise
term; that probability is written to a separate ``true_risk.csv`` so the best achievable ROC-AUC (the
"oracle") is known. Outcome fields (loanStatus, fpStatus, every payment field) are drawn from the label, so
they leak it the way the real outcome fields do.

Read the files back with ``pd.read_csv(path, keep_default_na=False, na_values=[""])`` to keep the literal
``None`` payment status (pandas would otherwise read it as missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- constants
BASE_ROWS = {"loan": 577_682, "payment": 689_364, "clarity": 49_752}
MIN_SCALE = 0.005
DAY = 86_400.0
T_START = np.datetime64("2014-12-03T00:00:00", "s")
T_END = np.datetime64("2017-03-18T23:59:59", "s")
SNAPSHOT = np.datetime64("2017-03-18", "D")
LAST_PAYMENT = np.datetime64("2021-02-26", "D")
EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
READ_OPTIONS = {"keep_default_na": False, "na_values": [""], "low_memory": False}

# fmt: off
LOAN_FILE, PAYMENT_FILE, CLARITY_FILE, RISK_FILE = (
    "loan.csv", "payment.csv", "clarity_underwriting_variables.csv", "true_risk.csv",
)
LOAN_COLUMNS = [
    "loanId", "anon_ssn", "payFrequency", "apr", "applicationDate", "originated", "originatedDate",
    "nPaidOff", "approved", "isFunded", "loanStatus", "loanAmount", "originallyScheduledPaymentAmount",
    "state", "leadType", "leadCost", "fpStatus", "clarityFraudId", "hasCF",
]
PAYMENT_COLUMNS = [
    "loanId", "installmentIndex", "isCollection", "paymentDate", "principal", "fees", "paymentAmount",
    "paymentStatus", "paymentReturnCode",
]

CLARITY_PREFIX = ".underwritingdataclarity.clearfraud."
INQUIRY_FIELDS = [
    "thirtydaysago", "twentyfourhoursago", "oneminuteago", "onehourago", "ninetydaysago", "sevendaysago",
    "tenminutesago", "fifteendaysago", "threesixtyfivedaysago",
]
# Indicator -> share True before the fraud-factor shift (None: a numeric column).
INDICATOR_FIELDS: dict[str, float | None] = {
    "inquiryonfilecurrentaddressconflict": 0.12, "totalnumberoffraudindicators": None,
    "telephonenumberinconsistentwithaddress": 0.92, "inquiryageyoungerthanssnissuedate": 0.01,
    "onfileaddresscautious": 0.02, "inquiryaddressnonresidential": 0.03, "onfileaddresshighrisk": 0.02,
    "ssnreportedmorefrequentlyforanother": 0.05, "currentaddressreportedbytradeopenlt90days": 0.04,
    "inputssninvalid": 0.0, "inputssnissuedatecannotbeverified": 0.02, "inquiryaddresscautious": 0.02,
    "morethan3inquiriesinthelast30days": None, "onfileaddressnonresidential": 0.03,
    "creditestablishedpriortossnissuedate": 0.02, "driverlicenseformatinvalid": 0.0,
    "inputssnrecordedasdeceased": 0.0, "inquiryaddresshighrisk": 0.02, "inquirycurrentaddressnotonfile": 0.2,
    "bestonfilessnissuedatecannotbeverified": 0.03, "highprobabilityssnbelongstoanother": 0.04,
    "maxnumberofssnswithanybankaccount": None, "bestonfilessnrecordedasdeceased": 0.0,
    "currentaddressreportedbynewtradeonly": 0.03, "creditestablishedbeforeage18": 0.05,
    "telephonenumberinconsistentwithstate": 0.1, "driverlicenseinconsistentwithonfile": 0.05,
    "workphonepreviouslylistedascellphone": 0.15, "workphonepreviouslylistedashomephone": 0.1,
}
SPARSE_INDICATORS = {  # share of reports where the indicator is present at all
    "driverlicenseinconsistentwithonfile": 10_055 / 49_752,
    "workphonepreviouslylistedascellphone": 21_416 / 49_752,
    "workphonepreviouslylistedashomephone": 21_416 / 49_752,
}
NOT_COUNTED = ("telephonenumberinconsistentwithaddress", *SPARSE_INDICATORS)
IDENTITY_FIELDS = [
    "ssnnamematch", "nameaddressmatch", "phonematchtype", "ssnnamereasoncodedescription", "phonematchresult",
    "nameaddressreasoncodedescription", "phonematchtypedescription", "overallmatchresult", "phonetype",
    "ssndobreasoncode", "ssnnamereasoncode", "nameaddressreasoncode", "ssndobmatch", "overallmatchreasoncode",
]
# fmt: on


def _clarity_name(group: str, name: str) -> str:
    """Full clarity column name, e.g. ``.underwritingdataclarity.clearfraud.clearfraudinquiry.oneminuteago``."""
    return f"{CLARITY_PREFIX}{group}.{name}"


INQ = {n: _clarity_name("clearfraudinquiry", n) for n in INQUIRY_FIELDS}
IND = {n: _clarity_name("clearfraudindicator", n) for n in INDICATOR_FIELDS}
IDV = {n: _clarity_name("clearfraudidentityverification", n) for n in IDENTITY_FIELDS}
CLARITY_COLUMNS = [*INQ.values(), *IND.values(), *IDV.values(), "clearfraudscore", "underwritingid"]

# fmt: off
RISKY_STATUSES = (
    "External Collection", "Internal Collection", "Returned Item", "Charged Off", "Charged Off Paid Off",
    "Settled Bankruptcy", "Settlement Paid Off", "Settlement Pending Paid Off",
)
GOOD_STATUSES = ("Paid Off Loan", "New Loan", "Pending Paid Off")

UNFUNDED_STATUS: dict[str | None, int] = {
    "Withdrawn Application": 450_984, "Rejected": 85_070, "CSR Voided New Loan": 1_026,
    "Credit Return Void": 704, "Customer Voided New Loan": 504, "Pending Application Fee": 5,
    "Pending Rescind": 4, "Pending Application": 4, "Voided New Loan": 2, "Customver Voided New Loan": 1,
    "Internal Collection": 3, "Settled Bankruptcy": 1, "Charged Off Paid Off": 1, None: 391,
}
FUNDED_RISKY = {
    "External Collection": 11_334, "Internal Collection": 5_564, "Returned Item": 1_182,
    "Settlement Paid Off": 708, "Settled Bankruptcy": 325, "Charged Off Paid Off": 159, "Charged Off": 1,
    "Settlement Pending Paid Off": 1,
}
VOIDED = (
    "CSR Voided New Loan", "Credit Return Void", "Customer Voided New Loan", "Voided New Loan",
    "Customver Voided New Loan",
)
PAY_FREQ_ALL: dict[str | None, int] = {
    "B": 316_654, "W": 137_188, "M": 59_092, "I": 33_787, "S": 29_688, None: 1_273,
}
PAY_FREQ_FUNDED: dict[str | None, int] = {"B": 22_797, "W": 10_248, "M": 2_880, "S": 2_628, "I": 429}
LEAD_ALL: dict[str | None, int] = {
    "bvMandatory": 475_001, "lead": 72_673, "organic": 22_851, "prescreen": 4_515, "rc_returning": 2_069,
    "california": 479, "lionpay": 26, "repeat": 24, "instant-offer": 22, "express": 22,
}
LEAD_FUNDED: dict[str | None, int] = {
    "bvMandatory": 28_300, "lead": 6_000, "organic": 2_700, "prescreen": 700, "rc_returning": 1_100,
    "california": 160, "lionpay": 20,
}
LEAD_COST: dict[str, dict[int, float]] = {
    "bvMandatory": {3: 0.52, 6: 0.18, 10: 0.14, 11: 0.05, 0: 0.05, 5: 0.06},
    "lead": {25: 0.22, 40: 0.2, 60: 0.14, 75: 0.14, 100: 0.1, 170: 0.05, 200: 0.05, 20: 0.05, 50: 0.05},
    "california": {0: 0.5, 20: 0.25, 25: 0.25},
}
STATE_TOP = {
    "OH": 90_496, "IL": 66_710, "TX": 49_729, "MO": 49_249, "WI": 40_349, "MI": 34_635, "TN": 32_991,
    "NC": 26_962, "FL": 25_896, "IN": 25_781, "SC": 23_925, "CA": 22_691, "NV": 11_477, "PA": 9_723,
    "VA": 9_197, "NJ": 7_641, "UT": 6_742,
}
STATE_REST = [
    "AL", "MS", "CO", "LA", "AZ", "NM", "KY", "SD", "MN", "GA", "OK", "WY", "CT", "WA", "KS", "IA", "DE",
    "ID", "RI", "NE", "HI", "AK", "ND",
]
STATE_RARE = {"NY": 3, "MD": 3, "OH-TEST": 1, "TX-TEST": 1}
APR_MAIN = {
    590.0: 0.3, 645.0: 0.12, 360.0: 0.08, 601.0: 0.07, 680.0: 0.06, 490.0: 0.05, 450.0: 0.045,
    359.0: 0.04, 625.0: 0.035,
}
AMOUNT_LEVELS = {
    500: 0.3, 400: 0.12, 300: 0.12, 350: 0.08, 600: 0.08, 800: 0.05, 1000: 0.05, 200: 0.04, 250: 0.03,
    450: 0.02, 700: 0.02, 750: 0.015, 900: 0.01, 1200: 0.01, 1500: 0.01, 2000: 0.008, 2500: 0.005,
    3000: 0.004, 5000: 0.002, 100: 0.01, 150: 0.005, 0: 0.001,
}
RETURN_CODES = {
    "R01": 22_866, "R02": 2_761, "R08": 2_259, "R16": 1_085, "R10": 620, "R03": 318, "RXS": 226, "R09": 176,
    "R07": 160, "C01": 30, "C02": 12, "C03": 8, "C05": 4, "LPP01": 20, "R04": 25, "R06": 10, "R13": 3,
    "R15": 6, "R19": 4, "R20": 22, "R29": 14, "R99": 5, "RAF": 9, "RBW": 3, "RFG": 4, "RIR": 5, "RUP": 6,
    "RWC": 3, "RXL": 7,
}
PHONE_TYPES = {  # phonematchtype -> (phonematchtypedescription, share)
    "M": ("(M) Mobile Phone", 0.94), "U": ("(U) Unknown", 0.03), "FA": ("(FA) Fax", 0.01),
    "LA": ("(LA) Land Line Alternate", 0.008), "A": ("(A) Answering Service", 0.005),
    "F": ("(F) Fixed Line", 0.004), "P": ("(P) Pager", 0.002), "L": ("(L) Land Line", 0.001),
}

# ------------------------------------------------------------------------------------- the risk function
# logit = RISK_INTERCEPT + RISK_SCALE * (sum of the terms in risk_logit); P(risky) integrates N(0, NOISE_SD).
RISK_INTERCEPT = -1.12
RISK_SCALE = 1.25
NOISE_SD = 0.4
PAYFREQ_EFFECT = {"W": 0.35, "B": 0.0, "S": -0.1, "M": -0.35, "I": 0.2}
LEAD_EFFECT = {
    "bvMandatory": 0.15, "lead": 0.45, "organic": -0.4, "prescreen": -0.3, "rc_returning": -0.55,
    "california": 0.1, "lionpay": -0.4, "repeat": -0.4,
}
STATE_EFFECT = {
    "OH": 0.05, "IL": -0.2, "TX": 0.35, "MO": 0.2, "WI": -0.15, "MI": 0.1, "TN": 0.25, "NC": -0.1, "FL": 0.3,
    "IN": 0.1, "SC": 0.15, "CA": -0.3, "NV": 0.4, "PA": -0.1, "VA": -0.2, "NJ": -0.25, "UT": 0.0,
}
SSN_NAME_EFFECT = {"match": 0.0, "partial": 0.4, "mismatch": 0.8, "unavailable": 0.35, "invalid": 0.6}
OVERALL_EFFECT = {"match": -0.3, "partial": 0.0, "mismatch": 0.6, "other": 0.25}
# fmt: on


# ------------------------------------------------------------------------------------------ small helpers
@dataclass(frozen=True)
class _Plan:
    """Row-count scaling: ``n(base)`` is ``round(f * base)`` (at least ``minimum``)."""

    f: float

    def n(self, base: float, minimum: int = 0) -> int:
        """Scaled count of a full-size figure."""
        return max(minimum, int(round(base * self.f)))


def _alloc(counts: dict, total: int, keep: Iterable = ()) -> dict:
    """Split ``total`` over the keys of ``counts`` proportionally (largest remainder); ``keep`` keys get >= 1."""
    keys = list(counts)
    raw = np.array([counts[k] for k in keys], dtype=float)
    raw = raw / raw.sum() * total
    out = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - out), kind="stable")
    out[order[: total - out.sum()]] += 1
    for k in keep:
        i = keys.index(k)
        if out[i] == 0 and total > 50:
            out[i] = 1
            out[int(np.argmax(out))] -= 1
    return dict(zip(keys, out.tolist(), strict=True))


def _labels(rng: np.random.Generator, counts: dict) -> np.ndarray:
    """A shuffled object array holding each key ``counts[key]`` times."""
    keys = list(counts)
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return rng.permutation(np.repeat(arr, [max(0, counts[k]) for k in keys]))


def _split_categories(
    rng: np.random.Generator, all_counts: dict, funded_counts: dict, funded: np.ndarray, keep: Iterable = ()
) -> np.ndarray:
    """Categorical column whose overall and funded-only shares both match the given counts."""
    total = _alloc(all_counts, len(funded), keep)
    fund = _alloc(funded_counts, int(funded.sum()))
    rest = {k: total[k] - fund.get(k, 0) for k in total}
    deficit = -sum(min(0, v) for v in rest.values())
    rest = {k: max(0, v) for k, v in rest.items()}
    big = max(rest, key=lambda k: rest[k])
    rest[big] -= deficit
    out = np.empty(len(funded), dtype=object)
    out[funded] = _labels(rng, fund)
    out[~funded] = _labels(rng, rest)
    return out


def _choice(rng: np.random.Generator, levels: dict, n: int) -> np.ndarray:
    """``n`` draws from ``levels`` (value -> weight)."""
    values = np.array(list(levels))
    p = np.array(list(levels.values()), dtype=float)
    return values[rng.choice(len(values), size=n, p=p / p.sum())]


_HEX = np.frombuffer(b"0123456789abcdef", dtype="S1")


def _hex_random(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``n`` random lowercase hex strings of ``width`` characters."""
    nib = rng.integers(0, 16, size=(n, width), dtype=np.uint8)
    return np.ascontiguousarray(_HEX[nib]).view(f"S{width}").ravel().astype(str)


def _hex_number(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded lowercase hex of non-negative integers."""
    shifts = 4 * np.arange(width - 1, -1, -1, dtype=np.int64)
    nib = (values.astype(np.int64)[:, None] >> shifts) & 0xF
    return np.ascontiguousarray(_HEX[nib]).view(f"S{width}").ravel().astype(str)


def _decimal(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal strings of non-negative integers."""
    digits = np.frombuffer(b"0123456789", dtype="S1")
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    idx = (values.astype(np.int64)[:, None] // powers) % 10
    return np.ascontiguousarray(digits[idx]).view(f"S{width}").ravel().astype(str)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def _categorical_draw(
    rng: np.random.Generator, spec: dict[str, tuple[float, float]], q: np.ndarray
) -> np.ndarray:
    """Draw a category per row; ``spec`` maps category -> (base share, loading on the fraud factor ``q``)."""
    names = np.array(list(spec), dtype=object)
    base = np.log(np.array([s[0] for s in spec.values()]))
    load = np.array([s[1] for s in spec.values()])
    logits = base[None, :] + q[:, None] * load[None, :]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    cum = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
    idx = (rng.random(len(q))[:, None] > cum).sum(axis=1)
    return names[np.minimum(idx, len(names) - 1)]


# ------------------------------------------------------------------------------- loans: structure and time
def _unit_sizes(rng: np.random.Generator, n_cf: int, n_ids: int) -> np.ndarray:
    """Loans per clarity id (1..15, heavy-tailed), summing exactly to ``n_cf``."""
    sizes = np.arange(1, 16)
    p = sizes**-3.8
    out = rng.choice(sizes, size=n_ids, p=p / p.sum())
    diff = n_cf - int(out.sum())
    while diff != 0:
        room = np.flatnonzero(out < 15) if diff > 0 else np.flatnonzero(out > 1)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        out[pick] += int(np.sign(diff))
        diff = n_cf - int(out.sum())
    return out


def _structure(rng: np.random.Generator, plan: _Plan) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Loans grouped into units (one clarity id, or one loan without it) with application times.

    Returns per-loan arrays, the per-unit base time (seconds after ``T_START``) and the number of clarity ids.
    """
    n, n_cf, n_ids = plan.n(BASE_ROWS["loan"]), plan.n(357_693), plan.n(314_915)
    size = np.concatenate([_unit_sizes(rng, n_cf, n_ids), np.ones(n - n_cf, dtype=np.int64)])
    unit = np.repeat(np.arange(len(size)), size)
    start = np.cumsum(size) - size
    pos = np.arange(n) - start[unit]
    gaps = np.where(pos > 0, rng.exponential(2.0 * DAY, n), 0.0)
    offset = np.cumsum(gaps)
    offset -= offset[start][unit]
    span = float((T_END - T_START).astype(np.int64))
    base = span * rng.random(len(size)) ** (1 / 1.8)
    latest = span - offset[start + size - 1] - rng.uniform(0.0, DAY, len(size))
    base = np.where(base > latest, np.maximum(latest, 0.0), base)
    t = np.round((base[unit] + offset) * 1000.0) / 1000.0
    loans = {"unit": unit, "pos": pos, "size": size[unit], "t": t, "has_cf": unit < n_ids}
    return loans, base, n_ids


def _pick_funded(
    rng: np.random.Generator, plan: _Plan, loans: dict[str, np.ndarray], n_ids: int
) -> np.ndarray:
    """Funded flags: mostly the last loan of a clarity unit, a few pairs, a few loans without clarity id."""
    n_funded = plan.n(38_982, 30)
    unit, pos, size, has_cf = loans["unit"], loans["pos"], loans["size"], loans["has_cf"]
    last = np.flatnonzero(has_cf & (pos == size - 1))
    n_cf_funded = int(round(0.955 * n_funded))
    n_pairs = int(round(0.03 * n_funded))
    chosen = rng.choice(last, size=n_cf_funded - n_pairs, replace=False)
    funded = np.zeros(len(unit), dtype=bool)
    funded[chosen] = True
    multi = chosen[size[chosen] >= 2]
    pairs = rng.choice(multi, size=min(n_pairs, len(multi)), replace=False)
    funded[pairs - 1] = True
    no_cf = rng.choice(np.flatnonzero(~has_cf), size=n_funded - int(funded.sum()), replace=False)
    funded[no_cf] = True
    return funded


def _persons(rng: np.random.Generator, plan: _Plan, unit_loans: np.ndarray) -> np.ndarray:
    """Person index per unit: ~1.26 loans per person, at most 35."""
    n_units = len(unit_loans)
    n_persons = min(plan.n(459_393, 1), n_units)
    order = rng.permutation(n_units)
    person = np.empty(n_units, dtype=np.int64)
    person[order[:n_persons]] = np.arange(n_persons)
    weight = rng.pareto(1.2, n_persons) + 1.0
    person[order[n_persons:]] = rng.choice(n_persons, size=n_units - n_persons, p=weight / weight.sum())
    for _ in range(50):
        per = np.bincount(person, weights=unit_loans, minlength=n_persons)
        over = np.flatnonzero(per[person] > 35)
        over = over[np.isin(over, order[n_persons:])]
        if len(over) == 0:
            break
        person[over] = rng.choice(np.flatnonzero(per <= 5), size=len(over))
    return person


# ------------------------------------------------------------------------------------- loans: statuses
def _unfunded_outcomes(rng: np.random.Generator, plan: _Plan, funded: np.ndarray) -> dict[str, np.ndarray]:
    """loanStatus, approved, originated and null-id flags for the whole table (funded loans get theirs later)."""
    n = len(funded)
    idx = np.flatnonzero(~funded)
    status = np.empty(n, dtype=object)
    status[idx] = _labels(rng, _alloc(UNFUNDED_STATUS, len(idx), keep=("Customver Voided New Loan", None)))
    null_status = np.flatnonzero(pd.isna(status) & ~funded)
    null_id = np.zeros(n, dtype=bool)
    null_id[rng.choice(null_status, size=min(plan.n(256, 2), len(null_status)), replace=False)] = True
    approved, originated = funded.copy(), funded.copy()
    voided = np.flatnonzero(np.isin(status, VOIDED))
    app = rng.choice(voided, size=min(plan.n(1_054), len(voided)), replace=False)
    approved[app] = originated[app] = True
    extra = plan.n(46_006) - int(originated.sum())
    first = np.flatnonzero(np.isin(status, VOIDED + ("Pending Rescind", *FUNDED_RISKY)) & ~originated)
    first = first[: max(0, extra)]
    originated[first] = True
    withdrawn = np.flatnonzero((status == "Withdrawn Application") & ~originated)
    originated[rng.choice(withdrawn, size=max(0, extra - len(first)), replace=False)] = True
    return {
        "status": status,
        "approved": approved,
        "originated": originated,
        "null_id": null_id,
        "paid_unfunded": rng.choice(app, size=min(plan.n(1_000), len(app)), replace=False),
    }


def _funded_statuses(rng: np.random.Generator, risky: np.ndarray, t_frac: np.ndarray) -> np.ndarray:
    """loanStatus of funded loans given the drawn label; recent good loans are more often still 'New Loan'."""
    out = np.empty(len(risky), dtype=object)
    out[risky] = _choice(rng, FUNDED_RISKY, int(risky.sum()))
    good = ~risky
    p_new = _sigmoid(8.0 * (t_frac[good] - 0.72))
    u = rng.random(int(good.sum()))
    out[good] = np.where(
        u < p_new, "New Loan", np.where(u < p_new + 0.0086, "Pending Paid Off", "Paid Off Loan")
    )
    return out


# ------------------------------------------------------------------------------ loans: application fields
def _state_counts() -> dict[str | None, int]:
    """All 44 states (top ones as published, the rest decreasing geometrically) plus 132 nulls."""
    rest_total = BASE_ROWS["loan"] - 132 - sum(STATE_TOP.values()) - sum(STATE_RARE.values())
    rest = _alloc({s: 0.868**i for i, s in enumerate(STATE_REST)}, rest_total)
    return {**STATE_TOP, **rest, **STATE_RARE, None: 132}


def _apr_levels() -> dict[float, float]:
    """~128 APR levels: the common ones and a fixed spread of rarer levels (0 and 705.59 included)."""
    fixed = np.random.default_rng(20_170_318)
    rare = np.round(fixed.uniform(350.0, 705.0, 116), 2).tolist() + [0.0, 705.59, 29.99]
    weights = fixed.dirichlet(np.ones(len(rare))) * (1.0 - sum(APR_MAIN.values()))
    return {**APR_MAIN, **dict(zip(rare, weights.tolist(), strict=True))}


def _application(
    rng: np.random.Generator, plan: _Plan, funded: np.ndarray, null_id: np.ndarray
) -> dict[str, np.ndarray]:
    """Application fields: payFrequency, apr, loanAmount, scheduled amount, nPaidOff, state, lead type/cost."""
    n = len(funded)
    pay = _split_categories(rng, PAY_FREQ_ALL, PAY_FREQ_FUNDED, funded)
    states_all = _state_counts()
    states_funded = {s: c for s, c in states_all.items() if s in STATE_TOP or s in STATE_REST}
    state = _split_categories(rng, states_all, states_funded, funded, keep=("OH-TEST", "TX-TEST"))
    lead = _split_categories(rng, LEAD_ALL, LEAD_FUNDED, funded, keep=("lionpay",))
    cost = np.zeros(n, dtype=np.int64)
    for name, levels in LEAD_COST.items():
        rows = np.flatnonzero(lead == name)
        cost[rows] = _choice(rng, levels, len(rows))
    repeat_p = np.where(funded, 0.2, 0.003)
    repeat_p = np.where(np.isin(lead, ["rc_returning", "repeat"]), 0.9, repeat_p)
    paid_off = np.where(rng.random(n) < repeat_p, np.minimum(rng.geometric(0.45, n), 21), 0).astype(float)
    apr = _choice(rng, _apr_levels(), n)
    apr[lead == "lionpay"] = 29.99
    amount = _choice(rng, AMOUNT_LEVELS, n).astype(float)
    amount[funded & (amount == 0)] = 500.0
    scheduled = _scheduled_amount(rng, amount, apr)
    unfunded = np.flatnonzero(~funded & ~null_id)
    paid_off[rng.choice(unfunded, size=plan.n(24), replace=False)] = np.nan
    for values, base in ((apr, 3_922), (amount, 2_250)):
        values[null_id] = np.nan
        values[rng.choice(unfunded, size=max(0, plan.n(base) - int(null_id.sum())), replace=False)] = np.nan
    return {
        "payFrequency": pay,
        "apr": apr,
        "loanAmount": amount,
        "originallyScheduledPaymentAmount": scheduled,
        "nPaidOff": paid_off,
        "state": state,
        "leadType": lead,
        "leadCost": cost,
    }


def _scheduled_amount(rng: np.random.Generator, amount: np.ndarray, apr: np.ndarray) -> np.ndarray:
    """Originally scheduled repayment total: ~amount x (1 + cost of credit), zeros and rare negatives."""
    out = amount * (1.0 + apr * 0.0030) * rng.lognormal(0.0, 0.12, len(amount))
    out = np.where(amount == 0, rng.uniform(50, 900, len(amount)), out)
    u = rng.random(len(amount))
    out = np.where(u < 0.003, 0.0, out)
    out = np.where(u > 0.9999, -rng.uniform(1.0, 816.71, len(amount)), out)
    return np.round(np.minimum(out, 19_963.63), 2)


def _loan_ids(
    rng: np.random.Generator,
    plan: _Plan,
    lead: np.ndarray,
    state: np.ndarray,
    null_id: np.ndarray,
    funded: np.ndarray,
) -> np.ndarray:
    """loanIds rising with application time; LP-I ids for lionpay, LL-T for test states and a few others."""
    n = len(lead)
    number = 1_000_000 + np.cumsum(rng.geometric(1 / 29, n))
    prefix = np.full(n, "LL-I-", dtype=object)
    test = np.isin(state, ["OH-TEST", "TX-TEST"])
    others = np.flatnonzero(~funded & ~test & ~null_id & (lead != "lionpay"))
    test[rng.choice(others, size=plan.n(8, 1), replace=False)] = True
    prefix[test] = "LL-T-"
    lionpay = np.flatnonzero(lead == "lionpay")
    prefix[lionpay] = "LP-I-"
    number[lionpay] = 100 + np.arange(len(lionpay))
    ids = prefix + _decimal(number, 8).astype(object)
    ids[null_id] = None
    return ids


# ---------------------------------------------------------------------------------------------- clarity
def _clarity_presence(
    rng: np.random.Generator, plan: _Plan, loans: dict[str, np.ndarray], funded: np.ndarray, n_ids: int
) -> np.ndarray:
    """Which clarity ids (units) have a report: ~83% of funded loans, ~31,750 ids in all."""
    unit, has_cf = loans["unit"], loans["has_cf"]
    cf_funded = np.flatnonzero(funded & has_cf)
    reported = rng.choice(cf_funded, size=min(plan.n(0.83 * 38_982), len(cf_funded)), replace=False)
    present = np.zeros(n_ids, dtype=bool)
    present[unit[reported]] = True
    has_funded = np.zeros(n_ids, dtype=bool)
    has_funded[unit[cf_funded]] = True
    need = plan.n(31_750) - int(present.sum())
    if need > 0:
        pool = np.flatnonzero(~present & ~has_funded)
        present[rng.choice(pool, size=min(need, len(pool)), replace=False)] = True
    return present


def _clarity_ids(rng: np.random.Generator, unit_base: np.ndarray) -> np.ndarray:
    """ObjectId-like ids: 8 hex digits of a Unix time at or shortly before the unit's first application."""
    n = len(unit_base)
    lag = np.where(rng.random(n) < 0.8, rng.exponential(120.0, n), rng.exponential(3 * DAY, n))
    unix = (T_START - EPOCH).astype(np.int64) + np.floor(unit_base - lag).astype(np.int64)
    return np.char.add(_hex_number(unix, 8), _hex_random(rng, n, 16))


def _inquiries(rng: np.random.Generator, q: np.ndarray) -> dict[str, np.ndarray]:
    """Nested inquiry counts (1 minute <= 10 minutes <= ... <= 365 days), heavier for high-``q`` reports."""
    n = len(q)
    intensity = np.exp(0.45 * q + 0.45 * rng.standard_normal(n))
    steps = [
        ("oneminuteago", 1.9),
        ("tenminutesago", 0.1),
        ("onehourago", 0.15),
        ("twentyfourhoursago", 0.3),
        ("sevendaysago", 0.8),
        ("fifteendaysago", 0.7),
        ("thirtydaysago", 0.6),
        ("ninetydaysago", 1.8),
        ("threesixtyfivedaysago", 4.5),
    ]
    total = np.ones(n)
    out = {}
    for name, mean in steps:
        total = total + rng.poisson(mean * intensity)
        out[name] = np.minimum(total, 438).astype(float)
    return out


def _indicators(rng: np.random.Generator, q: np.ndarray, thirty: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean fraud indicators (float where the real column is numeric); the count column is their sum."""
    n = len(q)
    out: dict[str, np.ndarray] = {}
    for name, share in INDICATOR_FIELDS.items():
        if share is None:
            continue
        if share == 0.0:
            out[name] = np.zeros(n, dtype=bool)
            continue
        load = 0.3 if share > 0.5 else 0.6
        out[name] = rng.random(n) < _sigmoid(np.log(share / (1 - share)) + load * q)
    out["morethan3inquiriesinthelast30days"] = thirty > 3
    counted = [v for k, v in out.items() if k not in NOT_COUNTED]
    out["totalnumberoffraudindicators"] = np.minimum(np.sum(counted, axis=0), 8).astype(float)
    banks = 1.0 + np.floor(rng.pareto(1.6, n) * (rng.random(n) < 0.35) * np.exp(0.3 * q))
    out["maxnumberofssnswithanybankaccount"] = np.minimum(banks, 4_056.0)
    return out


def _identity(rng: np.random.Generator, q: np.ndarray) -> dict[str, np.ndarray]:
    """Identity-verification results and their reason codes."""
    n = len(q)
    ssn = _categorical_draw(
        rng,
        {
            "match": (0.898, 0.0),
            "partial": (0.054, 0.6),
            "mismatch": (0.03, 1.1),
            "unavailable": (0.015, 0.5),
            "invalid": (0.003, 0.9),
        },
        q,
    )
    addr = _categorical_draw(
        rng,
        {
            "match": (0.8, 0.0),
            "mismatch": (0.06, 0.6),
            "unavailable": (0.02, 0.3),
            "partial": (0.113, 0.4),
            "invalid": (0.007, 0.5),
        },
        q,
    )
    phone = _categorical_draw(rng, {k: (v[1], 0.0 if k == "M" else 0.6) for k, v in PHONE_TYPES.items()}, q)
    overall = _categorical_draw(
        rng,
        {"partial": (0.71, 0.0), "match": (0.28, -0.5), "other": (0.006, 0.6), "mismatch": (0.004, 1.2)},
        q,
    )
    dob = _categorical_draw(
        rng,
        {
            "match": (0.79, 0.0),
            "partial": (0.15, 0.3),
            "invalid": (0.02, 0.6),
            "mismatch": (0.03, 0.8),
            "unavailable": (0.01, 0.3),
        },
        q,
    )
    ssn_code = np.where(ssn == "partial", _choice(rng, {"S03": 0.6, "S07": 0.4}, n), None)
    ssn_desc = {"S03": "(S03) SSN match to address only", "S07": "(S07) SSN Match to last name only"}
    dob_code = _choice(rng, {"D07": 0.4, "D04": 0.2, "D03": 0.15, "D01": 0.1, "D02": 0.1, "D06": 0.05}, n)
    return {
        "ssnnamematch": ssn,
        "nameaddressmatch": addr,
        "phonematchtype": phone,
        "ssnnamereasoncodedescription": np.array([ssn_desc.get(c) for c in ssn_code], dtype=object),
        "phonematchresult": _choice(
            rng,
            {"unavailable": 0.956, "match": 0.03, "invalid": 0.008, "partial": 0.004, "mismatch": 0.002},
            n,
        ),
        "nameaddressreasoncodedescription": np.where(addr == "partial", "(A8) Match to Last Name only", None),
        "phonematchtypedescription": np.array([PHONE_TYPES[p][0] for p in phone], dtype=object),
        "overallmatchresult": overall,
        "phonetype": np.where(rng.random(n) < 0.0305, _choice(rng, {"R": 0.5, "B": 0.3, "MU": 0.2}, n), None),
        "ssndobreasoncode": np.where(
            np.isin(dob, ["partial", "mismatch", "invalid"]) & (rng.random(n) < 0.9), dob_code, None
        ),
        "ssnnamereasoncode": ssn_code,
        "nameaddressreasoncode": np.where(addr == "partial", "A8", None),
        "ssndobmatch": dob,
        "overallmatchreasoncode": np.clip(np.round(np.exp(rng.normal(np.log(11), 0.9, n))), 1, 125),
    }


def _clarity_table(rng: np.random.Generator, plan: _Plan, ids: np.ndarray) -> dict[str, np.ndarray]:
    """One clarity report per id: inquiries, indicators, identity checks and the score."""
    n = len(ids)
    q = rng.standard_normal(n)
    inq = _inquiries(rng, q)
    ind = _indicators(rng, q, inq["thirtydaysago"])
    idv = _identity(rng, q)
    score = np.clip(np.round(691.0 - 95.0 * q + rng.normal(0.0, 65.0, n)), 122, 965)
    no_ind = rng.random(n) < 40 / 49_752
    frame = {INQ[k]: np.where(rng.random(n) < 2 / 49_752, np.nan, v) for k, v in inq.items()}
    for k in INDICATOR_FIELDS:
        v = ind[k]
        missing = no_ind | (rng.random(n) > SPARSE_INDICATORS.get(k, 1.0))
        text = v if v.dtype.kind == "f" else np.where(v, "True", "False").astype(object)
        frame[IND[k]] = np.where(missing, np.nan if v.dtype.kind == "f" else None, text)
    for k in IDENTITY_FIELDS:
        v = idv[k]
        frame[IDV[k]] = (
            np.where(no_ind, np.nan, v) if v.dtype.kind == "f" else np.where(no_ind, None, v.astype(object))
        )
    score[rng.choice(n, size=min(n, plan.n(137)), replace=False)] = np.nan
    frame["clearfraudscore"] = score
    frame["underwritingid"] = ids.astype(object)
    return {c: frame[c] for c in CLARITY_COLUMNS}


# ------------------------------------------------------------------------------------------------- risk
def _lookup(values: pd.Series, table: dict[str, float]) -> np.ndarray:
    """Map categories to effects; unknown and missing categories give 0."""
    codes, uniques = pd.factorize(values)
    effects = np.array([table.get(u, 0.0) for u in uniques] + [0.0], dtype=float)
    return effects[codes]


def risk_logit(frame: pd.DataFrame) -> np.ndarray:
    """The known risk score (log-odds, before noise) of loans given their decision-time fields.

    ``frame`` holds loan.csv application columns (``applicationDate`` as datetime or ISO string) left-joined
    with the clarity columns on ``clarityFraudId = underwritingid``. Outcomes are never used.
    """
    apr = frame["apr"].astype(float).to_numpy()
    apr_term = np.nan_to_num(np.tanh((apr - 450.0) / 150.0))
    amount = frame["loanAmount"].astype(float).to_numpy()
    ok = np.nan_to_num(amount) > 0
    safe = np.where(ok, amount, 500.0)
    ratio = frame["originallyScheduledPaymentAmount"].astype(float).to_numpy() / safe
    paid = np.nan_to_num(frame["nPaidOff"].astype(float).to_numpy())
    lead = frame["leadType"]
    z = _lookup(frame["payFrequency"], PAYFREQ_EFFECT) + 0.9 * apr_term
    z += np.where(ok, -0.35 * np.log(safe / 500.0), 0.0) + 0.5 * np.clip(ratio - 2.4, -1.0, 1.0) * ok
    z += -0.9 * np.log1p(paid) + _lookup(frame["state"], STATE_EFFECT) + _lookup(lead, LEAD_EFFECT)
    z += 0.004 * frame["leadCost"].astype(float).fillna(0.0).to_numpy()
    z += 0.45 * (lead == "lead").to_numpy() * apr_term
    z += _report_terms(frame, paid)
    years = pd.to_datetime(frame["applicationDate"], format="ISO8601") - pd.Timestamp("2016-01-01")
    z += 0.3 * (years.dt.total_seconds().to_numpy() / (365.25 * DAY))
    return RISK_INTERCEPT + RISK_SCALE * z


def _report_terms(frame: pd.DataFrame, paid: np.ndarray) -> np.ndarray:
    """Risk terms of the clarity report (a constant when there is no clarity id or no report)."""
    present = frame["underwritingid"].notna().to_numpy()
    has_cf = frame["hasCF"].astype(float).to_numpy() == 1
    score = frame["clearfraudscore"].astype(float).to_numpy()
    score_term = np.where(np.isnan(score), -0.2, np.tanh((score - 690.0) / 160.0))
    thirty = frame[INQ["thirtydaysago"]].astype(float).to_numpy()
    frauds = frame[IND["totalnumberoffraudindicators"]].astype(float).to_numpy()
    phone = frame[IDV["phonematchtype"]]
    z = -(1.3 + 0.5 * (paid == 0)) * score_term
    z += 0.35 * np.nan_to_num(np.log1p(thirty) - np.log1p(5.0)) + 0.15 * np.nan_to_num(frauds - 2.0)
    z += _lookup(frame[IDV["ssnnamematch"]], SSN_NAME_EFFECT)
    z += _lookup(frame[IDV["overallmatchresult"]], OVERALL_EFFECT)
    z += 0.35 * (phone.notna() & (phone != "M")).to_numpy()
    return np.where(present, z, np.where(has_cf, 0.15, 0.3))


def risk_probability(logit: np.ndarray, noise_sd: float = NOISE_SD) -> np.ndarray:
    """P(risky) = E[sigmoid(logit + e)], e ~ N(0, noise_sd^2) (Gauss-Hermite quadrature)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(24)
    weights = weights / weights.sum()
    out = np.zeros(len(logit))
    for x, w in zip(nodes, weights, strict=True):
        out += w * _sigmoid(logit + noise_sd * x)
    return out


# --------------------------------------------------------------------------------------------- payments
FREQ_INSTALMENTS = {"W": 26.0, "B": 13.0, "S": 12.0, "M": 6.0, "I": 10.0}
FREQ_STEP = {"W": 7.0, "B": 14.0, "S": 15.2, "M": 30.44, "I": 21.0}
STORY = {
    "Paid Off Loan": 0,
    "Pending Paid Off": 1,
    "New Loan": 2,
    "External Collection": 3,
    "Internal Collection": 3,
    "Returned Item": 4,
    "Charged Off": 4,
    "Settled Bankruptcy": 5,
    "Settlement Paid Off": 5,
    "Charged Off Paid Off": 5,
    "Settlement Pending Paid Off": 5,
}


def _fit_total(rng: np.random.Generator, raw: np.ndarray, target: int, hi: np.ndarray) -> np.ndarray:
    """Integer counts in [1, hi] proportional to ``raw`` that sum exactly to ``target``."""
    out = np.clip(np.floor(raw * target / raw.sum()), 1, hi).astype(np.int64)
    diff = target - int(out.sum())
    while diff != 0:
        room = np.flatnonzero(out < hi) if diff > 0 else np.flatnonzero(out > 1)
        if len(room) == 0:
            break
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        out[pick] += int(np.sign(diff))
        diff = target - int(out.sum())
    return out


@dataclass
class _PaidLoans:
    """Per-loan inputs of the payment generator (one entry per loan that has payments)."""

    freq: np.ndarray
    amount: np.ndarray
    scheduled: np.ndarray
    start_day: np.ndarray
    story: np.ndarray


def _schedule(rng: np.random.Generator, plan: _Plan, paid: _PaidLoans) -> dict[str, np.ndarray]:
    """Row skeleton: loan index, instalment/collection index, counts and dates."""
    m = len(paid.story)
    base = np.array([FREQ_INSTALMENTS.get(f, 13.0) for f in paid.freq])
    raw = base * (np.clip(paid.amount, 100, 5000) / 500.0) ** 0.3 * rng.lognormal(0.0, 0.3, m)
    coll = np.isin(paid.story, [3, 5]) & (rng.random(m) < 0.25)
    n_coll = np.where(coll, 1 + rng.poisson(2.0, m), 0)
    target = max(m, plan.n(BASE_ROWS["payment"]) - int(n_coll.sum()))
    n_inst = _fit_total(rng, raw, target, 105 - n_coll)
    event = _event_index(rng, paid.story, n_inst)
    step = np.array([FREQ_STEP.get(f, 14.0) for f in paid.freq])
    first = paid.start_day + np.round(step * rng.uniform(0.6, 1.4, m)).astype("timedelta64[D]")
    li = np.repeat(np.arange(m), n_inst)
    k = np.arange(len(li)) - np.repeat(np.cumsum(n_inst) - n_inst, n_inst) + 1
    jitter = np.where(paid.freq[li] == "I", rng.uniform(0, 3, len(li)), 0.0)
    day = first[li] + np.round(step[li] * (k - 1) + jitter).astype("timedelta64[D]")
    day = np.minimum(day, LAST_PAYMENT)
    return {"li": li, "k": k, "n": n_inst[li], "event": event, "day": day, "n_coll": n_coll}


def _event_index(rng: np.random.Generator, story: np.ndarray, n_inst: np.ndarray) -> np.ndarray:
    """Per loan: instalment of payoff (good stories) or of the first return (risky stories)."""
    m = len(story)
    payoff = np.ceil(n_inst * rng.beta(1.2, 2.0, m))
    default = np.where(
        rng.random(m) < 0.25, 1, 2 + np.floor(rng.beta(1.3, 2.5, m) * np.maximum(n_inst - 1, 1))
    )
    event = np.select([story <= 1, story == 2, story == 6], [payoff, n_inst + 1, 0], default)
    return np.minimum(event, n_inst + (story == 2)).astype(np.int64)


def _instalment_status(
    rng: np.random.Generator, rows: dict[str, np.ndarray], story: np.ndarray
) -> np.ndarray:
    """paymentStatus of scheduled instalments, following each loan's story."""
    s, k, ev = story[rows["li"]], rows["k"], rows["event"][rows["li"]]
    u = rng.random(len(k))
    run = rng.poisson(1.0, len(story))[rows["li"]]
    keep = (rng.random(len(story)) < 0.4)[rows["li"]]
    future, recent = rows["day"] > SNAPSHOT, rows["day"] > SNAPSHOT - np.timedelta64(12, "D")
    paying = np.where(u < 0.985, "Checked", np.where(u < 0.995, "Rejected", "Skipped"))
    retry = np.where(u < 0.8, "Rejected", np.where(u < 0.9994, "Skipped", "Rejected Awaiting Retry"))
    good_tail = np.where(future, "None", np.where(recent, "Pending", paying))
    risky = (s >= 3) & (s <= 5)
    conds = [
        s == 6,
        (s <= 1) & (k < ev),
        (s == 0) & (k == ev),
        (s == 1) & (k == ev),
        s <= 1,
        s == 2,
        risky & (k < ev),
        risky & (k == ev),
        risky & (k <= ev + run),
        (s != 4) & keep,
    ]
    choices = [
        "Cancelled",
        paying,
        "Checked",
        "Pending",
        "Cancelled",
        good_tail,
        np.where(u < 0.995, "Checked", "Skipped"),
        "Rejected",
        retry,
        "None",
    ]
    status = np.select(conds, choices, "Cancelled")
    return np.where(future & (s != 6) & (status != "Cancelled"), "None", status).astype(object)


def _collection_rows(
    rng: np.random.Generator, rows: dict[str, np.ndarray], story: np.ndarray
) -> dict[str, np.ndarray]:
    """Collection-plan rows (index restarting at 1) dated after the loan's first return."""
    n_coll = rows["n_coll"]
    li = np.repeat(np.arange(len(n_coll)), n_coll)
    k = np.arange(len(li)) - np.repeat(np.cumsum(n_coll) - n_coll, n_coll) + 1
    default_day = np.full(len(n_coll), SNAPSHOT)
    inst_default = rows["k"] == rows["event"][rows["li"]]
    default_day[rows["li"][inst_default]] = rows["day"][inst_default]
    step = rng.choice([14, 30, 182], size=len(n_coll), p=[0.6, 0.37, 0.03])[li]
    day = default_day[li] + (step * k + rng.integers(0, 5, len(li))).astype("timedelta64[D]")
    day = np.minimum(day, LAST_PAYMENT)
    u = rng.random(len(li))
    open_status = np.where(
        u < 0.45, "Checked", np.where(u < 0.8, "Rejected", np.where(u < 0.95, "Cancelled", "Pending"))
    )
    status = np.where(story[li] == 5, np.where(u < 0.9, "Checked", "Rejected"), open_status)
    status = np.where(day > SNAPSHOT, "None", status).astype(object)
    seconds = rng.integers(8 * 3600, 22 * 3600, len(li)).astype("timedelta64[s]")
    micros = (rng.integers(0, 1000, len(li)) * 1000).astype("timedelta64[us]")
    stamp = day.astype("datetime64[us]") + seconds.astype("timedelta64[us]") + micros
    return {"li": li, "k": k, "status": status, "stamp": stamp}


def _us_eastern_dst(day: np.ndarray) -> np.ndarray:
    """Whether midnight of each day falls in US Eastern daylight time (2nd Sunday Mar - 1st Sunday Nov)."""
    years = np.arange(2013, 2023)
    out = np.zeros(len(day), dtype=bool)
    for y in years:
        mar, nov = np.datetime64(f"{y}-03-01", "D"), np.datetime64(f"{y}-11-01", "D")
        start = mar + ((3 - (mar.astype(np.int64) % 7)) % 7) + 7  # 1970-01-01 was a Thursday (index 0)
        end = nov + ((3 - (nov.astype(np.int64) % 7)) % 7)
        out |= (day > start) & (day <= end)
    return out


def _amounts(
    rng: np.random.Generator,
    paid: _PaidLoans,
    li: np.ndarray,
    k: np.ndarray,
    n: np.ndarray,
    collection: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """principal, fees and paymentAmount (~ principal + fees) per row."""
    amount, cost = paid.amount[li], np.maximum(paid.scheduled[li] - paid.amount[li], 0.0)
    u = (k - 0.5) / n
    principal = amount / n * (0.3 + 1.4 * u)
    fees = cost / n * (1.7 - 1.4 * u)
    principal = np.where(collection, amount * rng.uniform(0.03, 0.3, len(li)), principal)
    fees = np.where(collection, np.where(rng.random(len(li)) < 0.7, 0.0, rng.uniform(0, 30, len(li))), fees)
    refund = rng.random(len(li)) < 6e-5
    principal = np.where(refund, -rng.uniform(0.0, 303.37, len(li)), np.minimum(principal, 4_000.0))
    fees = np.where(refund, -rng.uniform(0.0, 42.56, len(li)), np.minimum(fees, 1_257.71))
    principal, fees = np.round(principal, 2), np.round(fees, 2)
    total = np.round(principal + fees + np.where(rng.random(len(li)) < 0.01, 0.01, 0.0), 2)
    return principal, fees, total


def _return_codes(rng: np.random.Generator, status: np.ndarray) -> np.ndarray:
    """paymentReturnCode: mostly on rejected rows, MISSED on some skipped ones, null elsewhere."""
    n = len(status)
    codes = np.where(rng.random(n) < 0.97, _choice(rng, RETURN_CODES, n), None)
    out = np.where(np.isin(status, ["Rejected", "Rejected Awaiting Retry", "Returned"]), codes, None)
    return np.where((status == "Skipped") & (rng.random(n) < 0.14), "MISSED", out).astype(object)


def _pair_cancellations(
    rng: np.random.Generator, status: np.ndarray, day: np.ndarray, li: np.ndarray
) -> None:
    """Same-date (Cancelled, None) pairs: a rescheduled instalment next to its cancelled original."""
    i = np.flatnonzero((status[1:] == "None") & (status[:-1] == "None") & (li[1:] == li[:-1])) + 1
    i = i[rng.random(len(i)) < 0.04]
    i = i[np.diff(np.concatenate([[-2], i])) > 1]
    status[i - 1] = "Cancelled"
    day[i - 1] = day[i]


def _payments(
    rng: np.random.Generator, plan: _Plan, paid: _PaidLoans, loan_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """payment.csv columns (loans in the given order) and each loan's first-instalment status."""
    rows = _schedule(rng, plan, paid)
    status = _instalment_status(rng, rows, paid.story)
    day = rows["day"].copy()
    _pair_cancellations(rng, status, day, rows["li"])
    coll = _collection_rows(rng, rows, paid.story)
    hour = np.where(_us_eastern_dst(day), 4, 5).astype("timedelta64[h]")
    inst_date = np.datetime_as_string(day.astype("datetime64[s]") + hour, unit="s")
    li = np.concatenate([rows["li"], coll["li"]])
    k = np.concatenate([rows["k"], coll["k"]])
    is_coll = np.concatenate([np.zeros(len(rows["li"]), bool), np.ones(len(coll["li"]), bool)])
    status_all = np.concatenate([status, coll["status"]])
    _rare_statuses(rng, plan, status_all)
    n_all = np.concatenate([rows["n"], rows["n_coll"][coll["li"]]])
    principal, fees, total = _amounts(rng, paid, li, k, n_all, is_coll)
    table = {
        "loanId": loan_ids[li],
        "installmentIndex": k,
        "isCollection": is_coll,
        "paymentDate": np.concatenate([inst_date, np.datetime_as_string(coll["stamp"], unit="us")]).astype(
            object
        ),
        "principal": principal,
        "fees": fees,
        "paymentAmount": total,
        "paymentStatus": status_all,
        "paymentReturnCode": _return_codes(rng, status_all),
    }
    first = np.full(len(paid.story), None, dtype=object)
    first[rows["li"][rows["k"] == 1]] = status[rows["k"] == 1]
    order = np.lexsort((k, is_coll, li))
    return {c: v[order] for c, v in table.items()}, first


def _rare_statuses(rng: np.random.Generator, plan: _Plan, status: np.ndarray) -> None:
    """Turn a couple of checked rows into the one-off 'Complete' and 'Returned' statuses."""
    checked = np.flatnonzero(status == "Checked")
    pick = rng.choice(checked, size=min(len(checked), 2 * plan.n(1)), replace=False)
    status[pick[: len(pick) // 2]] = "Complete"
    status[pick[len(pick) // 2 :]] = "Returned"


# --------------------------------------------------------------------------------------------- assembly
def _format_times(seconds: np.ndarray, no_fraction: np.ndarray | None = None) -> np.ndarray:
    """ISO timestamps (``2016-02-23T17:29:01.940000``) from seconds after ``T_START``; some without fraction."""
    stamp = T_START.astype("datetime64[us]") + np.round(seconds * 1e6).astype("timedelta64[us]")
    out = np.datetime_as_string(stamp, unit="us").astype(object)
    if no_fraction is not None:
        out[no_fraction] = np.datetime_as_string(stamp[no_fraction], unit="s")
    return out


def _originated_dates(
    rng: np.random.Generator, plan: _Plan, t: np.ndarray, originated: np.ndarray
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


def _risk_frame(
    loan: dict[str, np.ndarray], t: np.ndarray, report: np.ndarray, clarity: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Decision-time frame (application fields joined with the report) for :func:`risk_logit`."""
    fields = [
        "payFrequency",
        "apr",
        "loanAmount",
        "originallyScheduledPaymentAmount",
        "nPaidOff",
        "state",
        "leadType",
        "leadCost",
        "hasCF",
    ]
    columns = {k: loan[k] for k in fields}
    columns |= {c: _take(clarity[c], report) for c in RISK_CLARITY_COLUMNS}
    frame = _object_frame(columns)
    frame["applicationDate"] = T_START.astype("datetime64[ms]") + np.round(t * 1000).astype("timedelta64[ms]")
    return frame


def _clarity_join(
    rng: np.random.Generator,
    plan: _Plan,
    loans: dict[str, np.ndarray],
    unit_base: np.ndarray,
    present: np.ndarray,
    n_ids: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The clarity table (matched reports then orphans), each loan's clarityFraudId and report row (-1: none)."""
    ids = _clarity_ids(rng, unit_base[:n_ids])
    n_orphan = max(0, plan.n(BASE_ROWS["clarity"]) - int(present.sum()))
    orphan_base = float((T_END - T_START).astype(np.int64)) * rng.random(n_orphan)
    clarity = _clarity_table(rng, plan, np.concatenate([ids[present], _clarity_ids(rng, orphan_base)]))
    report_of_unit = np.full(n_ids, -1)
    report_of_unit[np.flatnonzero(present)] = np.arange(int(present.sum()))
    cf_unit = np.where(loans["has_cf"], loans["unit"], 0)
    report = np.where(loans["has_cf"], report_of_unit[cf_unit], -1)
    fraud_id = np.where(loans["has_cf"], ids[cf_unit].astype(object), None)
    return clarity, fraud_id, report


def _population(rng: np.random.Generator, plan: _Plan) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loans in application-time order (units, funded flag, person, clarity id, report row) and the reports."""
    loans, unit_base, n_ids = _structure(rng, plan)
    funded = _pick_funded(rng, plan, loans, n_ids)
    present = _clarity_presence(rng, plan, loans, funded, n_ids)
    order = np.argsort(loans["t"], kind="stable")
    loans = {k: v[order] for k, v in loans.items()} | {"funded": funded[order]}
    person = _persons(rng, plan, np.bincount(loans["unit"], minlength=len(unit_base)))
    loans["ssn"] = _hex_random(rng, int(person.max()) + 1, 32).astype(object)[person[loans["unit"]]]
    clarity, loans["fraud_id"], loans["report"] = _clarity_join(rng, plan, loans, unit_base, present, n_ids)
    return loans, clarity


def _build(rng: np.random.Generator, plan: _Plan) -> dict[str, dict[str, np.ndarray]]:
    """Generate all tables in memory (column name -> array): loan, payment, clarity and true risk."""
    loans, clarity = _population(rng, plan)
    funded, t = loans["funded"], loans["t"]
    out = _unfunded_outcomes(rng, plan, funded)
    loan = _application(rng, plan, funded, out["null_id"]) | {"hasCF": loans["has_cf"].astype(np.int64)}
    p_risky = risk_probability(risk_logit(_risk_frame(loan, t, loans["report"], clarity)))
    risky = (rng.random(len(funded)) < p_risky)[funded]
    out["status"][funded] = _funded_statuses(
        rng, risky, t[funded] / float((T_END - T_START).astype(np.int64))
    )
    origin_secs = _originated_dates(rng, plan, t, out["originated"])
    loan |= {
        "loanId": _loan_ids(rng, plan, loan["leadType"], loan["state"], out["null_id"], funded),
        "anon_ssn": loans["ssn"], "applicationDate": _format_times(t), "originated": out["originated"],
        "originatedDate": _originated_strings(rng, origin_secs), "approved": out["approved"],
        "isFunded": funded.astype(np.int64), "loanStatus": out["status"], "clarityFraudId": loans["fraud_id"],
    }  # fmt: skip
    file_order = rng.permutation(len(funded))
    payment = _payment_table(rng, plan, loan, funded, out, origin_secs, file_order)
    has_id = file_order[pd.notna(loan["loanId"][file_order])]
    shuffle = rng.permutation(len(clarity["underwritingid"]))
    return {
        "loan": {c: loan[c][file_order] for c in LOAN_COLUMNS},
        "payment": {c: payment[c] for c in PAYMENT_COLUMNS},
        "clarity": {c: clarity[c][shuffle] for c in CLARITY_COLUMNS},
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
    plan: _Plan,
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
    rank = np.empty(n, dtype=np.int64)
    rank[file_order] = np.arange(n)
    idx = np.flatnonzero(with_pay)
    idx = idx[np.argsort(rank[idx], kind="stable")]
    amount = loan["loanAmount"][idx]
    start = T_START.astype("datetime64[D]") + (np.nan_to_num(origin_secs[idx]) // DAY).astype(
        "timedelta64[D]"
    )
    paid = _PaidLoans(
        freq=loan["payFrequency"][idx],
        amount=np.where(np.isnan(amount), 300.0, amount),
        scheduled=loan["originallyScheduledPaymentAmount"][idx],
        start_day=start,
        story=np.array([STORY.get(s, 6) for s in loan["loanStatus"][idx]]),
    )
    payment, first = _payments(rng, plan, paid, loan["loanId"][idx])
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
    fp[prefer[: sum(counts.values())]] = _labels(rng, counts)
    loan["fpStatus"] = fp
    return payment


def _column_text(name: str, values: np.ndarray) -> list[str]:
    """CSV text of one column: True/False, integers, shortest float repr, strings; blank for missing."""
    if values.dtype == bool:
        return np.where(values, "True", "False").tolist()
    if values.dtype.kind in "iu":
        return list(map(str, values.tolist()))
    if values.dtype.kind == "f":
        return ["" if v != v else repr(v) for v in values.tolist()]
    text = np.where(pd.isna(values), "", values).tolist()
    try:
        joined = "\x00".join(text)
    except TypeError:  # non-string objects (e.g. Python bools): str() them
        text = [v if isinstance(v, str) else str(v) for v in text]
        joined = "\x00".join(text)
    if "," in joined or '"' in joined or "\n" in joined:
        raise ValueError(f"column {name} holds a comma, quote or newline; the fast writer does not quote")
    return text


def _write_csv(table: dict[str, np.ndarray], path: Path) -> None:
    """Write ``table`` (column -> array) as CSV with ``\\n`` line ends; values never need quoting (checked)."""
    columns = [_column_text(name, values) for name, values in table.items()]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(table) + "\n")
        for start in range(0, len(columns[0]), 200_000):
            chunk = (col[start : start + 200_000] for col in columns)
            fh.write("".join(line + "\n" for line in map(",".join, zip(*chunk, strict=True))))


# ------------------------------------------------------------------------------------------ public API
def effective_scale(scale: float) -> float:
    """The scale actually used: ``scale`` itself, but never below ``MIN_SCALE`` (so every relation holds)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    return max(float(scale), MIN_SCALE)


def generate(out_dir: str | Path, scale: float = 1.0, seed: int = 42) -> dict:
    """Write ``loan.csv``, ``payment.csv``, ``clarity_underwriting_variables.csv`` and ``true_risk.csv``.

    Row counts are ``round(scale x 577,682 / 689,364 / 49,752)`` (scale floored at ``MIN_SCALE``). The same
    seed gives byte-identical files. Returns the row counts per file and the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _Plan(effective_scale(scale))
    tables = _build(np.random.default_rng(seed), plan)
    files = {"loan": LOAN_FILE, "payment": PAYMENT_FILE, "clarity": CLARITY_FILE, "risk": RISK_FILE}
    for key, name in files.items():
        _write_csv(tables[key], out / name)
    rows = {key: len(next(iter(tables[key].values()))) for key in files}
    log.info("sample written to %s (scale %s, seed %s): %s", out, plan.f, seed, rows)
    return {"rows": rows, "paths": {key: str(out / name) for key, name in files.items()}}


def label_frame(loan: pd.DataFrame) -> pd.DataFrame:
    """Labelled loans (1 = risky, 0 = good) with ``loanId``, ``applicationDate`` and ``label``."""
    status = loan["loanStatus"]
    keep = (status.isin(RISKY_STATUSES) | status.isin(GOOD_STATUSES)) & loan["loanId"].notna()
    out = loan.loc[keep, ["loanId", "applicationDate"]].copy()
    out["label"] = status[keep].isin(RISKY_STATUSES).astype(int)
    return out


def oracle_auc(out_dir: str | Path, test_share: float = 0.15) -> float:
    """ROC-AUC of ``true_risk.csv``'s p_risky against the drawn label on the latest ``test_share`` of loans."""
    from sklearn.metrics import roc_auc_score

    out = Path(out_dir)
    loan = pd.read_csv(out / LOAN_FILE, usecols=["loanId", "applicationDate", "loanStatus"], **READ_OPTIONS)
    risk = pd.read_csv(out / RISK_FILE, **READ_OPTIONS)
    data = label_frame(loan).merge(risk, on="loanId", how="inner", validate="1:1")
    data["t"] = pd.to_datetime(data["applicationDate"], format="ISO8601")
    data = data.sort_values(["t", "loanId"], kind="stable")
    test = data.iloc[int(len(data) * (1 - test_share)) :]
    return float(roc_auc_score(test["label"], test["p_risky"]))


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m tasks.sample OUT_DIR [--scale F] [--seed N]``; prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m tasks.sample", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = generate(args.out_dir, args.scale, args.seed)
    seconds = time.perf_counter() - started
    report = {
        "out_dir": args.out_dir,
        "scale": args.scale,
        "seed": args.seed,
        "rows": result["rows"],
        "oracle_auc": round(oracle_auc(args.out_dir), 4),
        "seconds": round(seconds, 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
