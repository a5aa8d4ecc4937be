"""Build the serving image with the Docker SDK, labelled with its build id so its dangling images go after."""

from __future__ import annotations

import logging
import re
import subprocess
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from tasks.common import run_logger, stage
from tasks.release.engine import DeployStepError, LogFn, get_client
from tasks.settings import Settings

logger = logging.getLogger(__name__)

_STEP_RE = re.compile(r"^Step \d+/\d+ : ")
_STEP_IMAGE_RE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")  # the image a build step committed
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the builder colours a step's stderr

# the one definition of the image labels (the Dockerfile's LABEL keys agree; tests/test_release.py checks)
LABEL_NAMESPACE = "ai.loanrisk"
LABEL_MODEL_NAME = f"{LABEL_NAMESPACE}.model.name"
LABEL_MODEL_VERSION = f"{LABEL_NAMESPACE}.model.version"
LABEL_BUILD_ID = f"{LABEL_NAMESPACE}.build.id"  # on the build stage only: finds a build's dangling images
OCI_TITLE = "org.opencontainers.image.title"
OCI_VERSION = "org.opencontainers.image.version"
OCI_REVISION = "org.opencontainers.image.revision"


def image_labels(model_name: str, version: str, revision: str) -> dict[str, str]:
    """The labels the deploy flow puts on a serving image (the Dockerfile declares the same keys)."""
    values = (model_name, version, revision, model_name, version)
    keys = (OCI_TITLE, OCI_VERSION, OCI_REVISION, LABEL_MODEL_NAME, LABEL_MODEL_VERSION)
    return dict(zip(keys, values, strict=True))


def _stream_lines(chunks: Iterable[dict[str, Any]], log: LogFn) -> Iterable[tuple[str, dict[str, Any]]]:
    """Split the builder's ``stream`` text into whole lines, log each, and yield ``(line, chunk)``."""
    pending = ""
    for chunk in chunks:
        text = chunk.get("stream")
        if text is None:
            if "status" in chunk and "progress" not in chunk:
                log(str(chunk["status"]))
            yield "", chunk
            continue
        pending += _ANSI_RE.sub("", text)
        *lines, pending = pending.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if line.strip():
                log(line)
                yield line, chunk
    if pending.strip():
        log(pending)
        yield pending, {}


def build_image(
    context_dir: str | Path,
    repository: str,
    tags: list[str],
    buildargs: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    log: LogFn | None = None,
    *,
    client: docker.DockerClient | None = None,
    dockerfile: str = "Dockerfile",
    build_id: str | None = None,
) -> str:
    """Build ``context_dir``, then tag the image ``repository:<tag>`` for each tag; returns the image id. A failure
    raises :class:`DeployStepError` naming the failing Dockerfile step (``details``: build_step, log_tail)."""
    client, log, build_id = client or get_client(), log or logger.info, build_id or uuid.uuid4().hex
    if not (Path(context_dir) / dockerfile).is_file():
        raise DeployStepError("build", f"no {dockerfile} in build context {context_dir}")
    step: str | None = None
    tail: deque[str] = deque(maxlen=30)
    step_images: list[str] = []
    cached = built = False
    image_id: str | None = None
    try:
        chunks = client.api.build(
            path=str(context_dir),
            dockerfile=dockerfile,
            decode=True,
            rm=True,
            forcerm=True,
            pull=False,
            buildargs={**(buildargs or {}), "BUILD_ID": build_id},
            labels=labels or {},
        )
        for line, chunk in _stream_lines(chunks, log):
            if line:
                tail.append(line)
                if _STEP_RE.match(line):
                    step = line
                elif line.startswith("Successfully built "):
                    image_id = image_id or line.split()[-1]
                elif line == " ---> Using cache":
                    cached = True  # the next id is another build's image: never ours to remove
                elif match := _STEP_IMAGE_RE.match(line):
                    if not cached:
                        step_images.append(match.group(1))
                    cached = False
            if "error" in chunk or "errorDetail" in chunk:
                detail = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                error = str(detail or "unknown error").strip()
                log(f"ERROR: {error}")
                where = f"{step} failed: " if step else ""
                raise DeployStepError("build", where + error, build_step=step, log_tail=list(tail))
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
        if not image_id:
            raise DeployStepError(
                "build", "the build stream ended without an image id", build_step=step, log_tail=list(tail)
            )
        image = client.images.get(image_id)
        for tag in tags:
            image.tag(repository, tag=tag)
            log(f"tagged {repository}:{tag}")
        built = True
    except (docker.errors.APIError, requests.RequestException) as exc:  # refused, or the engine was lost
        why = getattr(exc, "explanation", None) or exc
        raise DeployStepError("build", f"the docker engine refused or lost the build: {why}") from exc
    finally:
        _remove_leftovers(client, build_id, () if built else tuple(step_images), log)
    return str(image.id)


def _remove_leftovers(
    client: docker.DockerClient, build_id: str, prefixes: tuple[str, ...], log: LogFn
) -> None:
    """Remove the dangling images one build left, leaf first, never their parents (shared cache layers stay);
    ``prefixes``: after a failed build, the ids of the images its own steps committed, which go too."""
    removed: list[str] = []
    while True:
        try:
            labelled = client.api.images(filters={"dangling": True, "label": f"{LABEL_BUILD_ID}={build_id}"})
            dangling = client.api.images(filters={"dangling": True}) if prefixes else []
        except (docker.errors.APIError, requests.RequestException) as exc:
            log(f"could not list the dangling images of build {build_id}: {exc}")
            break
        ours = {i["Id"] for i in labelled}
        ours |= {i["Id"] for i in dangling if i["Id"].removeprefix("sha256:").startswith(prefixes)}
        ours -= set(removed)
        progress = False
        for image_id in sorted(ours):
            try:
                client.api.remove_image(image_id, force=False, noprune=True)
                removed.append(image_id)
                progress = True
            except docker.errors.ImageNotFound:
                continue
            except (docker.errors.APIError, requests.RequestException) as exc:
                log(f"could not remove dangling image {image_id[:19]} of build {build_id}: {exc}")
        if not progress:
            break
    if removed:
        log(f"removed {len(removed)} dangling image(s) of build {build_id}")


def git_commit() -> str:
    """The source commit of this checkout, for the image's labels: ``<sha>``, ``<sha>-dirty`` when files differ
    from it (changed or untracked, outside ignored paths), ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip()

    try:
        sha, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if status else sha


@stage("build-image", max_retries=1)
def build_task(
    settings: Settings,
    context_dir: Path,
    image_ref: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    build_id: str | None = None,
) -> str:
    """Stage: build the image (tag ``image_ref``), streaming the build log into the run log."""
    repository, tag = image_ref.rsplit(":", 1)
    client = get_client(settings.release.docker_host)
    return build_image(
        context_dir, repository, [tag], buildargs, labels, run_logger().info, client=client, build_id=build_id
    )
