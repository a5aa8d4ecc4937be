"""The chronological split: 70/15/15, no time overlap, boundaries recorded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.errors import PermanentError
from tasks.model.features import ModelTable
from tasks.model.split import split_by_time, time_split_indices


def make_table(times: np.ndarray) -> ModelTable:
    n = len(times)
    return ModelTable(
        raw=pd.DataFrame({"i": range(n)}),
        features=pd.DataFrame({"x": np.arange(n, dtype=float)}),
        label=(np.arange(n) % 2).astype(np.int8),
        application_time=times,
        loan_ids=[f"L{i}" for i in range(n)],
    )


def test_split_is_chronological_with_expected_sizes() -> None:
    rng = np.random.default_rng(0)
    times = np.datetime64("2015-01-01") + rng.integers(0, 10**9, 1000).astype("timedelta64[s]")
    split = split_by_time(make_table(times), (0.7, 0.15, 0.15))
    assert (len(split.train), len(split.valid), len(split.test)) == (700, 150, 150)
    assert split.train.application_time.max() < split.valid.application_time.min()
    assert split.valid.application_time.max() < split.test.application_time.min()
    b = split.boundaries
    assert b["n_train"] == 700 and b["train_end"] < b["valid_start"] <= b["valid_end"] < b["test_start"]
    ids = split.train.loan_ids + split.valid.loan_ids + split.test.loan_ids
    assert sorted(ids) == sorted(f"L{i}" for i in range(1000))


def test_equal_timestamps_never_straddle_a_boundary() -> None:
    times = np.array(["2016-01-01"] * 5 + ["2016-01-02"] * 10 + ["2016-01-03"] * 5, dtype="datetime64[ns]")
    tr, va, te = time_split_indices(times, (0.7, 0.15, 0.15))
    assert set(times[tr]).isdisjoint(times[va]) and set(times[va]).isdisjoint(times[te])


def test_too_few_rows_is_a_clear_error() -> None:
    times = np.array(["2016-01-01"] * 3, dtype="datetime64[ns]")
    with pytest.raises(PermanentError, match="too few"):
        time_split_indices(times, (0.7, 0.15, 0.15))
