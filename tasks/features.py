"""Dataset-level feature steps: label, one row per loan, the clarity join, then serving's row-level code.

The row-level transformation (raw record → model row) lives in :mod:`serving.features` so that the service
runs exactly the code training ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from serving.contract import CLARITY_COLUMNS, LOAN_COLUMNS, OUTCOME_FIELDS, PERSONAL_FIELDS
from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES, build_rows
from tasks.common import PermanentError, run_logger

# Raw fields carried into the model table: decision-time loan fields, the clarity report, and the ids needed
# for joining and splitting. Outcomes and personal data (anon_ssn) are dropped right here, before any feature
# is computed: nothing downstream (the bundle's reference sample, logs, artifacts) can carry them.
DECISION_LOAN_FIELDS = tuple(c for c in LOAN_COLUMNS if c not in OUTCOME_FIELDS | PERSONAL_FIELDS)


class ModelTable:
    """One row per labelled loan: raw decision-time records, their model rows, label and time.

    A plain class on purpose: Prefect walks dataclass and collection inputs of every task looking for futures,
    which for ~39k records of ~70 fields costs minutes; an opaque object is passed as it is.
    """

    __slots__ = ("records", "rows", "label", "application_time", "loan_ids", "stats")

    def __init__(
        self,
        records: list[dict[str, Any]],
        rows: list[list[Any]],
        label: np.ndarray,
        application_time: np.ndarray,
        loan_ids: list[str],
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.records, self.rows, self.label = records, rows, label
        self.application_time, self.loan_ids, self.stats = application_time, loan_ids, stats or {}

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: np.ndarray) -> ModelTable:
        """The rows at ``index`` (an integer array), in that order."""
        idx = [int(i) for i in index]
        return ModelTable(
            records=[self.records[i] for i in idx],
            rows=[self.rows[i] for i in idx],
            label=self.label[index],
            application_time=self.application_time[index],
            loan_ids=[self.loan_ids[i] for i in idx],
        )

    def frame(self) -> pd.DataFrame:
        """The model rows as a DataFrame with feature names (for importance plots and inspection)."""
        return pd.DataFrame(self.rows, columns=list(FEATURE_NAMES))


def label_loans(loan: pd.DataFrame, bad: list[str], good: list[str]) -> pd.DataFrame:
    """Loans whose status maps to a label (1 = risky, 0 = good); other statuses and null ids are left out."""
    status = loan["loanStatus"]
    keep = status.isin(bad) | status.isin(good)
    keep &= loan["loanId"].notna()
    out = loan.loc[keep].copy()
    out["label"] = out["loanStatus"].isin(bad).astype("int8")
    counts = out["loanId"].value_counts()
    if (counts > 1).any():  # validation quarantines repeats; the id itself is never printed
        raise PermanentError(
            f"loan.csv: a loanId appears {int(counts.max())} times among labelled loans "
            f"({int((counts > 1).sum())} repeated id(s)); validate the tables first"
        )
    return out


def join_clarity(loans: pd.DataFrame, clarity: pd.DataFrame) -> pd.DataFrame:
    """Left-join the clarity report on ``clarityFraudId = underwritingid``; one row per loan is kept."""
    report = clarity.drop_duplicates("underwritingid")
    joined = loans.merge(
        report, how="left", left_on="clarityFraudId", right_on="underwritingid", validate="m:1"
    )
    if len(joined) != len(loans):  # pragma: no cover - guarded by validate="m:1"
        raise PermanentError(f"clarity join changed the row count from {len(loans)} to {len(joined)}")
    return joined


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Plain-Python records (None for missing), the same values a JSON client would send."""
    sub = frame[columns].astype(object)
    sub = sub.where(sub.notna(), None)
    return sub.to_dict("records")


def build_model_table(
    loan: pd.DataFrame, clarity: pd.DataFrame, bad: list[str], good: list[str]
) -> ModelTable:
    """Label, join and featurise: one row per labelled loan, identifiers and outcomes never features."""
    labelled = label_loans(loan, bad, good)
    if labelled.empty:
        raise PermanentError("loan.csv: no loan has a loanStatus that the label mapping knows")
    joined = join_clarity(labelled, clarity)
    columns = list(DECISION_LOAN_FIELDS) + [c for c in CLARITY_COLUMNS if c != "underwritingid"]
    records = _records(joined, columns)
    rows = build_rows(records)
    times = pd.to_datetime(joined["applicationDate"], format="ISO8601").to_numpy(dtype="datetime64[ns]")
    label = joined["label"].to_numpy(dtype=np.int8)
    stats = {
        "labelled_loans": int(len(joined)),
        "risky_share": float(label.mean()),
        "with_clarity_report": int(joined["underwritingid"].notna().sum()),
        "features": len(FEATURE_NAMES),
        "categorical_features": len(CATEGORICAL_FEATURES),
    }
    return ModelTable(records, rows, label, times, joined["loanId"].astype(str).tolist(), stats)


@task(name="features", cache_policy=NO_CACHE, retries=0)
def features_task(tables: dict[str, pd.DataFrame], bad: list[str], good: list[str]) -> ModelTable:
    """Prefect task: build the model table from validated tables."""
    table = build_model_table(tables["loan"], tables["clarity"], bad, good)
    run_logger().info("model table: %s", table.stats)
    return table
