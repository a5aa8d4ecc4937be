"""The MLflow model registry: register a bundle as a model version, find versions by alias, export bundles.

Errors fail closed: only "no such model / version / alias" means absent (:func:`tracking.is_absent`); any other
failure is a :class:`RegistryUnavailable`, which stages retry and which then fails the run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from serving.bundle import EVALUATION_FILE, META_FILE, stamp_version
from tasks.common import run_logger, stage
from tasks.errors import PermanentError, TransientError
from tasks.model.card import write_card
from tasks.registry import tracking
from tasks.registry.aliases import Alias
from tasks.registry.tracking import is_absent
from tasks.settings import RegistrySettings, Settings

BUNDLE_ARTIFACT_PATH = "bundle"


class RegistryUnavailable(TransientError):
    """The MLflow registry did not answer, or answered with an error that is not "absent"."""


class AlreadyExists(PermanentError):
    """A registered model of that name exists already (the registry's unique name refused a second one)."""


def unavailable(settings: Settings, what: str, exc: BaseException) -> NoReturn:
    """Raise :class:`RegistryUnavailable` for a failed registry call (``what`` says which)."""
    raise RegistryUnavailable(
        f"MLflow registry at {settings.tracking_uri} failed to {what}: {type(exc).__name__}: {str(exc)[:500]}"
    ) from exc


_UNAVAILABLE = object()  # ``absent`` default: "absent" is a registry failure like any other


def _ask(settings: Settings, what: str, call: Callable[[Any], Any], absent: Any = _UNAVAILABLE) -> Any:
    """``call(client)``; when the registry says the thing is absent, ``absent`` (raised when an exception), else
    any failure a :class:`RegistryUnavailable`."""
    try:
        return call(tracking.client(settings))
    except Exception as exc:
        if absent is _UNAVAILABLE or not is_absent(exc):
            unavailable(settings, what, exc)
        if isinstance(absent, Exception):
            raise absent from exc
        return absent


def _model_call(settings: Settings, what: str, method: str, *args: str, absent: Any = _UNAVAILABLE) -> Any:
    """``client.<method>(model_name, *args)`` through :func:`_ask` (a failure names the model)."""
    name = settings.registry.model_name
    return _ask(settings, f"{what} of {name!r}", lambda c: getattr(c, method)(name, *args), absent)


def _no_version(registry: RegistrySettings, version: str) -> PermanentError:
    return PermanentError(f"model {registry.model_name!r} has no version {version!r}")


def bundle_uri(registry: RegistrySettings, version: str) -> str:
    """Where a version's bundle can be downloaded (``mlflow artifacts download --artifact-uri ...``)."""
    return f"models:/{registry.model_name}/{version}"


def register_bundle(settings: Settings, run_id: str, bundle_dir: Path, tags: dict[str, str]) -> str:
    """A model version of the run's ``bundle/`` artifacts: created, stamped into the bundle, then the bundle
    uploaded (a failed upload removes the version)."""
    c, name = tracking.client(settings), settings.registry.model_name
    try:
        c.create_registered_model(name, description="Loan default risk (CatBoost bundle)")
    except Exception as exc:
        if not tracking.already_exists(exc):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri}/{BUNDLE_ARTIFACT_PATH}"
    version = str(c.create_model_version(name, source=source, run_id=run_id, tags=tags).version)
    try:
        if (bundle_dir / META_FILE).is_file():
            stamp_version(bundle_dir, version, model_name=name)
            if (bundle_dir / EVALUATION_FILE).is_file():
                write_card(bundle_dir)  # the card names its version
        c.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT_PATH)
    except BaseException:
        c.delete_model_version(name, version)
        raise
    return version


def get_version(settings: Settings, version: str) -> Any:
    """A model version by number; :class:`PermanentError` when it does not exist."""
    missing = _no_version(settings.registry, version)
    return _model_call(settings, f"read version {version}", "get_model_version", str(version), absent=missing)


def version_by_alias(settings: Settings, alias: str) -> Any | None:
    """The version an alias points to; None only when the alias (or the model) does not exist (an unreachable
    registry is never "no champion")."""
    return _model_call(
        settings, f"read alias {alias!r}", "get_model_version_by_alias", str(alias), absent=None
    )


def resolve_version(settings: Settings, model_version: str | None, alias: str | None) -> str:
    """A version given explicitly (checked to exist), or the one ``alias`` (default ``candidate``) points to."""
    if model_version:
        return str(get_version(settings, model_version).version)
    if (found := version_by_alias(settings, alias or Alias.CANDIDATE)) is None:
        raise PermanentError(
            f"model {settings.registry.model_name!r} has no alias {alias!r}: nothing to deploy"
        )
    return str(found.version)


def set_alias(settings: Settings, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``."""
    what = f"point alias {alias!r} at version {version}"
    _model_call(settings, what, "set_registered_model_alias", str(alias), str(version))


def delete_alias(settings: Settings, alias: str) -> None:
    """Remove ``alias`` (no error when it is absent)."""
    _model_call(settings, f"delete alias {alias!r}", "delete_registered_model_alias", str(alias), absent=None)


def set_version_tags(settings: Settings, version: str, tags: dict[str, Any]) -> None:
    """Set several tags on a model version, one call each, in the order given."""

    def call(c: Any) -> None:
        for key, value in tags.items():
            c.set_model_version_tag(settings.registry.model_name, str(version), key, str(value))

    _ask(settings, f"tag version {version}", call, _no_version(settings.registry, version))


def model_tags(settings: Settings) -> dict[str, str]:
    """The registered model's own tags ({} when the model does not exist yet)."""
    return record_tags(settings, settings.registry.model_name) or {}


def set_model_tag(settings: Settings, key: str, value: str) -> None:
    """Set one tag on the registered model (one call: a reader sees the old value or the new one)."""
    _model_call(settings, f"set tag {key!r}", "set_registered_model_tag", key, value)


def create_record(settings: Settings, name: str, tags: dict[str, str], description: str = "") -> None:
    """Create the registered model ``name`` with ``tags`` in one call (a compare-and-set on the unique name);
    :class:`AlreadyExists` when the name is taken."""
    try:
        tracking.client(settings).create_registered_model(name, tags=tags, description=description)
    except Exception as exc:
        if tracking.already_exists(exc):
            raise AlreadyExists(f"registered model {name!r} exists already") from exc
        unavailable(settings, f"create registered model {name!r}", exc)


def record_tags(settings: Settings, name: str) -> dict[str, str] | None:
    """The tags of the registered model ``name``; None when it does not exist."""
    call = lambda c: dict(c.get_registered_model(name).tags or {})  # noqa: E731
    return _ask(settings, f"read registered model {name!r}", call, None)


def records(settings: Settings, prefix: str, newest_only: bool = False) -> dict[str, dict[str, str]]:
    """Registered models named ``prefix``* (name → tags), every page; ``newest_only``: the greatest name."""

    def every_page(c: Any) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        token, size = None, 1 if newest_only else 1000
        while True:
            page = c.search_registered_models(f"name LIKE '{prefix}%'", size, ["name DESC"], token)
            found |= {m.name: dict(m.tags or {}) for m in page}
            if newest_only or not (token := page.token):
                return found

    return _ask(settings, f"list registered models named {prefix}*", every_page)


def download_bundle(settings: Settings, version: str, dst: Path) -> Path:
    """A version's bundle in ``dst`` (emptied first), its version stamped; PermanentError when absent."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    uri = bundle_uri(settings.registry, version)
    try:
        # asked of this client: a models:/ URI would be resolved against the environment's registry
        name = settings.registry.model_name
        source = tracking.client(settings).get_model_version_download_uri(name, str(version))
        path = tracking.download_artifacts(settings, source, dst)
    except Exception as exc:
        if is_absent(exc) or isinstance(exc, FileNotFoundError):
            raise PermanentError(f"{uri}: no bundle to download ({exc})") from exc
        unavailable(settings, f"download the bundle of version {version}", exc)
    if not (path / META_FILE).is_file():
        raise PermanentError(f"{uri} holds no model bundle ({META_FILE} missing)")
    stamp_version(path, str(version), model_name=settings.registry.model_name)
    return path


def version_tags(bundle_dir: Path) -> dict[str, str]:
    """The searchable tags of a new version, from its bundle's metadata."""
    meta = json.loads((bundle_dir / META_FILE).read_text())
    data = meta.get("data_fingerprint") or {}
    return {
        "data.source": str(data.get("source") or ""),
        "data.revision": str(data.get("revision") or ""),
        "test_roc_auc": f"{meta.get('metrics', {}).get('test_roc_auc', float('nan')):.4f}",
        "threshold": f"{meta['threshold']:.6f}",
    }


@stage("register")
def register_task(settings: Settings, run_id: str, bundle_dir: Path) -> str:
    """Stage: a new model version carrying the bundle, tagged from its metadata."""
    version = register_bundle(settings, run_id, bundle_dir, version_tags(bundle_dir))
    run_logger().info("registered version %s (%s)", version, bundle_uri(settings.registry, version))
    return version


@stage("export-bundle", max_retries=0)
def export_task(settings: Settings, version: str, context_dir: Path) -> Path:
    """Stage: a fresh Docker build context holding the version's bundle and the serving code."""
    from tasks.release.build_context import prepare_build_context

    bundle = download_bundle(settings, version, context_dir.parent / f"bundle-v{version}")
    context = prepare_build_context(bundle, context_dir, settings.wheel_cache_dir)
    run_logger().info("build context for v%s at %s", version, context)
    return context
