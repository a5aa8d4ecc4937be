"""payment.csv: one row per ACH attempt (instalments, then collection-plan rows), following each loan's story
(paid off, pending, new, in collection, returned, settled), with the real file's statuses and return codes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.data.sample.common import BASE_ROWS, LAST_PAYMENT, SNAPSHOT, Plan, fit_total

# fmt: off
RETURN_CODES = {
    "R01": 22_866, "R02": 2_761, "R08": 2_259, "R16": 1_085, "R10": 620, "R03": 318, "RXS": 226, "R09": 176,
    "R07": 160, "C01": 30, "C02": 12, "C03": 8, "C05": 4, "LPP01": 20, "R04": 25, "R06": 10, "R13": 3,
    "R15": 6, "R19": 4, "R20": 22, "R29": 14, "R99": 5, "RAF": 9, "RBW": 3, "RFG": 4, "RIR": 5, "RUP": 6,
    "RWC": 3, "RXL": 7,
}
# fmt: on
FREQ_INSTALMENTS = {"W": 26.0, "B": 13.0, "S": 12.0, "M": 6.0, "I": 10.0}
FREQ_STEP = {"W": 7.0, "B": 14.0, "S": 15.2, "M": 30.44, "I": 21.0}
STORY = {  # loanStatus -> the story its payments follow
    **{"Paid Off Loan": 0, "Pending Paid Off": 1, "New Loan": 2, "Returned Item": 4, "Charged Off": 4},
    **dict.fromkeys(("External Collection", "Internal Collection"), 3),
    **dict.fromkeys(
        ("Settled Bankruptcy", "Settlement Paid Off", "Charged Off Paid Off", "Settlement Pending Paid Off"),
        5,
    ),
}


@dataclass
class PaidLoans:
    """Per-loan inputs of the payment generator (one entry per loan that has payments)."""

    freq: np.ndarray
    amount: np.ndarray
    scheduled: np.ndarray
    start_day: np.ndarray
    story: np.ndarray


def _schedule(rng: np.random.Generator, plan: Plan, paid: PaidLoans) -> dict[str, np.ndarray]:
    """Row skeleton: loan index, instalment/collection index, counts and dates."""
    m = len(paid.story)
    base = np.array([FREQ_INSTALMENTS.get(f, 13.0) for f in paid.freq])
    raw = base * (np.clip(paid.amount, 100, 5000) / 500.0) ** 0.3 * rng.lognormal(0.0, 0.3, m)
    coll = np.isin(paid.story, [3, 5]) & (rng.random(m) < 0.25)
    n_coll = np.where(coll, 1 + rng.poisson(2.0, m), 0)
    target = max(m, plan.n(BASE_ROWS["payment"]) - int(n_coll.sum()))
    hi = 105 - n_coll
    n_inst = fit_total(rng, np.clip(np.floor(raw * target / raw.sum()), 1, hi).astype(np.int64), target, hi)
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


# paymentStatus values of scheduled instalments, drawn as small integer codes (a string array of the 670k rows
# would take ~60 MB per intermediate) and turned into shared str objects at the end.
_CANCELLED, _CHECKED, _REJECTED, _SKIPPED, _PENDING, _NONE, _RETRY = range(7)
_STATUS_TEXT = np.array(
    ["Cancelled", "Checked", "Rejected", "Skipped", "Pending", "None", "Rejected Awaiting Retry"],
    dtype=object,
)


def _instalment_status(
    rng: np.random.Generator, rows: dict[str, np.ndarray], story: np.ndarray
) -> np.ndarray:
    """paymentStatus of scheduled instalments, following each loan's story."""
    s, k, ev = story[rows["li"]], rows["k"], rows["event"][rows["li"]]
    u = rng.random(len(k))
    run = rng.poisson(1.0, len(story))[rows["li"]]
    keep = (rng.random(len(story)) < 0.4)[rows["li"]]
    future, recent = rows["day"] > SNAPSHOT, rows["day"] > SNAPSHOT - np.timedelta64(12, "D")
    code = np.int8
    paying = np.where(u < 0.985, _CHECKED, np.where(u < 0.995, _REJECTED, _SKIPPED)).astype(code)
    retry = np.where(u < 0.8, _REJECTED, np.where(u < 0.9994, _SKIPPED, _RETRY)).astype(code)
    good_tail = np.where(future, _NONE, np.where(recent, _PENDING, paying)).astype(code)
    risky = (s >= 3) & (s <= 5)
    rules = [  # (where, status): the first that matches
        (s == 6, _CANCELLED),
        ((s <= 1) & (k < ev), paying),
        ((s == 0) & (k == ev), _CHECKED),
        ((s == 1) & (k == ev), _PENDING),
        (s <= 1, _CANCELLED),
        (s == 2, good_tail),
        (risky & (k < ev), np.where(u < 0.995, _CHECKED, _SKIPPED).astype(code)),
        (risky & (k == ev), _REJECTED),
        (risky & (k <= ev + run), retry),
        ((s != 4) & keep, _NONE),
    ]
    values = [np.full(len(k), v, code) if np.isscalar(v) else v for _, v in rules]
    status = np.select([where for where, _ in rules], values, _CANCELLED)
    status = np.where(future & (s != 6) & (status != _CANCELLED), _NONE, status)
    return _STATUS_TEXT[status]


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


def _amounts(
    rng: np.random.Generator, paid: PaidLoans, li: np.ndarray, k: np.ndarray, n: np.ndarray, coll: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """principal, fees and paymentAmount (~ principal + fees) per row."""
    amount, cost = paid.amount[li], np.maximum(paid.scheduled[li] - paid.amount[li], 0.0)
    u = (k - 0.5) / n
    principal = amount / n * (0.3 + 1.4 * u)
    fees = cost / n * (1.7 - 1.4 * u)
    principal = np.where(coll, amount * rng.uniform(0.03, 0.3, len(li)), principal)
    fees = np.where(coll, np.where(rng.random(len(li)) < 0.7, 0.0, rng.uniform(0, 30, len(li))), fees)
    refund = rng.random(len(li)) < 6e-5
    principal = np.where(refund, -rng.uniform(0.0, 303.37, len(li)), np.minimum(principal, 4_000.0))
    fees = np.where(refund, -rng.uniform(0.0, 42.56, len(li)), np.minimum(fees, 1_257.71))
    principal, fees = np.round(principal, 2), np.round(fees, 2)
    total = np.round(principal + fees + np.where(rng.random(len(li)) < 0.01, 0.01, 0.0), 2)
    return principal, fees, total


def _return_codes(rng: np.random.Generator, status: np.ndarray) -> np.ndarray:
    """paymentReturnCode: mostly on rejected rows, MISSED on some skipped ones, null elsewhere."""
    n = len(status)
    levels = np.array([*RETURN_CODES, None, "MISSED"], dtype=object)
    none, missed = len(RETURN_CODES), len(RETURN_CODES) + 1
    p = np.array(list(RETURN_CODES.values()), dtype=float)
    kept = rng.random(n) < 0.97
    drawn = rng.choice(len(RETURN_CODES), size=n, p=p / p.sum())  # as tasks.data.sample.common.choice draws
    codes = np.where(kept, drawn, none)
    out = np.where(np.isin(status, ["Rejected", "Rejected Awaiting Retry", "Returned"]), codes, none)
    return levels[np.where((status == "Skipped") & (rng.random(n) < 0.14), missed, out)]


def payments(
    rng: np.random.Generator, plan: Plan, paid: PaidLoans, loan_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """payment.csv columns (loans in the given order) and each loan's first-instalment status."""
    rows = _schedule(rng, plan, paid)
    status = _instalment_status(rng, rows, paid.story)
    day, same_loan = rows["day"].copy(), rows["li"][1:] == rows["li"][:-1]
    # same-date (Cancelled, None) pairs: a rescheduled instalment next to its cancelled original
    i = np.flatnonzero((status[1:] == "None") & (status[:-1] == "None") & same_loan) + 1
    i = i[rng.random(len(i)) < 0.04]
    i = i[np.diff(np.concatenate([[-2], i])) > 1]
    status[i - 1] = "Cancelled"
    day[i - 1] = day[i]
    coll = _collection_rows(rng, rows, paid.story)
    # midnight US Eastern time, in UTC
    utc = pd.DatetimeIndex(day.astype("datetime64[s]")).tz_localize("America/New_York").tz_convert(None)
    # Each part becomes str objects on its own: one concatenated unicode array would take ~70 MB at full size.
    inst_date = np.datetime_as_string(utc.to_numpy(), unit="s").astype(object)
    coll_date = np.datetime_as_string(coll["stamp"], unit="us").astype(object)
    li = np.concatenate([rows["li"], coll["li"]])
    k = np.concatenate([rows["k"], coll["k"]])
    is_coll = np.concatenate([np.zeros(len(rows["li"]), bool), np.ones(len(coll["li"]), bool)])
    status_all = np.concatenate([status, coll["status"]])
    # a couple of checked rows get the one-off 'Complete' and 'Returned' statuses
    checked = np.flatnonzero(status_all == "Checked")
    pick = rng.choice(checked, size=min(len(checked), 2 * plan.n(1)), replace=False)
    status_all[pick[: len(pick) // 2]] = "Complete"
    status_all[pick[len(pick) // 2 :]] = "Returned"
    n_all = np.concatenate([rows["n"], rows["n_coll"][coll["li"]]])
    principal, fees, total = _amounts(rng, paid, li, k, n_all, is_coll)
    table = {
        "loanId": loan_ids[li],
        "installmentIndex": k,
        "isCollection": is_coll,
        "paymentDate": np.concatenate([inst_date, coll_date]),
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
