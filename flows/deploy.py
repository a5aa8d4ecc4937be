"""The deploy flow: export → build → run → smoke test → clean up → push → champion → latest, notes, GitHub release.

Composition only; the steps live in ``tasks/``. One commit point: the move of ``champion``. Before it, a failure
leaves ``champion`` and ``latest`` where they were and removes the local image references this run made; after
it, each remaining step is retried and looks first whether its result exists, so re-running the deploy of a
released version completes what is missing and creates nothing twice (and builds nothing when the registry
still holds the recorded digest). Deploys hold a lock (a Prefect global concurrency limit), so two never overlap.

    python -m flows.deploy --model-version V            # only a version the gate promoted
    python -m flows.deploy --model-version V --force --reason "TEXT"
    python -m flows.deploy --alias candidate            # the version an alias points to
    python -m flows.deploy --rollback [--reason "TEXT"] # one release further back, by digest

Over ~400 lines on purpose: the release, the re-run that completes a release and the rollback are three
compositions of the same steps (the steps themselves are in ``tasks/``), kept side by side so their order around
the commit point can be read at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tasks.settings import Settings, configure_environment, get_settings

configure_environment()

from prefect import flow

from serving.bundle import Bundle, load_bundle
from serving.card import CARD_HTML
from tasks import registry
from tasks.common import cli_run, run_logger
from tasks.release.github import github_task
from tasks.release.image import (
    DeployStepError,
    build_task,
    cleanup_task,
    get_client,
    git_commit,
    image_labels,
    latest_task,
    local_image_id,
    pull_by_digest,
    push_task,
    registry_credentials,
    remove_local_image,
    remove_local_images,
    run_task,
    tag_digest,
)
from tasks.release.lock import release_lock
from tasks.release.record import (
    CHAMPION,
    NotDeployable,
    actor,
    card_link,
    check_deployable,
    commit_task,
    entry_from_tags,
    history_entry,
    history_task,
    mark_rolled_back_task,
    notes_task,
    read_history,
    release_notes,
    rollback_target,
)
from tasks.release.smoke import smoke_task


class DeployError(RuntimeError):
    """A deploy step failed; the message names the step and the cause.

    ``committed`` is True when ``champion`` had already moved (a step after the commit point failed: re-running
    the deploy of ``version`` completes the release).
    """

    def __init__(self, message: str, *, version: str | None = None, committed: bool = False) -> None:
        super().__init__(message)
        self.version = version
        self.committed = committed
        self.build_id: str | None = None  # the image build this deploy ran, if any


def _step(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one step; a failure is re-raised as :class:`DeployError` naming the step."""
    try:
        return fn(*args, **kwargs)
    except DeployError:
        raise
    except Exception as exc:
        cause = str(exc) if isinstance(exc, DeployStepError) else f"{type(exc).__name__}: {exc}"
        raise DeployError(f"deploy step '{name}' failed: {cause}") from exc


def _remote(settings: Settings) -> str:
    return f"{settings.image_registry}/{settings.image_repository}"


def _reference(bundle: Bundle, version: str) -> dict[str, Any]:
    reference = bundle.reference()
    if not reference or not reference.get("records"):
        raise DeployError(f"deploy step 'export' failed: bundle of v{version} has no reference predictions")
    return reference


def _export(settings: Settings, version: str, tmp: Path) -> Bundle:
    """The version's bundle, downloaded from the registry into ``tmp``."""
    return load_bundle(_step("export", registry.download_bundle, settings, version, tmp / "bundle"))


def _verify_image(settings: Settings, image_ref: str, version: str, bundle: Bundle) -> dict[str, Any]:
    """Run the image, smoke-test it against the bundle's reference, and always remove the container."""
    reference = _reference(bundle, version)
    running = None
    try:
        running = _step("run", run_task, settings, image_ref)
        return _step("smoke-test", smoke_task, settings, running.base_url, version, reference)
    finally:
        cleanup_task(settings, running)


def _build_and_push(
    settings: Settings, version: str, context: Path, bundle: Bundle, made: list[str], build_id: str
) -> tuple[str, dict[str, Any]]:
    """Build, run, smoke-test and push the version's image; returns (digest, smoke summary)."""
    client = get_client(settings.docker_host)
    image_ref = f"{_remote(settings)}:{version}"
    _reference(bundle, version)
    before = local_image_id(client, image_ref)
    revision = git_commit()
    buildargs = {
        "BASE_IMAGE": settings.base_image,
        "MODEL_NAME": settings.model_name,
        "MODEL_VERSION": version,
        "GIT_COMMIT": revision,
    }
    labels = image_labels(settings.model_name, version, revision)
    _step("build", build_task, settings, context, image_ref, buildargs, labels, build_id)
    made.append(image_ref)
    if before and before != local_image_id(client, image_ref) and not client.images.get(before).tags:
        remove_local_image(client, before)  # the tag moved on: the image it left is this run's leftover
    smoke = _verify_image(settings, image_ref, version, bundle)
    digest = _step("push", push_task, settings, image_ref, [version])
    return digest, smoke


def _tested_by_digest(
    settings: Settings, version: str, digest: str, bundle: Bundle, made: list[str]
) -> dict[str, Any]:
    """Pull the image by digest, verify it, run and smoke-test it against its own bundle; tag it locally."""
    user, password = registry_credentials(settings)
    client = get_client(settings.docker_host)
    by_digest = f"{_remote(settings)}@{digest}"
    present = local_image_id(client, by_digest) is not None
    registry_host, repository = settings.image_registry, settings.image_repository
    ref = _step("pull", pull_by_digest, client, registry_host, repository, digest, user, password)
    if not present:
        made.append(by_digest)
    smoke = _verify_image(settings, ref, version, bundle)
    tag_ref = f"{_remote(settings)}:{version}"
    if local_image_id(client, tag_ref) is None:
        client.images.get(ref).tag(_remote(settings), tag=version)
        made.append(tag_ref)
    return smoke


def _registry_holds(settings: Settings, digest: str | None) -> bool:
    """Whether the registry still holds ``digest`` (a released version's tested image)."""
    if not digest:
        return False
    user, password = registry_credentials(settings)
    held = tag_digest(settings.image_registry, settings.image_repository, digest, user, password)
    return held == digest


def _undo_local(settings: Settings, made: list[str]) -> None:
    """Before the commit point: remove the local image references this run made (nothing dangling stays)."""
    if made:
        remove_local_images(get_client(settings.docker_host), made, run_logger().warning)


def _after_commit(
    settings: Settings,
    entry: dict[str, str],
    notes: str | None,
    rolled_back: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The steps after the commit point, each retried and idempotent; all are tried, then any failure is raised
    as a :class:`DeployError` with ``committed=True`` naming each failed step."""
    version = entry["version"]
    steps: list[tuple[str, Any, tuple[Any, ...]]] = [("release-history", history_task, (entry,))]
    if rolled_back:
        left = (rolled_back[0], version, entry["at"], entry["by"])
        steps.append(("mark-rolled-back", mark_rolled_back_task, left))
    steps.append(("latest", latest_task, (entry["digest"],)))
    if notes is not None:
        steps += [
            ("release-notes", notes_task, (version, entry["digest"], notes)),
            ("github-release", github_task, (version, notes)),
        ]
    done: dict[str, Any] = {}
    failed: list[str] = []
    for name, step, args in steps:
        try:
            done[name] = step(settings, *args)
        except Exception as exc:  # noqa: BLE001 - every step is tried; the failures are reported together
            failed.append(f"deploy step '{name}' failed: {type(exc).__name__}: {exc}")
    if failed:
        raise DeployError(
            f"v{version} is the champion (the commit point passed), but {len(failed)} step(s) after it failed: "
            + "; ".join(failed)
            + f". Re-run `python -m flows.deploy --model-version {version}` to complete them.",
            version=version,
            committed=True,
        )
    return done


def _notes(
    settings: Settings,
    entry: dict[str, str],
    bundle: Bundle,
    previous: dict[str, Any] | None,
    overrode: str | None,
) -> str:
    forced = None
    if entry["kind"] == "forced":
        forced = {"by": entry["by"], "reason": entry.get("reason", ""), "overrode": overrode or ""}
    meta = bundle.meta
    image, digest = entry["image"], entry["digest"]
    return release_notes(
        settings.model_name,
        entry["version"],
        meta.metrics,
        previous,
        image,
        digest,
        meta.data_fingerprint,
        forced,
        card_link(settings.model_name, entry["version"], (bundle.directory / CARD_HTML).is_file()),
    )


def _complete(settings: Settings, version: str, tags: dict[str, str], tmp: Path) -> dict[str, Any]:
    """A re-run for the champion's own release: only the steps after the commit point, each where missing."""
    run_logger().info(
        "v%s is the champion already: completing what is missing after the commit point", version
    )
    entry = entry_from_tags(version, tags)
    bundle = _export(settings, version, tmp)
    prev = tags.get("release.previous_champion")
    previous = None
    if prev:
        prev_tags = registry.get_version(settings, prev).tags or {}
        previous = {
            "version": prev,
            "metrics": {k: float(v) for k, v in prev_tags.items() if k.startswith("test_")},
        }
    notes = _notes(settings, entry, bundle, previous, tags.get("release.forced_override"))
    done = _after_commit(settings, entry, notes)
    return _summary(entry, done, previous, status="already-released", build="none")


def _summary(
    entry: dict[str, str], done: dict[str, Any], previous: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    github = done.get("github-release") or {}
    return {
        "model_version": entry["version"],
        "image": entry["image"],
        "digest": entry["digest"],
        "kind": entry["kind"],
        "previous_champion": previous["version"] if previous else None,
        "github_release": github.get("html_url"),
        "notes_artifact": done.get("release-notes"),
        "history_recorded": done.get("release-history"),
        **extra,
    }


def _release(
    settings: Settings, model_version: str | None, alias: str | None, force: bool, reason: str | None
) -> dict[str, Any]:
    version = registry.resolve_version(settings, model_version, alias)
    tags = registry.get_version(settings, version).tags or {}
    champion = registry.version_by_alias(settings, CHAMPION)
    current = getattr(champion, "version", "none")
    run_logger().info("deploying %s v%s (champion now: %s)", settings.model_name, version, current)
    with tempfile.TemporaryDirectory(prefix="loan-risk-deploy-") as tmp_name:
        tmp = Path(tmp_name)
        if champion is not None and str(champion.version) == version and tags.get("release.digest"):
            if force:
                run_logger().warning("v%s is the champion already: --force changes nothing", version)
            return _complete(settings, version, tags, tmp)
        overrode = check_deployable(settings, version, tags, read_history(settings), force)
        if force:
            overridden = "; ".join(overrode) or "nothing to override"
            run_logger().warning("FORCED release of v%s (%s): %s", version, overridden, reason)
        recorded = tags.get("release.digest")
        made: list[str] = []
        build_id: str | None = None
        # Before the commit point: a failure moves nothing and removes the local images this run made.
        try:
            reuse = _step("registry check", _registry_holds, settings, recorded)
            if reuse:
                run_logger().info(
                    "the registry still holds v%s's tested image %s: no build", version, recorded
                )
                bundle = _export(settings, version, tmp)
                smoke = _tested_by_digest(settings, version, str(recorded), bundle, made)
                digest = str(recorded)
            else:
                context = _step("export", registry.export_task, settings, version, tmp / "context")
                bundle = load_bundle(context / "bundle")
                build_id = uuid.uuid4().hex
                digest, smoke = _build_and_push(settings, version, context, bundle, made, build_id)
            kind = "forced" if force else "release"
            entry = history_entry(version, f"{_remote(settings)}:{version}", digest, kind, actor(), reason)
            previous = _step("commit", commit_task, settings, entry, bundle.meta.metrics, overrode)
        except BaseException as exc:
            _undo_local(settings, made)
            if isinstance(exc, DeployError):
                exc.build_id = build_id
            raise
        # After it: each step retried and idempotent.
        done = _after_commit(settings, entry, _notes(settings, entry, bundle, previous, "; ".join(overrode)))
    build = "reused" if reuse else "built"
    return _summary(entry, done, previous, status="released", build=build, smoke=smoke, build_id=build_id)


def _rollback(settings: Settings, reason: str | None) -> dict[str, Any]:
    current = registry.version_by_alias(settings, CHAMPION)
    if current is None:
        raise DeployError("rollback: there is no champion to roll back from")
    leaving = str(current.version)
    history = read_history(settings)
    target = rollback_target(history, leaving)
    if target is None:
        seen = ", ".join(f"v{e['version']} ({e['kind']})" for e in history) or "empty"
        raise DeployError(
            f"rollback: nothing to roll back to from champion v{leaving}: the release history ({seen}) holds no "
            "earlier release that was not rolled back from"
        )
    version, digest = target["version"], target["digest"]
    run_logger().warning(
        "rolling back: champion v%s → v%s (%s@%s)", leaving, version, target["image"], digest
    )
    made: list[str] = []
    # Before the commit point: a failure moves nothing and removes the local images this run made.
    try:
        with tempfile.TemporaryDirectory(prefix="loan-risk-rollback-") as tmp:
            bundle = _export(settings, version, Path(tmp))
            smoke = _tested_by_digest(settings, version, digest, bundle, made)
        why = reason or f"rollback from v{leaving}"
        entry = history_entry(
            version, target["image"], digest, "rollback", actor(), why, rolled_back_from=leaving
        )
        previous = _step("commit", commit_task, settings, entry, bundle.meta.metrics, None)
    except BaseException:
        _undo_local(settings, made)
        raise
    # After it: each step retried and idempotent.
    done = _after_commit(settings, entry, None, rolled_back=(leaving, version))
    return _summary(entry, done, previous, status="rolled-back", rolled_back_from=leaving, smoke=smoke)


@flow(name="loan-risk-deploy", log_prints=False)
def deploy_flow(
    model_version: str | None = None,
    alias: str | None = "candidate",
    rollback: bool = False,
    force: bool = False,
    reason: str | None = None,
) -> dict[str, Any]:
    """Build, test, push and release the image of a version the gate promoted (``force`` with a ``reason``
    overrides the gate); or roll back one release."""
    settings = get_settings()
    reason = (reason or "").strip() or None
    if force and not reason:
        raise NotDeployable("--force needs a non-empty --reason: why the gate was overridden is recorded")
    if force and rollback:
        raise NotDeployable("--force releases a version; a rollback needs none (--reason records why)")
    with release_lock(settings) as lock:
        if rollback:
            result = _rollback(settings, reason)
        else:
            result = _release(settings, model_version, alias, force, reason)
    return {**result, "lock": lock.summary()}


def main(argv: list[str] | None = None) -> int:
    """CLI: run the deploy flow and print its result as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--model-version", help="the registered version to deploy")
    target.add_argument(
        "--alias", default=None, help="deploy the version this alias points to (default: candidate)"
    )
    target.add_argument(
        "--rollback",
        action="store_true",
        help="go back one release (by digest), never to one rolled back from",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="release a version the gate did not promote (needs --reason; recorded)",
    )
    parser.add_argument("--reason", help="why: required with --force, recorded with --rollback")
    args = parser.parse_args(argv)
    if args.force and not (args.reason or "").strip():
        parser.error("--force needs a non-empty --reason")
    if args.force and args.rollback:
        parser.error("--force applies to a release, not to --rollback")
    return cli_run(
        lambda: deploy_flow(
            model_version=args.model_version,
            alias=args.alias or "candidate",
            rollback=args.rollback,
            force=args.force,
            reason=args.reason,
        ),
        lambda exc: {"committed": getattr(exc, "committed", False)},
    )


if __name__ == "__main__":
    sys.exit(main())
