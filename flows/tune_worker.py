"""The tune-worker flow: one worker of a training run's Optuna study (``tune_mode = "pool"``).

The tune stage starts ``tune_workers`` runs of the ``loan-risk-training/tune-worker`` deployment without waiting
for them; each run, on whichever worker of the work pool takes it, runs queued trials of the study until none is
left (:func:`tasks.model.tune.worker_main`). It reads the study from its own ``optuna_storage`` and logs to its own MLflow
tracking URI, which must be the stage's (a PostgreSQL URL and the tracking server on a team's stack); the data
comes as the training run's ``tuning/data`` artifact. The flow carries the training flow's name, so the
deployment reads as a part of training.

Composition only.
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
