"""clarity_underwriting_variables.csv: one fraud-check report per clarity id (inquiry counts, indicators,
identity checks, score), drawn around a latent fraud factor, and the ObjectId-like ids whose first 8 hex digits
are the report's Unix time."""

from __future__ import annotations

import numpy as np

from tasks.data import contract
from tasks.data.sample.common import DAY, EPOCH, T_START, Plan, choice, digits, hex_random, sigmoid

# fmt: off
# Indicator -> share True before the fraud-factor shift (None: a numeric column), in the contract's order.
INDICATOR_SHARES: dict[str, float | None] = {
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
PHONE_TYPES = {  # phonematchtype -> (phonematchtypedescription, share)
    "M": ("(M) Mobile Phone", 0.94), "U": ("(U) Unknown", 0.03), "FA": ("(FA) Fax", 0.01),
    "LA": ("(LA) Land Line Alternate", 0.008), "A": ("(A) Answering Service", 0.005),
    "F": ("(F) Fixed Line", 0.004), "P": ("(P) Pager", 0.002), "L": ("(L) Land Line", 0.001),
}

# fmt: on
# Identity check -> its results' (base share, loading on the fraud factor), drawn in this order.
MATCH_DRAWS: dict[str, dict[str, tuple[float, float]]] = {
    "ssnnamematch": {
        "match": (0.898, 0.0),
        "partial": (0.054, 0.6),
        "mismatch": (0.03, 1.1),
        "unavailable": (0.015, 0.5),
        "invalid": (0.003, 0.9),
    },
    "nameaddressmatch": {
        "match": (0.8, 0.0),
        "mismatch": (0.06, 0.6),
        "unavailable": (0.02, 0.3),
        "partial": (0.113, 0.4),
        "invalid": (0.007, 0.5),
    },
    "phonematchtype": {k: (share, 0.0 if k == "M" else 0.6) for k, (_, share) in PHONE_TYPES.items()},
    "overallmatchresult": {
        "partial": (0.71, 0.0),
        "match": (0.28, -0.5),
        "other": (0.006, 0.6),
        "mismatch": (0.004, 1.2),
    },
    "ssndobmatch": {
        "match": (0.79, 0.0),
        "partial": (0.15, 0.3),
        "invalid": (0.02, 0.6),
        "mismatch": (0.03, 0.8),
        "unavailable": (0.01, 0.3),
    },
}

INQ = {n: contract.clarity_column("clearfraudinquiry", n) for n in contract.INQUIRY_FIELDS}
IND = {n: contract.clarity_column("clearfraudindicator", n) for n in contract.INDICATOR_FIELDS}
IDV = {n: contract.clarity_column("clearfraudidentityverification", n) for n in contract.IDENTITY_FIELDS}


def categorical_draw(
    rng: np.random.Generator, spec: dict[str, tuple[float, float]], q: np.ndarray
) -> np.ndarray:
    """Draw a category per row; ``spec`` maps category -> (base share, loading on the fraud factor ``q``)."""
    names = np.array(list(spec), dtype=object)
    share, load = np.array(list(spec.values())).T
    logits = np.log(share)[None, :] + q[:, None] * load[None, :]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    cum = np.cumsum(prob / prob.sum(axis=1, keepdims=True), axis=1)
    idx = (rng.random(len(q))[:, None] > cum).sum(axis=1)
    return names[np.minimum(idx, len(names) - 1)]


def clarity_presence(
    rng: np.random.Generator, plan: Plan, loans: dict[str, np.ndarray], funded: np.ndarray, n_ids: int
) -> np.ndarray:
    """Which clarity ids (units) have a report: ~83% of funded loans, ~31,750 ids in all."""
    unit, has_cf = loans["unit"], loans["has_cf"]
    cf_funded = np.flatnonzero(funded & has_cf)
    reported = rng.choice(cf_funded, size=min(plan.n(0.83 * 38_982), len(cf_funded)), replace=False)
    present = np.bincount(unit[reported], minlength=n_ids) > 0
    has_funded = np.bincount(unit[cf_funded], minlength=n_ids) > 0
    need = plan.n(31_750) - int(present.sum())
    if need > 0:
        pool = np.flatnonzero(~present & ~has_funded)
        present[rng.choice(pool, size=min(need, len(pool)), replace=False)] = True
    return present


def clarity_ids(rng: np.random.Generator, unit_base: np.ndarray) -> np.ndarray:
    """ObjectId-like ids: 8 hex digits of a Unix time at or shortly before the unit's first application."""
    n = len(unit_base)
    lag = np.where(rng.random(n) < 0.8, rng.exponential(120.0, n), rng.exponential(3 * DAY, n))
    unix = (T_START - EPOCH).astype(np.int64) + np.floor(unit_base - lag).astype(np.int64)
    return np.char.add(digits(unix, 8, 16), hex_random(rng, n, 16))


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
    for name, share in INDICATOR_SHARES.items():  # in the contract's order
        if share is None:
            continue
        if share == 0.0:
            out[name] = np.zeros(n, dtype=bool)
            continue
        load = 0.3 if share > 0.5 else 0.6
        out[name] = rng.random(n) < sigmoid(np.log(share / (1 - share)) + load * q)
    out["morethan3inquiriesinthelast30days"] = thirty > 3
    counted = [v for k, v in out.items() if k not in NOT_COUNTED]
    out["totalnumberoffraudindicators"] = np.minimum(np.sum(counted, axis=0), 8).astype(float)
    banks = 1.0 + np.floor(rng.pareto(1.6, n) * (rng.random(n) < 0.35) * np.exp(0.3 * q))
    out["maxnumberofssnswithanybankaccount"] = np.minimum(banks, 4_056.0)
    return out


def _identity(rng: np.random.Generator, q: np.ndarray) -> dict[str, np.ndarray]:
    """Identity-verification results and their reason codes."""
    n = len(q)
    drawn = {name: categorical_draw(rng, spec, q) for name, spec in MATCH_DRAWS.items()}
    ssn, addr, phone, dob = (
        drawn[k] for k in ("ssnnamematch", "nameaddressmatch", "phonematchtype", "ssndobmatch")
    )
    ssn_code = np.where(ssn == "partial", choice(rng, {"S03": 0.6, "S07": 0.4}, n), None)
    ssn_desc = {"S03": "(S03) SSN match to address only", "S07": "(S07) SSN Match to last name only"}
    dob_code = choice(rng, {"D07": 0.4, "D04": 0.2, "D03": 0.15, "D01": 0.1, "D02": 0.1, "D06": 0.05}, n)
    return drawn | {
        "ssnnamereasoncodedescription": np.array([ssn_desc.get(c) for c in ssn_code], dtype=object),
        "phonematchresult": choice(
            rng,
            {"unavailable": 0.956, "match": 0.03, "invalid": 0.008, "partial": 0.004, "mismatch": 0.002},
            n,
        ),
        "nameaddressreasoncodedescription": np.where(addr == "partial", "(A8) Match to Last Name only", None),
        "phonematchtypedescription": np.array([PHONE_TYPES[p][0] for p in phone], dtype=object),
        "phonetype": np.where(rng.random(n) < 0.0305, choice(rng, {"R": 0.5, "B": 0.3, "MU": 0.2}, n), None),
        "ssndobreasoncode": np.where(
            np.isin(dob, ["partial", "mismatch", "invalid"]) & (rng.random(n) < 0.9), dob_code, None
        ),
        "ssnnamereasoncode": ssn_code,
        "nameaddressreasoncode": np.where(addr == "partial", "A8", None),
        "overallmatchreasoncode": np.clip(np.round(np.exp(rng.normal(np.log(11), 0.9, n))), 1, 125),
    }


def clarity_table(rng: np.random.Generator, plan: Plan, ids: np.ndarray) -> dict[str, np.ndarray]:
    """One clarity report per id: inquiries, indicators, identity checks and the score."""
    n = len(ids)
    q = rng.standard_normal(n)
    inq = _inquiries(rng, q)
    ind = _indicators(rng, q, inq["thirtydaysago"])
    idv = _identity(rng, q)
    score = np.clip(np.round(691.0 - 95.0 * q + rng.normal(0.0, 65.0, n)), 122, 965)
    no_ind = rng.random(n) < 40 / 49_752
    frame = {INQ[k]: np.where(rng.random(n) < 2 / 49_752, np.nan, v) for k, v in inq.items()}
    for k in contract.INDICATOR_FIELDS:
        v = ind[k]
        missing = no_ind | (rng.random(n) > SPARSE_INDICATORS.get(k, 1.0))
        text = v if v.dtype.kind == "f" else np.where(v, "True", "False").astype(object)
        frame[IND[k]] = np.where(missing, np.nan if v.dtype.kind == "f" else None, text)
    for k, v in idv.items():
        frame[IDV[k]] = (
            np.where(no_ind, np.nan, v) if v.dtype.kind == "f" else np.where(no_ind, None, v.astype(object))
        )
    score[rng.choice(n, size=min(n, plan.n(137)), replace=False)] = np.nan
    frame["clearfraudscore"] = score
    frame["underwritingid"] = ids.astype(object)
    return {c: frame[c] for c in contract.CLARITY_COLUMNS}
