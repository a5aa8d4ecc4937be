"""The one door to MLflow (nothing else imports ``mlflow``): experiment, runs, artifacts, the registry client.

Client API only: thread-safe, and MLflow's global state is never set.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.settings import Settings, mlflow_environment


def client(settings: Settings) -> Any:
    """An ``MlflowClient`` for the settings' tracking URI (never ``mlflow.set_tracking_uri``: it writes the
    process environment, pinning every later settings object to the first store)."""
    mlflow_environment(settings.registry)
    from mlflow import MlflowClient

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(settings: Settings) -> str:
    """The experiment's id, created on first use (artifacts under the state folder for local stores)."""
    c = client(settings)
    exp = c.get_experiment_by_name(settings.registry.mlflow_experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:"):
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.resolve().as_uri()
    try:
        return c.create_experiment(settings.registry.mlflow_experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another run
        return c.get_experiment_by_name(settings.registry.mlflow_experiment).experiment_id


def start_run(
    settings: Settings, name: str, tags: Mapping[str, str] | None = None, parent: str | None = None
) -> str:
    """Create a run (nested under ``parent`` when given) and return its id; :func:`run` also closes it."""
    all_tags = dict(tags or {}) | ({"mlflow.parentRunId": parent} if parent else {})
    return client(settings).create_run(experiment_id(settings), run_name=name, tags=all_tags).info.run_id


@contextmanager
def run(
    settings: Settings, name: str, tags: Mapping[str, str] | None = None, parent: str | None = None
) -> Iterator[str]:
    """``with tracking.run(settings, name) as run_id:`` ends FINISHED, or FAILED when the block raises."""
    run_id = start_run(settings, name, tags, parent)
    try:
        yield run_id
    except BaseException:
        client(settings).set_terminated(run_id, status="FAILED")
        raise
    client(settings).set_terminated(run_id, status="FINISHED")


def log_child_run(
    settings: Settings,
    parent: str,
    name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str] | None = None,
    status: str = "FINISHED",
) -> str:
    """A finished run nested under ``parent`` holding ``params`` and ``metrics`` (one per Optuna trial)."""
    child = start_run(settings, name, tags, parent)
    log_params(settings, child, params)
    log_metrics(settings, child, metrics)
    client(settings).set_terminated(child, status=status)
    return child


def log_params(settings: Settings, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params (values stringified, truncated to MLflow's limit)."""
    from mlflow.entities import Param

    _log_batch(settings, run_id, params=[Param(str(k), str(v)[:6000]) for k, v in params.items()])


def set_tags(settings: Settings, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags on a run in one batch (values stringified)."""
    from mlflow.entities import RunTag

    _log_batch(settings, run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


def log_metrics(settings: Settings, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log finite metrics in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    _log_batch(settings, run_id, metrics=[Metric(k, v, now, step) for k, v in finite.items()])


def _log_batch(settings: Settings, run_id: str, **items: list[Any]) -> None:
    if any(items.values()):
        client(settings).log_batch(run_id, **items)


def log_text(settings: Settings, run_id: str, text: str, artifact_file: str) -> None:
    """Log a text document (HTML, Markdown, JSON) as an artifact of the run."""
    client(settings).log_text(run_id, text, artifact_file)


def log_dict(settings: Settings, run_id: str, data: Any, artifact_file: str) -> None:
    log_text(settings, run_id, json.dumps(data, indent=2, default=str), artifact_file)


def log_files(settings: Settings, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Log local files under ``artifact_path``."""
    c = client(settings)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)


def log_bytes(settings: Settings, run_id: str, files: Mapping[str, bytes], artifact_path: str) -> None:
    """Log in-memory files (``{"deciles.png": b"..."}``) under ``artifact_path``."""
    folder = scratch_dir("artifacts-")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    log_files(settings, run_id, [folder / name for name in files], artifact_path)


def log_figures(settings: Settings, run_id: str, figures: Mapping[str, Any], artifact_path: str) -> None:
    """Log matplotlib figures as PNGs under ``artifact_path`` (``{"roc.png": fig}``) and close them."""
    import matplotlib.pyplot as plt

    c = client(settings)
    for name, fig in figures.items():
        try:
            c.log_figure(run_id, fig, f"{artifact_path}/{name}")
        finally:
            plt.close(fig)


def scratch_dir(prefix: str) -> Path:
    """A temporary directory for files on their way to MLflow."""
    return Path(tempfile.mkdtemp(prefix=prefix))


_ALIAS_NOT_FOUND = re.compile(r"alias \S+ not found", re.IGNORECASE)


def is_absent(exc: BaseException) -> bool:
    """Whether an MLflow error says the model, version, alias or artifact does not exist (a missing alias of an
    existing model is ``INVALID_PARAMETER_VALUE`` "Registered model alias ... not found" in MLflow 3)."""
    from mlflow.exceptions import MlflowException

    code = exc.error_code if isinstance(exc, MlflowException) else None
    alias_missing = code == "INVALID_PARAMETER_VALUE" and bool(_ALIAS_NOT_FOUND.search(str(exc)))
    return code == "RESOURCE_DOES_NOT_EXIST" or alias_missing


def already_exists(exc: BaseException) -> bool:
    """Whether an MLflow error says the thing to create exists already."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and (
        "RESOURCE_ALREADY_EXISTS" in str(exc.error_code) or "already exists" in str(exc)
    )


def download_artifacts(settings: Settings, artifact_uri: str, dst: Path) -> Path:
    """Download ``artifact_uri`` (``runs:/``, ``models:/`` or a store URI) into ``dst``; returns the local path."""
    mlflow_environment(settings.registry)
    from mlflow.artifacts import download_artifacts as download

    return Path(download(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=settings.tracking_uri))
