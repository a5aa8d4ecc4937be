"""loan.csv: loans grouped by clarity id in application-time order, funded flags, persons, statuses,
application fields and loan ids, with the real file's category counts."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from tasks.data.contract import VOIDED_STATUSES as VOIDED
from tasks.data.sample.common import BASE_ROWS, DAY, T_END, T_START, Plan, choice, digits, fit_total, sigmoid

# fmt: off
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
# fmt: on


def alloc(counts: dict, total: int, keep: Iterable = ()) -> dict:
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


def labels(rng: np.random.Generator, counts: dict) -> np.ndarray:
    """A shuffled object array holding each key ``counts[key]`` times."""
    keys = list(counts)
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return rng.permutation(np.repeat(arr, [max(0, counts[k]) for k in keys]))


def split_categories(
    rng: np.random.Generator, all_counts: dict, funded_counts: dict, funded: np.ndarray, keep: Iterable = ()
) -> np.ndarray:
    """Categorical column whose overall and funded-only shares both match the given counts."""
    total = alloc(all_counts, len(funded), keep)
    fund = alloc(funded_counts, int(funded.sum()))
    rest = {k: total[k] - fund.get(k, 0) for k in total}
    deficit = -sum(min(0, v) for v in rest.values())
    rest = {k: max(0, v) for k, v in rest.items()}
    rest[max(rest, key=rest.__getitem__)] -= deficit
    out = np.empty(len(funded), dtype=object)
    out[funded] = labels(rng, fund)
    out[~funded] = labels(rng, rest)
    return out


def _unit_sizes(rng: np.random.Generator, n_cf: int, n_ids: int) -> np.ndarray:
    """Loans per clarity id (1..15, heavy-tailed), summing exactly to ``n_cf``."""
    sizes = np.arange(1, 16)
    p = sizes**-3.8
    return fit_total(rng, rng.choice(sizes, size=n_ids, p=p / p.sum()), n_cf, 15)


def structure(rng: np.random.Generator, plan: Plan) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """Loans grouped into units (one clarity id, or one loan without it) with application times: per-loan
    arrays, the per-unit base time (seconds after ``T_START``) and the number of clarity ids."""
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


def pick_funded(rng: np.random.Generator, plan: Plan, loans: dict[str, np.ndarray], n_ids: int) -> np.ndarray:
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


def persons(rng: np.random.Generator, plan: Plan, unit_loans: np.ndarray) -> np.ndarray:
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
def unfunded_outcomes(rng: np.random.Generator, plan: Plan, funded: np.ndarray) -> dict[str, np.ndarray]:
    """loanStatus, approved, originated and null-id flags for the whole table (funded loans get theirs later)."""
    n = len(funded)
    idx = np.flatnonzero(~funded)
    status = np.empty(n, dtype=object)
    status[idx] = labels(rng, alloc(UNFUNDED_STATUS, len(idx), keep=("Customver Voided New Loan", None)))
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


def funded_statuses(rng: np.random.Generator, risky: np.ndarray, t_frac: np.ndarray) -> np.ndarray:
    """loanStatus of funded loans given the drawn label; recent good loans are more often still 'New Loan'."""
    out = np.empty(len(risky), dtype=object)
    out[risky] = choice(rng, FUNDED_RISKY, int(risky.sum()))
    good = ~risky
    p_new = sigmoid(8.0 * (t_frac[good] - 0.72))
    u = rng.random(int(good.sum()))
    out[good] = np.where(
        u < p_new, "New Loan", np.where(u < p_new + 0.0086, "Pending Paid Off", "Paid Off Loan")
    )
    return out


# ------------------------------------------------------------------------------ loans: application fields
def _state_counts() -> dict[str | None, int]:
    """All 44 states (top ones as published, the rest decreasing geometrically) plus 132 nulls."""
    rest_total = BASE_ROWS["loan"] - 132 - sum(STATE_TOP.values()) - sum(STATE_RARE.values())
    rest = alloc({s: 0.868**i for i, s in enumerate(STATE_REST)}, rest_total)
    return {**STATE_TOP, **rest, **STATE_RARE, None: 132}


def _apr_levels() -> dict[float, float]:
    """~128 APR levels: the common ones and a fixed spread of rarer levels (0 and 705.59 included)."""
    fixed = np.random.default_rng(20_170_318)
    rare = np.round(fixed.uniform(350.0, 705.0, 116), 2).tolist() + [0.0, 705.59, 29.99]
    weights = fixed.dirichlet(np.ones(len(rare))) * (1.0 - sum(APR_MAIN.values()))
    return {**APR_MAIN, **dict(zip(rare, weights.tolist(), strict=True))}


def application(
    rng: np.random.Generator, plan: Plan, funded: np.ndarray, null_id: np.ndarray
) -> dict[str, np.ndarray]:
    """Application fields: payFrequency, apr, loanAmount, scheduled amount, nPaidOff, state, lead type/cost."""
    n = len(funded)
    pay = split_categories(rng, PAY_FREQ_ALL, PAY_FREQ_FUNDED, funded)
    states_all = _state_counts()
    states_funded = {s: c for s, c in states_all.items() if s in STATE_TOP or s in STATE_REST}
    state = split_categories(rng, states_all, states_funded, funded, keep=("OH-TEST", "TX-TEST"))
    lead = split_categories(rng, LEAD_ALL, LEAD_FUNDED, funded, keep=("lionpay",))
    cost = np.zeros(n, dtype=np.int64)
    for name, levels in LEAD_COST.items():
        rows = np.flatnonzero(lead == name)
        cost[rows] = choice(rng, levels, len(rows))
    repeat_p = np.where(funded, 0.2, 0.003)
    repeat_p = np.where(np.isin(lead, ["rc_returning", "repeat"]), 0.9, repeat_p)
    paid_off = np.where(rng.random(n) < repeat_p, np.minimum(rng.geometric(0.45, n), 21), 0).astype(float)
    apr = choice(rng, _apr_levels(), n)
    apr[lead == "lionpay"] = 29.99
    amount = choice(rng, AMOUNT_LEVELS, n).astype(float)
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


def loan_ids(
    rng: np.random.Generator, plan: Plan, loan: dict[str, np.ndarray], null_id: np.ndarray, funded: np.ndarray
) -> np.ndarray:
    """loanIds rising with application time; LP-I ids for lionpay, LL-T for test states and a few others."""
    lead, state = loan["leadType"], loan["state"]
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
    ids = prefix + digits(number, 8).astype(object)
    ids[null_id] = None
    return ids
