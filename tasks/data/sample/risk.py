"""The known risk: P(risky) of a loan from its decision-time fields only (application and clarity report)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.data.sample.clarity import IDV, IND, INQ
from tasks.data.sample.common import DAY, sigmoid

# fmt: off
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


def _lookup(values: pd.Series, table: dict[str, float]) -> np.ndarray:
    """Map categories to effects; unknown and missing categories give 0."""
    codes, uniques = pd.factorize(values)
    effects = np.array([table.get(u, 0.0) for u in uniques] + [0.0], dtype=float)
    return effects[codes]


def risk_logit(frame: pd.DataFrame) -> np.ndarray:
    """The known risk score (log-odds, before noise) of loans from loan.csv's application columns left-joined
    with the clarity columns on ``clarityFraudId = underwritingid``; outcomes are never used."""
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
    return sum(w * sigmoid(logit + noise_sd * x) for x, w in zip(nodes, weights, strict=True))
