"""Label, join clarity, then serving's own row code (so the service runs exactly the code training ran)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from serving.contract import CLARITY_COLUMNS, LOAN_COLUMNS, OUTCOME_FIELDS, PERSONAL_FIELDS
from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES, build_rows
from tasks.common import release_freed_memory, run_logger, stage
from tasks.data.contract import NOT_FINAL_STATUSES
from tasks.errors import PermanentError
from tasks.settings import Settings

if TYPE_CHECKING:
    from tasks.data.validate import ValidationResult

# Outcomes and personal data (anon_ssn) are dropped here, before any feature: nothing downstream can carry them.
DECISION_LOAN_FIELDS = tuple(c for c in LOAN_COLUMNS if c not in OUTCOME_FIELDS | PERSONAL_FIELDS)


class ModelTable:
    """One row per labelled loan, column-wise: ``raw`` decision-time fields, ``features`` the model rows, label
    and application time. A plain class: Prefect walks dataclass and collection task inputs for futures."""

    __slots__ = ("raw", "features", "label", "application_time", "loan_ids", "stats")

    def __init__(
        self,
        raw: pd.DataFrame,
        features: pd.DataFrame,
        label: np.ndarray,
        application_time: np.ndarray,
        loan_ids: list[str],
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.raw, self.features, self.label = raw, features, label
        self.application_time, self.loan_ids, self.stats = application_time, loan_ids, stats or {}

    @classmethod
    def from_records(
        cls,
        records: list[dict[str, Any]],
        label: np.ndarray,
        application_time: np.ndarray,
        loan_ids: list[str],
        stats: dict[str, Any] | None = None,
    ) -> ModelTable:
        """A table from raw records."""
        raw = pd.DataFrame.from_records(records) if records else pd.DataFrame(index=range(0))
        return cls(raw, feature_frame(build_rows(records)), label, application_time, loan_ids, stats)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def records(self) -> list[dict[str, Any]]:
        """The raw fields as plain-Python records, as a JSON client sends them."""
        return _records(self.raw, list(self.raw.columns))

    @property
    def rows(self) -> list[list[Any]]:
        """The model rows as lists (as :func:`serving.features.build_rows` gives them)."""
        return self.features.astype(object).to_numpy().tolist()

    def subset(self, index: np.ndarray) -> ModelTable:
        """The rows at ``index`` (an integer array), in that order."""
        raw, features = (f.take(index).reset_index(drop=True) for f in (self.raw, self.features))
        loan_ids = [self.loan_ids[int(i)] for i in index]
        return ModelTable(raw, features, self.label[index], self.application_time[index], loan_ids)


def feature_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """Model rows as a DataFrame: feature-named columns, numbers as float64, categories as text."""
    frame = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    numeric = [c for c in FEATURE_NAMES if c not in CATEGORICAL_FEATURES]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def label_loans(loan: pd.DataFrame, bad: list[str], good: list[str]) -> pd.DataFrame:
    """Loans whose status maps to a label (1 = risky, 0 = good); other statuses and null ids are left out."""
    status = loan["loanStatus"]
    out = loan.loc[(status.isin(bad) | status.isin(good)) & loan["loanId"].notna()].copy()
    out["label"] = out["loanStatus"].isin(bad).astype("int8")
    counts = out["loanId"].value_counts()
    if (counts > 1).any():  # validation quarantines repeats; the id itself is never printed
        raise PermanentError(
            f"loan.csv: a loanId appears {int(counts.max())} times among labelled loans "
            f"({int((counts > 1).sum())} repeated id(s)); validate the tables first"
        )
    return out


def label_policy_counts(status: pd.Series, bad: list[str], good: list[str]) -> dict[str, dict[str, int]]:
    """How many loans each label policy labels, risky and good, and how many ``matured`` leaves out."""
    counts = status.value_counts()
    n = lambda statuses: int(counts.reindex(list(statuses), fill_value=0).sum())  # noqa: E731
    final_good = [s for s in good if s not in NOT_FINAL_STATUSES]
    return {
        policy: {
            "labelled": n(bad) + n(kept),
            "risky": n(bad),
            "good": n(kept),
            "left_out_not_final": n(good) - n(kept),
        }
        for policy, kept in (("seed", good), ("matured", final_good))
    }


def join_clarity(loans: pd.DataFrame, clarity: pd.DataFrame) -> pd.DataFrame:
    """Left-join the clarity report on ``clarityFraudId = underwritingid``; one row per loan is kept."""
    report = clarity.drop_duplicates("underwritingid")
    return loans.merge(
        report, how="left", left_on="clarityFraudId", right_on="underwritingid", validate="m:1"
    )


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    sub = frame[columns].astype(object)
    return sub.where(sub.notna(), None).to_dict("records")


def build_model_table(
    loan: pd.DataFrame, clarity: pd.DataFrame, bad: list[str], good: list[str], chunk_rows: int = 4096
) -> ModelTable:
    """Label, join and featurise (``chunk_rows`` records at a time, so all records never exist at once)."""
    labelled = label_loans(loan, bad, good)
    if labelled.empty:
        raise PermanentError("loan.csv: no loan has a loanStatus that the label mapping knows")
    joined = join_clarity(labelled, clarity)
    columns = list(DECISION_LOAN_FIELDS) + [c for c in CLARITY_COLUMNS if c != "underwritingid"]
    raw = joined[columns].reset_index(drop=True)
    features = pd.concat(
        [
            feature_frame(build_rows(_records(raw.iloc[start : start + chunk_rows], columns)))
            for start in range(0, len(raw), chunk_rows)
        ],
        ignore_index=True,
    )
    label = joined["label"].to_numpy(dtype=np.int8)
    stats = {
        "labelled_loans": int(len(joined)),
        "risky_share": float(label.mean()),
        "with_clarity_report": int(joined["underwritingid"].notna().sum()),
        "features": len(FEATURE_NAMES),
        "categorical_features": len(CATEGORICAL_FEATURES),
    }
    times = pd.to_datetime(joined["applicationDate"], format="ISO8601").to_numpy(dtype="datetime64[ns]")
    return ModelTable(raw, features, label, times, joined["loanId"].astype(str).tolist(), stats)


@stage("features")
def features_task(settings: Settings, validated: ValidationResult) -> ModelTable:
    """Stage: the model table from the validated tables, which it then lets go (nothing later reads them)."""
    tables, data = validated.tables, settings.data
    table = build_model_table(tables["loan"], tables["clarity"], *data.label_statuses())
    # counted on the configured statuses, so the card compares both policies whichever one trained the model
    status = tables["loan"].loc[tables["loan"]["loanId"].notna(), "loanStatus"]
    counts = label_policy_counts(status, data.label_bad_statuses, data.label_good_statuses)
    table.stats |= {"label_policy": data.label_policy, "label_policies": counts}
    tables.clear()
    release_freed_memory()
    run_logger().info("model table: %s", table.stats)
    return table
