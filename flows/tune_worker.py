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
    """Run queued trials of ``study_name`` on the data at ``data_uri`` until the study has its trials or
    ``deadline`` (epoch seconds) passes; returns how many this run ran."""
    settings = get_settings()
    return tune_worker_task(settings, study_name, data_uri, run_id, index, deadline, storage)
