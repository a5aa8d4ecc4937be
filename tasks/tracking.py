"""MLflow wiring: tracking URI, experiment, the training run. Uses the client API only (thread-safe)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.settings import Settings


def client(settings: Settings) -> Any:
    """An ``MlflowClient`` for the configured tracking URI (local SQLite store by default).

    MLflow's global URI is never set: ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the
    process environment, which would pin every later settings object of the process to the first store.
    """
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings) -> str:
    """The experiment's id, created on first use (artifacts under the state folder for local stores)."""
    c = client(settings)
    exp = c.get_experiment_by_name(settings.mlflow_experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:"):
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.resolve().as_uri()
    try:
        return c.create_experiment(settings.mlflow_experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another run
        return c.get_experiment_by_name(settings.mlflow_experiment).experiment_id


def start_run(
    settings: Settings, name: str, tags: Mapping[str, str] | None = None, parent: str | None = None
) -> str:
    """Create a run (nested under ``parent`` when given) and return its id."""
    all_tags = dict(tags or {})
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = client(settings).create_run(experiment_id(settings), run_name=name, tags=all_tags)
    return run.info.run_id


def log_params(settings: Settings, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (values stringified, truncated to MLflow's limit)."""
    from mlflow.entities import Param

    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    if items:
        client(settings).log_batch(run_id, params=items)


def set_tags(settings: Settings, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run in one batch (values stringified)."""
    from mlflow.entities import RunTag

    items = [RunTag(str(k), str(v)) for k, v in tags.items()]
    if items:
        client(settings).log_batch(run_id, tags=items)


def log_metrics(settings: Settings, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite metrics in one batch."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    if items:
        client(settings).log_batch(run_id, metrics=items)


def log_dict(settings: Settings, run_id: str, data: Any, artifact_file: str) -> None:
    """Log a JSON document as an artifact of the run."""
    client(settings).log_text(run_id, json.dumps(data, indent=2, default=str), artifact_file)


def log_files(settings: Settings, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Log local files under ``artifact_path``."""
    c = client(settings)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """Close a run with FINISHED, FAILED or KILLED."""
    client(settings).set_terminated(run_id, status=status)


def scratch_dir(prefix: str) -> Path:
    """A temporary directory for files on their way to MLflow."""
    return Path(tempfile.mkdtemp(prefix=prefix))


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
