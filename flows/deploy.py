"""The deploy flow: export bundle → build image → run → smoke test → clean up → push → release.

Composition only; the steps live in ``tasks/``. ``champion`` moves only after the image passed its smoke test
and the registry holds it; a failure anywhere leaves the registry's ``latest`` and ``champion`` where they were.
Run ``python -m flows.deploy --model-version V`` (or ``--alias candidate``), or ``--rollback``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tasks.settings import Settings, configure_environment, get_settings

configure_environment()

from prefect import flow

from serving.bundle import load_bundle
from tasks import registry
from tasks.common import PermanentError, retry_options, run_logger
from tasks.image import (
    DeployStepError,
    build_task,
    cleanup_task,
    get_client,
    pull_image,
    push_task,
    run_task,
    untag,
)
from tasks.release import CHAMPION, champion_summary, make_champion, release_task
from tasks.smoke import smoke_task


class DeployError(RuntimeError):
    """A deploy step failed; the message names the step and the cause."""


def registry_credentials(settings: Settings) -> tuple[str | None, str | None]:
    """Registry user and password: from the settings (environment), or a Prefect Secret block."""
    password = settings.registry_password.get_secret_value() if settings.registry_password else None
    if password is None and settings.registry_secret_block:
        from prefect.blocks.system import Secret

        password = str(Secret.load(settings.registry_secret_block).get())
    return settings.registry_username, password


def git_commit() -> str:
    """The source commit of this checkout ('unknown' outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_version(settings: Settings, model_version: str | None, alias: str | None) -> str:
    """The version to deploy: given explicitly, or the one ``alias`` points to."""
    if model_version:
        return str(registry.get_version(settings, model_version).version)
    found = registry.version_by_alias(settings, alias or "candidate")
    if found is None:
        raise PermanentError(f"model {settings.model_name!r} has no alias {alias!r}: nothing to deploy")
    return str(found.version)


def _step(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one step; a failure is re-raised as :class:`DeployError` naming the step."""
    try:
        return fn(*args, **kwargs)
    except DeployError:
        raise
    except Exception as exc:
        cause = str(exc) if isinstance(exc, DeployStepError) else f"{type(exc).__name__}: {exc}"
        raise DeployError(f"deploy step '{name}' failed: {cause}") from exc


def _verify_image(
    settings: Settings, image_ref: str, version: str, reference: dict[str, Any]
) -> dict[str, Any]:
    """Run the image, smoke-test it, and always remove the container."""
    running = None
    try:
        running = _step("run", run_task, image_ref, settings.docker_host, settings.health_timeout_seconds)
        return _step("smoke-test", smoke_task, running.base_url, version, reference)
    finally:
        cleanup_task(running)


def _deploy(settings: Settings, version: str) -> dict[str, Any]:
    user, password = registry_credentials(settings)
    remote = f"{settings.image_registry}/{settings.image_repository}"
    image_ref = f"{remote}:{version}"
    client = get_client(settings.docker_host)
    with tempfile.TemporaryDirectory(prefix="loan-risk-deploy-") as tmp:
        context = _step("export", registry.export_task, settings, version, Path(tmp) / "context")
        bundle = load_bundle(context / "bundle")
        reference = bundle.reference()
        if not reference:
            raise DeployError(
                f"deploy step 'export' failed: bundle of v{version} has no reference predictions"
            )
        buildargs = {
            "BASE_IMAGE": settings.base_image,
            "MODEL_NAME": settings.model_name,
            "MODEL_VERSION": version,
            "GIT_COMMIT": git_commit(),
        }
        labels = {
            "org.opencontainers.image.title": settings.model_name,
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": buildargs["GIT_COMMIT"],
            "ai.loan-risk.model.name": settings.model_name,
            "ai.loan-risk.model.version": version,
        }
        build = build_task.with_options(**retry_options(settings, retries=1))
        _step("build", build, context, image_ref, buildargs, labels, settings.docker_host)
        try:
            smoke = _verify_image(settings, image_ref, version, reference)
        except BaseException:
            untag(client, image_ref)  # a failing image is never left tagged for this version
            raise
        push = push_task.with_options(**retry_options(settings))
        digest = _step("push", push, image_ref, [version, "latest"], settings.image_registry,
                       settings.image_repository, user, password, settings.docker_host)  # fmt: skip
        release = _step("release", release_task, settings, version, image_ref, digest, bundle.meta.metrics,
                        bundle.meta.data_fingerprint)  # fmt: skip
    return {"model_version": version, "image": image_ref, "digest": digest, "smoke": smoke, **release}


def _rollback(settings: Settings) -> dict[str, Any]:
    current = champion_summary(settings)
    if current is None:
        raise DeployError("rollback: there is no champion to roll back from")
    previous = current["tags"].get("release.previous_champion")
    if not previous:
        raise DeployError(f"rollback: champion v{current['version']} records no previous champion")
    prev = registry.get_version(settings, previous)
    image_tag = (prev.tags or {}).get("release.image", "").rsplit(":", 1)[-1] or previous
    user, password = registry_credentials(settings)
    client = get_client(settings.docker_host)
    image_ref = _step(
        "pull",
        pull_image,
        client,
        settings.image_registry,
        settings.image_repository,
        image_tag,
        user,
        password,
    )
    with tempfile.TemporaryDirectory(prefix="loan-risk-rollback-") as tmp:
        bundle = load_bundle(registry.download_bundle(settings, previous, Path(tmp) / "bundle"))
        smoke = _verify_image(
            settings, image_ref, previous, bundle.reference() or {"records": [], "probabilities": []}
        )
    push = push_task.with_options(**retry_options(settings))
    digest = _step("push", push, image_ref, ["latest"], settings.image_registry, settings.image_repository,
                   user, password, settings.docker_host)  # fmt: skip
    make_champion(settings, previous, image_ref, digest, bundle.meta.metrics)
    registry.set_version_tags(settings, current["version"], {"release.rolled_back_to": previous})
    run_logger().warning("rolled back: champion v%s → v%s (%s)", current["version"], previous, image_ref)
    return {
        "rolled_back_from": current["version"],
        "model_version": previous,
        "image": image_ref,
        "digest": digest,
        "smoke": smoke,
    }


@flow(name="loan-risk-deploy", log_prints=False)
def deploy_flow(
    model_version: str | None = None, alias: str | None = "candidate", rollback: bool = False
) -> dict[str, Any]:
    """Build, test, push and release the image of a model version; or roll back to the previous champion."""
    settings = get_settings()
    if rollback:
        return _rollback(settings)
    version = resolve_version(settings, model_version, alias)
    run_logger().info("deploying %s v%s (champion now: %s)", settings.model_name, version,
                      getattr(registry.version_by_alias(settings, CHAMPION), "version", "none"))  # fmt: skip
    return _deploy(settings, version)


def main(argv: list[str] | None = None) -> int:
    """CLI: run the deploy flow and print its result as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--model-version", help="the registered version to deploy")
    target.add_argument(
        "--alias", default=None, help="deploy the version this alias points to (default: candidate)"
    )
    target.add_argument(
        "--rollback", action="store_true", help="redeploy the previous champion and move the alias back"
    )
    args = parser.parse_args(argv)
    try:
        result = deploy_flow(
            model_version=args.model_version, alias=args.alias or "candidate", rollback=args.rollback
        )
    except Exception as exc:  # noqa: BLE001 - the CLI reports any failure as a JSON line and exit 1
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    result.pop("notes", None)
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
