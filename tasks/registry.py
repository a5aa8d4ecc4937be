"""The MLflow model registry: register a bundle as a model version, find versions by alias, export bundles."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from serving.bundle import META_FILE, stamp_version
from tasks import tracking
from tasks.common import PermanentError, run_logger
from tasks.settings import Settings

BUNDLE_ARTIFACT_PATH = "bundle"


def bundle_uri(settings: Settings, version: str) -> str:
    """Where a version's bundle can be downloaded (``mlflow artifacts download --artifact-uri ...``)."""
    return f"models:/{settings.model_name}/{version}"


def register_bundle(settings: Settings, run_id: str, bundle_dir: Path, tags: dict[str, str]) -> str:
    """Create a model version whose source is the run's ``bundle/`` artifacts, stamp that version into the
    bundle's metadata, then upload the bundle; returns the version. A failed upload removes the version."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(settings)
    try:
        c.create_registered_model(settings.model_name, description="Loan default risk (CatBoost bundle)")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "already exists" not in str(exc):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri}/{BUNDLE_ARTIFACT_PATH}"
    version = str(
        c.create_model_version(settings.model_name, source=source, run_id=run_id, tags=tags).version
    )
    try:
        if (bundle_dir / META_FILE).is_file():
            stamp_version(bundle_dir, version, model_name=settings.model_name)
        c.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT_PATH)
    except BaseException:
        c.delete_model_version(settings.model_name, version)
        raise
    return version


def get_version(settings: Settings, version: str) -> Any:
    """A model version by number; :class:`PermanentError` when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client(settings).get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        raise PermanentError(f"model {settings.model_name!r} has no version {version!r}") from exc


def version_by_alias(settings: Settings, alias: str) -> Any | None:
    """The version an alias points to, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client(settings).get_model_version_by_alias(settings.model_name, alias)
    except MlflowException:
        return None


def set_alias(settings: Settings, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    tracking.client(settings).set_registered_model_alias(settings.model_name, alias, str(version))


def delete_alias(settings: Settings, alias: str) -> None:
    """Remove ``alias`` (no error when it is absent)."""
    from mlflow.exceptions import MlflowException

    try:
        tracking.client(settings).delete_registered_model_alias(settings.model_name, alias)
    except MlflowException:
        pass


def set_version_tags(settings: Settings, version: str, tags: dict[str, Any]) -> None:
    """Set several tags on a model version."""
    c = tracking.client(settings)
    for key, value in tags.items():
        c.set_model_version_tag(settings.model_name, str(version), key, str(value))


def download_bundle(settings: Settings, version: str, dst: Path) -> Path:
    """Download a version's bundle into ``dst`` (emptied first) and stamp the version into its metadata."""
    import mlflow

    source = tracking.client(settings).get_model_version_download_uri(settings.model_name, str(version))
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    path = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(dst), tracking_uri=settings.tracking_uri
        )
    )
    if not (path / META_FILE).is_file():
        raise PermanentError(f"{bundle_uri(settings, version)} holds no model bundle ({META_FILE} missing)")
    stamp_version(path, str(version), model_name=settings.model_name)
    return path


@task(name="register", cache_policy=NO_CACHE)
def register_task(settings: Settings, run_id: str, bundle_dir: Path, tags: dict[str, str]) -> str:
    """Prefect task: a new model version carrying the bundle."""
    version = register_bundle(settings, run_id, bundle_dir, tags)
    run_logger().info(
        "registered %s version %s (%s)", settings.model_name, version, bundle_uri(settings, version)
    )
    return version


@task(name="export-bundle", cache_policy=NO_CACHE)
def export_task(settings: Settings, version: str, context_dir: Path) -> Path:
    """Prefect task: a fresh Docker build context holding the version's bundle and the serving code."""
    from serving.build_context import prepare_build_context

    bundle = download_bundle(settings, version, context_dir.parent / f"bundle-v{version}")
    context = prepare_build_context(bundle, context_dir, settings.wheel_cache_dir)
    run_logger().info("build context for v%s at %s", version, context)
    return context
