"""Labelled raw records and small real bundles for the serving tests (and for ``bench/serve --make-bundle``).

Records come from :func:`tasks.data.sample.generate` (the project's synthetic dataset: loan.csv + clarity file,
joined on ``clarityFraudId = underwritingid``) when that module is present; otherwise from a small local
generator with the same field names and CSV-string values.
"""

from __future__ import annotations

import csv
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from serving.bundle import BundleMeta, write_bundle
from serving.features import (
    CATEGORICAL_FEATURES,
    CATEGORICAL_INDICES,
    CLARITY_COLUMNS,
    IDENTITY_FIELDS,
    INDICATOR_FIELDS,
    INQUIRY_FIELDS,
    NUMERIC_INDICATORS,
    build_rows,
    clarity_column,
)
from serving.privacy import Pseudonymiser, reference_records
from serving.reason_table import copy_table

RISKY = (
    "External Collection", "Internal Collection", "Returned Item", "Charged Off", "Charged Off Paid Off",
    "Settled Bankruptcy", "Settlement Paid Off", "Settlement Pending Paid Off",
)  # fmt: skip
GOOD = ("Paid Off Loan", "New Loan", "Pending Paid Off")


def _csv_records(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _find(directory: Path, name: str) -> Path:
    hits = sorted(directory.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{name} not found under {directory}")
    return hits[0]


def records_from_files(directory: Path) -> list[dict[str, Any]]:
    """Labelled loans joined with their clarity report; values stay CSV strings, ``label`` is added."""
    loans = _csv_records(_find(directory, "loan.csv"))
    clarity = {
        r["underwritingid"]: r for r in _csv_records(_find(directory, "clarity_underwriting_variables.csv"))
    }
    out = []
    for loan in loans:
        status = loan.get("loanStatus", "")
        if not loan.get("loanId") or status not in RISKY + GOOD:
            continue
        record = dict(loan)
        report = clarity.get(loan.get("clarityFraudId") or "")
        if report:
            record.update(report)
        record["label"] = int(status in RISKY)
        out.append(record)
    return out


def sample_records(tmp: Path, scale: float = 0.02, seed: int = 1) -> list[dict[str, Any]]:
    """Labelled records from the project's sample generator, or from :func:`local_records` without it."""
    try:
        from tasks.data.sample import generate
    except ImportError:
        return local_records(600, seed)
    generate(tmp, scale=scale, seed=seed)
    return records_from_files(Path(tmp))


# --- a local stand-in for tasks.data.sample ------------------------------------------------------------------

_STATES = ("OH", "IL", "TX", "MO", "WI", "MI", "TN", "NC", "FL", "IN", "SC", "CA", "NV", "PA", "VA", "NJ")
_LEADS = ("bvMandatory", "lead", "organic", "prescreen", "rc_returning", "california")
_FREQ = ("B", "W", "M", "I", "S")
_IDENTITY_VALUES = {
    "ssnnamematch": ("match", "partial", "mismatch", "unavailable"),
    "nameaddressmatch": ("match", "mismatch", "unavailable", "partial"),
    "phonematchtype": ("M", "U", "FA", "LA"),
    "phonematchresult": ("unavailable", "match", "invalid"),
    "overallmatchresult": ("partial", "match", "other", "mismatch"),
    "phonetype": ("", "", "R", "B"),
    "ssndobreasoncode": ("", "", "D07", "D04"),
    "ssnnamereasoncode": ("", "", "S03"),
    "nameaddressreasoncode": ("", "A8"),
    "ssndobmatch": ("match", "partial", "invalid"),
}


def local_records(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` labelled records shaped like joined loan + clarity CSV rows (strings, blanks for missing)."""
    rng = random.Random(seed)
    start = datetime(2015, 1, 1)
    out = []
    for i in range(n):
        applied = start + timedelta(seconds=rng.randrange(0, 700 * 86400))
        score = rng.gauss(690, 90)
        apr = rng.choice((590.0, 645.0, 360.0, 601.0, 680.0, 490.0, 449.99))
        amount = rng.choice((300.0, 400.0, 500.0, 600.0, 800.0, 1000.0))
        has_cf = rng.random() < 0.85
        logit = (
            -0.012 * (score - 690) + 0.004 * (apr - 550) + (0.4 if not has_cf else 0.0) + rng.gauss(0, 0.8)
        )
        risky = logit > 0
        record: dict[str, Any] = {
            "loanId": f"LL-I-{10_000_000 + i:08d}",
            "anon_ssn": f"{rng.getrandbits(128):032x}",
            "payFrequency": rng.choice(_FREQ) if rng.random() > 0.01 else "",
            "apr": f"{apr}",
            "applicationDate": applied.isoformat(timespec="microseconds"),
            "originated": "True",
            "originatedDate": (applied + timedelta(hours=3)).isoformat(),
            "nPaidOff": f"{float(rng.choice((0, 0, 0, 1, 2)))}",
            "approved": "True",
            "isFunded": "1",
            "loanStatus": rng.choice(RISKY[:3]) if risky else rng.choice(GOOD),
            "loanAmount": f"{amount}",
            "originallyScheduledPaymentAmount": f"{amount * rng.uniform(1.8, 3.2):.2f}",
            "state": rng.choice(_STATES),
            "leadType": rng.choice(_LEADS),
            "leadCost": str(rng.choice((0, 3, 6, 10, 25, 40))),
            "fpStatus": "Checked",
            "clarityFraudId": "",
            "hasCF": "1" if has_cf else "0",
        }
        for column in CLARITY_COLUMNS:
            record[column] = ""
        if has_cf:
            issued = int((applied - datetime(1970, 1, 1)).total_seconds()) - rng.randrange(0, 30 * 86400)
            cf_id = f"{issued:08x}{rng.getrandbits(64):016x}"
            record["clarityFraudId"] = cf_id
            record["underwritingid"] = cf_id
            for f in INQUIRY_FIELDS:
                record[clarity_column("clearfraudinquiry", f)] = str(rng.randrange(0, 20))
            for f in INDICATOR_FIELDS:
                if f in NUMERIC_INDICATORS:
                    value = str(float(rng.randrange(0, 5)))
                else:
                    value = rng.choice(("True", "False", "False", ""))
                record[clarity_column("clearfraudindicator", f)] = value
            for f in IDENTITY_FIELDS:
                column = clarity_column("clearfraudidentityverification", f)
                if f == "overallmatchreasoncode":
                    record[column] = str(float(rng.randrange(1, 125)))
                elif f in _IDENTITY_VALUES:
                    record[column] = rng.choice(_IDENTITY_VALUES[f])
            record["clearfraudscore"] = f"{score:.1f}"
        record["label"] = int(risky)
        out.append(record)
    return out


# --- bundles -------------------------------------------------------------------------------------------


def strip_label(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "label"}


def make_bundle(
    directory: Path,
    records: list[dict[str, Any]],
    *,
    iterations: int = 50,
    depth: int = 4,
    model_version: str | None = "1",
    model_name: str = "loan-risk",
    seed: int = 1,
    reference_size: int = 50,
    reason_codes: bool = True,
) -> Path:
    """Train a real CatBoost model on ``records`` and write a bundle with a reference sample and (unless
    ``reason_codes`` is false: a bundle made before issue 10) the repository's reason-code table."""
    from catboost import CatBoostClassifier, Pool

    raw = [strip_label(r) for r in records]
    labels = [int(r["label"]) for r in records]
    rows = build_rows(raw)
    model = CatBoostClassifier(
        iterations=iterations,
        depth=depth,
        random_seed=seed,
        verbose=0,
        thread_count=2,
        allow_writing_files=False,
    )
    model.fit(Pool(rows, labels, cat_features=list(CATEGORICAL_INDICES)))
    # a bundle ships in the image: its reference records hold only what the features read (no loanId, anon_ssn)
    reference = reference_records(raw[:reference_size], Pseudonymiser(b"synthetic-bundles"))
    proba = model.predict(
        Pool(build_rows(reference), cat_features=list(CATEGORICAL_INDICES)), prediction_type="Probability"
    )
    meta = BundleMeta(
        model_name=model_name,
        threshold=0.5,
        categorical_features=list(CATEGORICAL_FEATURES),
        metrics={"roc_auc": 0.7, "f1": 0.6},
        data_fingerprint={"rows": len(rows), "sha256": "0" * 64},
        params={"iterations": iterations, "depth": depth},
        model_version=model_version,
        run_id="test-run",
    )
    out = write_bundle(
        directory,
        model,
        meta,
        reference={"records": reference, "probabilities": [float(p) for p in proba[:, 1]]},
    )
    if reason_codes:
        copy_table(out, meta.features)
    return out
