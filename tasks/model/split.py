"""Chronological split: train on the past, validate on the next slice, test on the most recent one."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.common import run_logger, stage
from tasks.errors import PermanentError
from tasks.model.features import ModelTable
from tasks.registry import tracking
from tasks.settings import Settings


class Split:
    """Three time-ordered slices and where they meet (opaque to Prefect, like :class:`ModelTable`)."""

    __slots__ = ("train", "valid", "test", "boundaries")

    def __init__(
        self, train: ModelTable, valid: ModelTable, test: ModelTable, boundaries: dict[str, Any]
    ) -> None:
        self.train, self.valid, self.test, self.boundaries = train, valid, test, boundaries


def time_split_indices(times: np.ndarray, fractions: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """Indices of the train/valid/test slices by time; rows sharing a timestamp never straddle a boundary."""
    n = len(times)
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    cuts = []
    for share in (fractions[0], fractions[0] + fractions[1]):
        k = int(round(n * share))
        k = int(np.searchsorted(sorted_times, sorted_times[min(k, n - 1)], side="left")) if 0 < k < n else k
        cuts.append(k)
    parts = (order[: cuts[0]], order[cuts[0] : cuts[1]], order[cuts[1] :])
    if any(len(p) == 0 for p in parts):
        raise PermanentError(f"split: {n} labelled loans are too few for a 3-way time split {fractions}")
    return parts


def split_by_time(table: ModelTable, fractions: tuple[float, float, float]) -> Split:
    """Split the model table 70/15/15 (by default) on application time and record the boundaries."""
    t = table.application_time
    parts = dict(zip(("train", "valid", "test"), time_split_indices(t, fractions), strict=True))
    ends = (("start", np.min), ("end", np.max))
    boundaries: dict[str, Any] = {f"{n}_{e}": str(at(t[idx])) for n, idx in parts.items() for e, at in ends}
    boundaries |= {f"n_{name}": len(idx) for name, idx in parts.items()}
    boundaries |= {f"risky_share_{name}": float(table.label[idx].mean()) for name, idx in parts.items()}
    return Split(*(table.subset(idx) for idx in parts.values()), boundaries)


@stage("split")
def split_task(settings: Settings, table: ModelTable, run_id: str | None = None) -> Split:
    """Stage: the time split; its boundaries (and the table's figures) logged and recorded on ``run_id``."""
    split = split_by_time(table, settings.data.split_fractions)
    run_logger().info("split boundaries: %s", split.boundaries)
    if run_id:
        record = {"boundaries": split.boundaries, "table": table.stats}
        tracking.log_dict(settings, run_id, record, "split.json")
        tracking.log_params(settings, run_id, {f"split.{k}": v for k, v in split.boundaries.items()})
    return split
