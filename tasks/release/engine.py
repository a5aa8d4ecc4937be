"""The Docker engine the release steps share: the client, local image references, and :class:`DeployStepError`,
the one error of a Docker or registry step (its ``step`` is the deploy step that failed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from tasks.errors import TransientError

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]


class DeployStepError(TransientError):
    """A deploy step (``build``, ``run``, ``push``, ``pull``, ``export``, ...) failed; ``str()`` starts with
    ``[step]``. Transient: the step's stage retries it as its ``max_retries`` says (an engine or registry
    hiccup); ``details`` holds what the step saw (build log tail, container logs and exit status)."""

    def __init__(self, step: str, message: str, **details: Any) -> None:
        super().__init__(f"[{step}] {message}")
        self.step, self.message, self.details = step, message, details


def get_client(docker_host: str | None = None, timeout_s: int = 900) -> docker.DockerClient:
    """A Docker client for ``docker_host``, else from DOCKER_HOST or the default socket (the long timeout covers
    build steps that print nothing for minutes)."""
    if docker_host:
        return docker.DockerClient(base_url=docker_host, version="auto", timeout=timeout_s)
    return docker.from_env(timeout=timeout_s)


def local_image_id(client: docker.DockerClient, image_ref: str) -> str | None:
    """The id of the local image ``image_ref`` names, or None (no such reference, or unreadable)."""
    try:
        return str(client.images.get(image_ref).id)
    except Exception:  # noqa: BLE001 - not there (or unreadable): nothing of ours
        return None


def remove_local_image(client: docker.DockerClient, image_ref: str) -> bool:
    """Remove the local reference ``image_ref``; when it was the image's last one, the image (and the untagged
    layers under it) goes too, so nothing dangling is left. False when there was no such reference."""
    try:
        client.api.remove_image(image_ref, force=True, noprune=False)
    except docker.errors.ImageNotFound:
        return False
    logger.info("removed local image %s", image_ref)
    return True


def remove_local_images(client: docker.DockerClient, image_refs: list[str], log: LogFn) -> None:
    """Remove the local references ``image_refs`` (newest first); a failure is logged, the others still go."""
    for ref in reversed(image_refs):
        try:
            remove_local_image(client, ref)
        except Exception as exc:  # noqa: BLE001 - the caller's failure matters more
            log(f"could not remove {ref}: {exc}")
