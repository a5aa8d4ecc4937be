"""The release candidate: an image in the registry, known by digest, pulled back and smoke-tested; a failure
deletes the build's manifest and local images, and an image the registry still holds is never rebuilt."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.bundle import Bundle, load_bundle
from tasks.common import run_logger
from tasks.registry import versions
from tasks.release.build import build_task, image_labels
from tasks.release.container import cleanup_task, run_task, smoke_task
from tasks.release.engine import get_client, local_image_id, remove_local_images
from tasks.release.ledger import ReleaseFailed, as_release_failure
from tasks.release.push import pull_by_digest, push_task
from tasks.release.registry_api import delete_manifest, registry_args, tag_digest
from tasks.settings import Settings
from tasks.settings.sections import ReleaseSettings


@dataclass
class Candidate:
    """A tested image: ``digest`` in ``image`` (``registry/repository``), built by this run or reused."""

    version: str
    digest: str
    image: str
    built: bool
    build_tag: str = ""
    build_id: str = ""
    smoke: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def remote(release: ReleaseSettings) -> str:
    return f"{release.image_registry}/{release.image_repository}"


def _reference(bundle: Bundle, version: str) -> dict[str, Any]:
    reference = bundle.reference()
    if not reference or not reference.get("records"):
        raise ReleaseFailed("export", f"the bundle of v{version} has no reference predictions")
    return reference


def _tested(settings: Settings, version: str, digest: str, bundle: Bundle, made: list[str]) -> dict:
    """Pull ``digest`` back, run and smoke-test it, tag it ``repository:version`` locally; returns the smoke
    summary. ``made`` gains the local references this made."""
    client = get_client(settings.release.docker_host)
    image = remote(settings.release)
    by_digest, tag_ref = f"{image}@{digest}", f"{image}:{version}"
    present = local_image_id(client, by_digest) is not None
    registry, repository, user, password = registry_args(settings.release)
    with as_release_failure("pull"):
        ref = pull_by_digest(client, registry, repository, digest, user, password)
    if not present:
        made.append(by_digest)
    reference, running = _reference(bundle, version), None
    try:  # the container is always removed
        with as_release_failure("run"):
            running = run_task(settings, ref)
        with as_release_failure("smoke-test"):
            smoke = smoke_task(settings, running.base_url, version, reference)
    finally:
        cleanup_task(settings, running)
    if local_image_id(client, tag_ref) != local_image_id(client, by_digest):
        client.images.get(by_digest).tag(image, tag=version)
        made.append(tag_ref)
    return smoke


def _undo(release: ReleaseSettings, made: list[str], digest: str = "") -> None:
    """Delete the manifest ``digest`` that never served and the local images ``made``; a failure here must not
    hide the one that led to it."""
    if digest:
        registry, repository, user, password = registry_args(release)
        with contextlib.suppress(Exception):
            delete_manifest(registry, repository, digest, user, password)
    if made:  # no client (the engine may be what failed) when there is nothing to remove
        remove_local_images(get_client(release.docker_host), made, run_logger().warning)


def build_candidate(settings: Settings, version: str, context: Path, revision: str) -> Candidate:
    """Build ``context``, push it as ``build-<id>``, pull it back by digest and smoke-test that; a failure
    deletes the pushed manifest and this run's local images, then raises :class:`ReleaseFailed`."""
    build_id = uuid.uuid4().hex
    build_tag = f"build-{build_id[:16]}"
    build_ref = f"{remote(settings.release)}:{build_tag}"
    bundle = load_bundle(context / "bundle")
    _reference(bundle, version)
    buildargs = {
        "BASE_IMAGE": settings.release.base_image,
        "MODEL_NAME": settings.registry.model_name,
        "MODEL_VERSION": version,
        "GIT_COMMIT": revision,
    }
    labels = image_labels(settings.registry.model_name, version, revision)
    made: list[str] = []
    digest = ""
    try:
        with as_release_failure("build"):
            build_task(settings, context, build_ref, buildargs, labels, build_id)
        made.append(build_ref)
        with as_release_failure("push"):
            digest = push_task(settings, build_ref)
        smoke = _tested(settings, version, digest, bundle, made)
    except BaseException as exc:
        _undo(settings.release, made, digest)
        if isinstance(exc, ReleaseFailed):
            exc.facts["build_id"] = build_id
        raise
    _undo(settings.release, [build_ref])
    return Candidate(
        version, digest, remote(settings.release), True, build_tag, build_id, smoke, bundle.meta.metrics
    )


def discard_candidate(release: ReleaseSettings, candidate: Candidate) -> None:
    """A candidate whose commit was refused (it never served): its build's manifest and its local images go."""
    client, built = get_client(release.docker_host), candidate.built
    refs = [f"{candidate.image}:{candidate.version}"] + (
        [f"{candidate.image}@{candidate.digest}"] if built else []
    )
    _undo(release, [r for r in refs if local_image_id(client, r)], candidate.digest if built else "")


def prepare_candidate(
    settings: Settings, version: str, reuse_digest: str | None, workdir: Path, revision: str | None
) -> Candidate:
    """The tested image of ``version``: ``reuse_digest`` when the registry still holds it, else a new build from
    ``revision`` (None: never build, as for a rollback, which restores what served or nothing)."""
    holds = False
    if reuse_digest:  # whether the registry still holds that manifest
        registry, repository, user, password = registry_args(settings.release)
        with as_release_failure("registry check"):
            holds = tag_digest(registry, repository, reuse_digest, user, password) == reuse_digest
    if revision is None and not holds:
        raise ReleaseFailed(
            "pull", f"the registry no longer holds {reuse_digest or 'an image'} of v{version}"
        )
    if not holds:
        with as_release_failure("export"):
            context = versions.export_task(settings, version, workdir / "context")
        return build_candidate(settings, version, context, revision)
    run_logger().info("the registry holds v%s's tested image %s: no build", version, reuse_digest)
    with as_release_failure("export"):
        bundle = load_bundle(versions.download_bundle(settings, version, workdir / "bundle"))
    made: list[str] = []
    try:
        smoke = _tested(settings, version, reuse_digest, bundle, made)
    except BaseException:
        _undo(settings.release, made)
        raise
    image = remote(settings.release)
    return Candidate(version, reuse_digest, image, False, smoke=smoke, metrics=bundle.meta.metrics)
