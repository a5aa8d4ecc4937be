"""Move images between the engine and the registry (push and confirm the digest, pull by tag or digest), and
whether both answer at all (:func:`engine_available`)."""

from __future__ import annotations

import logging
import os

import docker
import docker.errors
import httpx
import requests

from tasks.common import run_logger, stage
from tasks.release.engine import DeployStepError, LogFn, get_client
from tasks.release.registry_api import registry_args, registry_base_url, registry_digest, remote_repository
from tasks.settings import Settings
from tasks.settings.sections import ReleaseSettings

logger = logging.getLogger(__name__)


def push_image(
    client: docker.DockerClient,
    repository: str,
    tag: str,
    username: str | None,
    password: str | None,
    registry: str,
    *,
    log: LogFn | None = None,
) -> str:
    """Push ``repository:tag`` (bare: the local ``loan-risk:tag`` is tagged ``registry/loan-risk:tag`` first) to
    ``registry``; returns the pushed digest, or raises :class:`DeployStepError` with the registry's message."""
    log = log or logger.info
    remote = remote_repository(registry, repository)
    if remote != repository:
        try:
            client.images.get(f"{remote}:{tag}")
        except docker.errors.ImageNotFound:
            try:
                client.images.get(f"{repository}:{tag}").tag(remote, tag=tag)
            except docker.errors.ImageNotFound as exc:
                raise DeployStepError("push", f"no local image {repository}:{tag} or {remote}:{tag}") from exc
    auth = {"username": username, "password": password, "serveraddress": registry} if username else None
    digest: str | None = None
    try:
        for chunk in client.api.push(remote, tag=tag, auth_config=auth, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                error = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                raise DeployStepError("push", f"{remote}:{tag} refused by {registry}: {error}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            if "status" in chunk and "progress" not in chunk:
                log(" ".join(str(chunk[k]) for k in ("id", "status") if chunk.get(k)))
    except (docker.errors.APIError, requests.RequestException) as exc:  # refused, or the engine was lost
        raise DeployStepError("push", f"{remote}:{tag}: {getattr(exc, 'explanation', None) or exc}") from exc
    if not digest:
        raise DeployStepError("push", f"{remote}:{tag}: push ended without a digest")
    log(f"pushed {remote}:{tag} {digest}")
    return digest


def engine_available(release: ReleaseSettings) -> tuple[bool, str, str]:
    """Whether a Docker engine and the image registry answer (used to decide whether to deploy): (ready, what is
    missing — "engine", "registry" or "" —, why)."""
    try:
        get_client(release.docker_host, timeout_s=5).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        where = release.docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
        return False, "engine", f"no Docker engine answers at {where} ({exc})"
    try:
        httpx.get(f"{registry_base_url(release.image_registry)}/v2/", timeout=5)
    except httpx.HTTPError as exc:
        return False, "registry", f"registry {release.image_registry} does not answer ({exc})"
    return True, "", "engine and registry answer"


def pull_image(
    client: docker.DockerClient,
    registry: str,
    repository: str,
    tag: str,
    username: str | None,
    password: str | None,
) -> str:
    """Pull ``registry/repository:tag`` (or ``@sha256:...`` when ``tag`` is a digest) with credentials;
    returns the local reference."""
    remote = remote_repository(registry, repository)
    ref = f"{remote}{'@' if tag.startswith('sha256:') else ':'}{tag}"
    auth = {"username": username, "password": password} if username else None
    try:
        client.images.pull(remote, tag=tag, auth_config=auth)
    except (docker.errors.APIError, requests.RequestException) as exc:
        explanation = getattr(exc, "explanation", None) or exc
        raise DeployStepError("pull", f"could not pull {ref}: {explanation}") from exc
    return ref


def pull_by_digest(
    client: docker.DockerClient,
    registry: str,
    repository: str,
    digest: str,
    username: str | None,
    password: str | None,
) -> str:
    """Pull ``registry/repository@digest`` and verify that the engine holds exactly that manifest (its repo
    digests name ``digest``); returns the reference by digest, which runs as it is."""
    ref = pull_image(client, registry, repository, digest, username, password)
    try:
        held = client.images.get(ref).attrs.get("RepoDigests") or []
    except docker.errors.APIError as exc:
        raise DeployStepError("pull", f"pulled {ref} but cannot inspect it: {exc}") from exc
    if ref not in held:
        raise DeployStepError("verify pull", f"pulled {ref} but the engine's image has repo digests {held}")
    return ref


@stage("push-image")
def push_task(settings: Settings, image_ref: str) -> str:
    """Stage: push ``image_ref`` (``registry/repository:tag``) and confirm the registry holds the pushed digest."""
    registry, repository, username, password = registry_args(settings.release)
    client, tag = get_client(settings.release.docker_host), image_ref.rsplit(":", 1)[1]
    client.images.get(image_ref).tag(remote_repository(registry, repository), tag=tag)
    digest = push_image(client, repository, tag, username, password, registry, log=run_logger().info)
    if (held := registry_digest(registry, repository, tag, username, password)) != digest:
        raise DeployStepError("verify push", f"registry holds {held} for {repository}:{tag}, pushed {digest}")
    return digest
