"""The tune-worker flow: one worker of a training run's Optuna study (``tune_mode = "pool"``), running queued
trials until none is left (:func:`tasks.model.tune.worker_main`). It carries the training flow's name.
"""

from __future__ import annotations

from prefect import flow

from tasks.model.tune import tune_worker_task
from tasks.settings import get_settings


@flow(name="loan-risk-training", log_prints=False)
def tune_worker_flow(
    study_name: str,
    data_uri: str,
    run_id: str | None = None,
    index: int = 0,
    deadline: float = 0.0,
    storage: str | None = None,
) -> int:
    """Run queued trials of ``study_name`` until it has its trials or ``deadline`` passes; how many ran."""
    return tune_worker_task(get_settings(), study_name, data_uri, run_id, index, deadline, storage)
