"""Docker SDK steps of the deploy flow: build, run, health check, clean up, push, verify in the registry.

Plain functions first, then the stages (settings first) the deploy flow composes. Every failure is a subclass of
:class:`DeployStepError`, whose text names the step, so a failed flow run says where it stopped.
The builds use the classic builder through the low-level API (what docker-py drives), streaming each log
line to the caller's ``log`` callback. Each build gets an id (build argument ``BUILD_ID``, which the Dockerfile's
build stage carries as the label :data:`LABEL_BUILD_ID`); after the build, succeeded or failed, the dangling
images it left (the multi-stage build's first stage, the last step of a failed build) are removed, so a release
leaves only the image it tagged. The image label names are defined here once (:func:`image_labels`).

Longer than ~400 lines on purpose: it is the one Docker stage of the deploy flow, and its sections (labels,
errors, build, run, push, registry API, pull, tasks) share the client, the error classes and the step names.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import requests
from docker.models.containers import Container

from tasks.common import stage
from tasks.settings import Settings, get_settings

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join(
    [
        MANIFEST_V2,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
_STEP_RE = re.compile(r"^Step \d+/\d+ : ")
_STEP_IMAGE_RE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")  # the image a build step committed

# --- image labels: the one definition (the Dockerfile's LABEL keys agree; tests/test_release.py checks) -------
LABEL_NAMESPACE = "ai.loanrisk"
LABEL_MODEL_NAME = f"{LABEL_NAMESPACE}.model.name"
LABEL_MODEL_VERSION = f"{LABEL_NAMESPACE}.model.version"
LABEL_BUILD_ID = f"{LABEL_NAMESPACE}.build.id"  # on the build stage only: finds a build's dangling images
OCI_TITLE = "org.opencontainers.image.title"
OCI_VERSION = "org.opencontainers.image.version"
OCI_REVISION = "org.opencontainers.image.revision"


def image_labels(model_name: str, version: str, revision: str) -> dict[str, str]:
    """The labels the deploy flow puts on a serving image (the Dockerfile declares the same keys)."""
    return {
        OCI_TITLE: model_name,
        OCI_VERSION: version,
        OCI_REVISION: revision,
        LABEL_MODEL_NAME: model_name,
        LABEL_MODEL_VERSION: version,
    }


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the builder colours a step's stderr


# --- errors ------------------------------------------------------------------------------------------
class DeployStepError(RuntimeError):
    """A deploy step failed; ``str()`` starts with the step name."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"[{step}] {message}")
        self.step = step
        self.message = message


class ImageBuildError(DeployStepError):
    """The image build failed; ``build_step`` is the Dockerfile step (``Step 3/5 : RUN ...``) that failed."""

    def __init__(self, message: str, *, build_step: str | None = None, log_tail: list[str] | None = None):
        super().__init__("build image", message)
        self.build_step = build_step
        self.log_tail = log_tail or []


class ContainerStartError(DeployStepError):
    """The container did not start or never answered its health check."""

    def __init__(self, message: str, *, logs: str = "", exit_status: int | None = None, step: str = "run"):
        super().__init__(step, message)
        self.logs = logs
        self.exit_status = exit_status


class ImagePushError(DeployStepError):
    """The push was refused (auth, network) or the registry does not hold what was pushed."""

    def __init__(self, message: str, *, step: str = "push") -> None:
        super().__init__(step, message)


class TagNotFoundError(ImagePushError):
    """The registry has no manifest for the asked tag."""


# --- client ------------------------------------------------------------------------------------------
def get_client(docker_host: str | None = None, timeout_s: int = 900) -> docker.DockerClient:
    """A Docker client for ``docker_host`` (``unix://...``, ``tcp://...``), else from DOCKER_HOST/the default socket.

    The long timeout covers build steps that print nothing for minutes.
    """
    if docker_host:
        return docker.DockerClient(base_url=docker_host, version="auto", timeout=timeout_s)
    return docker.from_env(timeout=timeout_s)


# --- build -------------------------------------------------------------------------------------------
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
    """Build ``context_dir`` and tag the result ``repository:<tag>`` for each tag; return the image id.

    Tags are applied only after a successful build, so a failed build never moves ``latest``.
    ``build_id`` (default: a new one) is passed as the build argument ``BUILD_ID``; the dangling images this
    build leaves are removed afterwards, whether it succeeded or failed (:func:`remove_build_leftovers`).
    Raises :class:`ImageBuildError` naming the failing Dockerfile step and its error.
    """
    client = client or get_client()
    log = log or logger.info
    build_id = build_id or uuid.uuid4().hex
    step: str | None = None
    tail: deque[str] = deque(maxlen=30)
    step_images: list[str] = []
    cached = False
    built = False
    image_id: str | None = None
    if not (Path(context_dir) / dockerfile).is_file():
        raise ImageBuildError(f"no {dockerfile} in build context {context_dir}")
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
                error = (
                    (chunk.get("errorDetail") or {}).get("message") or chunk.get("error") or "unknown error"
                )
                error = str(error).strip()
                log(f"ERROR: {error}")
                where = f"{step} failed: " if step else ""
                raise ImageBuildError(f"{where}{error}", build_step=step, log_tail=list(tail))
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = aux["ID"]
        if not image_id:
            raise ImageBuildError(
                "the build stream ended without an image id", build_step=step, log_tail=list(tail)
            )
        image = client.images.get(image_id)
        for tag in tags:
            image.tag(repository, tag=tag)
            log(f"tagged {repository}:{tag}")
        built = True
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker engine refused the build: {exc.explanation or exc}") from exc
    except requests.RequestException as exc:
        raise ImageBuildError(f"lost the docker engine during the build: {exc}") from exc
    finally:
        remove_build_leftovers(client, build_id, step_images, log, failed=not built)
    return str(image.id)


def remove_build_leftovers(
    client: docker.DockerClient,
    build_id: str,
    step_images: Iterable[str] = (),
    log: LogFn | None = None,
    *,
    failed: bool = True,
) -> list[str]:
    """Remove the dangling images one build left; returns the removed ids.

    Only images this build made go, one at a time, leaf first, never with their parents (``noprune``): so the
    layers it took from the builder's cache (the environment, shared with other builds and the next release)
    always stay. After a successful build those are the images labelled with its ``build_id`` (the build
    stage's steps after the environment); after a failed one also every image one of its own steps committed
    (``step_images``, cache hits excluded: the last step of a failed build, an environment it installed), so
    nothing of it is left. Only dangling images are touched (never a tagged image or a parent of one).
    """
    log = log or logger.info
    prefixes = tuple(step_images) if failed else ()
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
    return removed


def remove_local_image(client: docker.DockerClient, image_ref: str) -> bool:
    """Remove the local reference ``image_ref``; when it was the image's last one, the image (and the untagged
    layers under it) goes too, so nothing dangling is left. False when there was no such reference."""
    try:
        client.api.remove_image(image_ref, force=True, noprune=False)
    except docker.errors.ImageNotFound:
        return False
    logger.info("removed local image %s", image_ref)
    return True


def local_image_id(client: docker.DockerClient, image_ref: str) -> str | None:
    """The id of the local image ``image_ref`` names, or None (no such reference, or unreadable)."""
    try:
        return str(client.images.get(image_ref).id)
    except Exception:  # noqa: BLE001 - not there (or unreadable): nothing of ours
        return None


def remove_local_images(client: docker.DockerClient, image_refs: list[str], log: LogFn) -> None:
    """Remove the local references ``image_refs`` (newest first); a failure is logged, the others still go."""
    for ref in reversed(image_refs):
        try:
            remove_local_image(client, ref)
        except Exception as exc:  # noqa: BLE001 - the caller's failure matters more
            log(f"could not remove {ref}: {exc}")


def git_commit() -> str:
    """The source commit of this checkout, for the image's labels: ``<sha>``, ``<sha>-dirty`` when files differ
    from it (changed or untracked, outside ignored paths), ``unknown`` outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if status else sha


# --- run ---------------------------------------------------------------------------------------------
@dataclass
class RunningContainer:
    """A started container, published on ``127.0.0.1:host_port``. Usable as a context manager (removes it)."""

    container: Container
    name: str
    image: str
    host_port: int
    port_in_container: int
    base_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.base_url = f"http://127.0.0.1:{self.host_port}"

    def logs(self, tail: int = 50) -> str:
        """The last ``tail`` lines of stdout+stderr ('' when the container is gone)."""
        return _container_logs(self.container, tail)

    def __enter__(self) -> RunningContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        remove_container(self)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _container_logs(container: Container, tail: int = 50) -> str:
    """Last lines of a container's output; never raises."""
    try:
        return container.logs(stdout=True, stderr=True, tail=tail).decode("utf-8", errors="replace")
    except docker.errors.APIError:
        return ""


def run_container(
    image: str,
    *,
    port_in_container: int = 8080,
    env: dict[str, str] | None = None,
    name_prefix: str = "loan-risk-smoke",
    command: str | list[str] | None = None,
    client: docker.DockerClient | None = None,
) -> RunningContainer:
    """Start ``image`` detached, publishing ``port_in_container`` on a free port of 127.0.0.1.

    Raises :class:`ContainerStartError` when the engine cannot create or start it (nothing is left behind).
    """
    client = client or get_client()
    last_error: Exception | None = None
    for _attempt in range(3):  # a picked port can be taken before the engine binds it
        port = _free_port()
        name = f"{name_prefix}-{uuid.uuid4().hex[:10]}"
        try:
            # create + start rather than containers.run, which would try to pull a missing image.
            container = client.containers.create(
                image,
                command=command,
                name=name,
                environment=env or {},
                ports={f"{port_in_container}/tcp": ("127.0.0.1", port)},
                labels={"loan-risk.role": "smoke", "loan-risk.name-prefix": name_prefix},
            )
            container.start()
        except docker.errors.ImageNotFound as exc:
            raise ContainerStartError(f"image {image} not found: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            last_error = exc
            _remove_by_name(client, name)
            if "already allocated" in str(exc) or "address already in use" in str(exc):
                continue
            raise ContainerStartError(f"engine could not start {image}: {exc.explanation or exc}") from exc
        logger.info("started %s (%s) on 127.0.0.1:%d", name, image, port)
        return RunningContainer(container, name, image, port, port_in_container)
    raise ContainerStartError(f"no free port to publish {image}: {last_error}")


def _remove_by_name(client: docker.DockerClient, name: str) -> None:
    """Remove a half-created container by name, if any."""
    try:
        client.containers.get(name).remove(force=True)
    except docker.errors.APIError:
        pass


def _exit_state(container: Container) -> dict[str, Any] | None:
    """The container's State when it is no longer running, else None (also None when it cannot be read)."""
    try:
        container.reload()
    except docker.errors.NotFound:
        return {"Status": "removed", "ExitCode": None}
    except docker.errors.APIError:
        return None
    state = container.attrs.get("State", {})
    return state if state.get("Status") in {"exited", "dead"} else None


def wait_healthy(
    base_url: str,
    timeout_s: float = 60,
    path: str = "/health",
    *,
    container: Container | RunningContainer | None = None,
    interval_s: float = 0.5,
) -> None:
    """Poll ``base_url + path`` until it answers 200.

    With ``container`` given, stops at once when it dies. Raises :class:`ContainerStartError` with the
    last 50 log lines and, when it died, the exit status.
    """
    if isinstance(container, RunningContainer):
        container = container.container
    url = base_url.rstrip("/") + path
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=min(5.0, max(timeout_s, 0.5))) as http:
        while True:
            try:
                resp = http.get(url)
                if resp.status_code == 200:
                    logger.info("%s answered 200", url)
                    return
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            state = _exit_state(container) if container is not None else None
            if state is not None:
                code = state.get("ExitCode")
                extra = f", error: {state['Error']}" if state.get("Error") else ""
                extra += ", OOM-killed" if state.get("OOMKilled") else ""
                logs = _container_logs(container) if container is not None else ""
                raise ContainerStartError(
                    f"container {state.get('Status')} with exit status {code}{extra} before {url} "
                    f"answered; last 50 log lines:\n{logs}",
                    logs=logs,
                    exit_status=code,
                )
            if time.monotonic() >= deadline:
                logs = _container_logs(container) if container is not None else ""
                raise ContainerStartError(
                    f"{url} not healthy after {timeout_s:.0f}s ({last}); last 50 log lines:\n{logs}",
                    logs=logs,
                )
            time.sleep(interval_s)


def remove_container(container: Container | RunningContainer) -> None:
    """Force-remove the container (and its anonymous volumes); no error when it is already gone."""
    if isinstance(container, RunningContainer):
        container = container.container
    try:
        container.remove(force=True, v=True)
        logger.info("removed container %s", container.name)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc):
            return
        raise


# --- push --------------------------------------------------------------------------------------------
def _remote_repository(registry: str, repository: str) -> str:
    """``registry/repository`` unless the repository already names the registry."""
    return repository if repository.startswith(registry.rstrip("/") + "/") else f"{registry}/{repository}"


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
    """Push ``repository:tag`` to ``registry`` with these credentials; return the pushed digest (``sha256:...``).

    ``repository`` may be bare (``loan-risk``: the local ``loan-risk:tag`` is tagged ``registry/loan-risk:tag``)
    or already prefixed with the registry. Raises :class:`ImagePushError` with the registry's message.
    """
    log = log or logger.info
    remote = _remote_repository(registry, repository)
    if remote != repository:
        try:
            client.images.get(f"{remote}:{tag}")
        except docker.errors.ImageNotFound:
            try:
                client.images.get(f"{repository}:{tag}").tag(remote, tag=tag)
            except docker.errors.ImageNotFound as exc:
                raise ImagePushError(f"no local image {repository}:{tag} or {remote}:{tag}") from exc
    auth = {"username": username, "password": password, "serveraddress": registry} if username else None
    digest: str | None = None
    try:
        for chunk in client.api.push(remote, tag=tag, auth_config=auth, stream=True, decode=True):
            if "error" in chunk or "errorDetail" in chunk:
                error = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                raise ImagePushError(f"{remote}:{tag} refused by {registry}: {error}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            if "status" in chunk and "progress" not in chunk:
                log(" ".join(str(chunk[k]) for k in ("id", "status") if chunk.get(k)))
    except docker.errors.APIError as exc:
        raise ImagePushError(f"{remote}:{tag}: {exc.explanation or exc}") from exc
    except requests.RequestException as exc:
        raise ImagePushError(f"{remote}:{tag}: lost the docker engine during the push: {exc}") from exc
    if not digest:
        raise ImagePushError(f"{remote}:{tag}: push ended without a digest")
    log(f"pushed {remote}:{tag} {digest}")
    return digest


def _registry_base_url(registry: str) -> str:
    """``http://`` for loopback registries (what Docker allows without TLS), else ``https://``."""
    if registry.startswith(("http://", "https://")):
        return registry.rstrip("/")
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    insecure = host in {"localhost", "127.0.0.1", "[::1]"} or host.startswith("127.")
    return f"{'http' if insecure else 'https'}://{registry}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: httpx.URL) -> tuple[str, int | None]:
    return url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme)


def _shown_host(url: httpx.URL) -> str:
    """``host`` or ``host:port`` as the URL names it (IPv6 in brackets), the form the setting takes."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


def _realm_is_trusted(realm: httpx.URL, registry: httpx.URL, allowed: Iterable[str]) -> bool:
    """Whether ``realm`` may receive the credentials of ``registry``: the same host and port (default ports
    count), or an entry of ``allowed``: ``host:port``, or ``host`` alone for the realm scheme's default port."""
    here = _host_port(realm)
    if here == _host_port(registry):
        return True
    for entry in allowed:
        text = entry.strip()
        if not text:
            continue
        try:
            parsed = httpx.URL(text if "://" in text else f"{realm.scheme}://{text}")
        except httpx.InvalidURL:
            continue
        if parsed.host and _host_port(parsed) == here:
            return True
    return False


def _bearer_token(
    http: httpx.Client,
    challenge: str,
    auth: tuple[str, str] | None,
    registry_url: str,
    allowed_realms: Iterable[str] | None = None,
) -> str | None:
    """Token for a ``Bearer realm=...,service=...,scope=...`` challenge (token-auth registries).

    The registry's credentials go only to a realm on the registry's own host:port or on a host of the setting
    ``registry_allowed_realms`` (default: the process settings'); any other realm raises
    :class:`ImagePushError` before it is asked. Without credentials the realm is asked anonymously.
    """
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", None)
    if not realm:
        return None
    registry = httpx.URL(registry_url)
    try:
        realm_url = registry.join(realm)  # an absolute realm stays as it is
    except httpx.InvalidURL as exc:
        raise ImagePushError(
            f"{_shown_host(registry)} names an unusable token realm {realm!r}: {exc}"
        ) from None
    if auth is not None:
        allowed = get_settings().registry_allowed_realms if allowed_realms is None else allowed_realms
        if not _realm_is_trusted(realm_url, registry, allowed):
            host = _shown_host(realm_url)
            raise ImagePushError(
                f"registry {_shown_host(registry)} names the token realm {host} "
                f"({realm_url.scheme}://{host}{realm_url.path}), which is neither the registry's own host nor "
                f"in the setting registry_allowed_realms; its credentials were not sent there. If {host} is this "
                f"registry's token server, allow it: LOANRISK_REGISTRY_ALLOWED_REALMS='[\"{host}\"]' (or "
                f"registry_allowed_realms in loanrisk.toml)"
            )
    resp = http.get(realm_url, params=params, auth=auth)
    if resp.status_code != 200:
        return None
    body = resp.json()
    return body.get("token") or body.get("access_token")


def _registry_call(
    method: str,
    url: str,
    username: str | None,
    password: str | None,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """One registry HTTP API call with Basic credentials, answering a Bearer challenge when the registry uses
    token auth. Raises :class:`ImagePushError` when the registry cannot be reached."""
    auth = (username, password or "") if username else None
    try:
        with httpx.Client(timeout=30) as http:
            resp = http.request(method, url, headers=headers, content=content, auth=auth)
            challenge = resp.headers.get("WWW-Authenticate", "")
            if resp.status_code == 401 and challenge.lower().startswith("bearer"):
                token = _bearer_token(http, challenge, auth, url)
                if token:
                    bearer = {**(headers or {}), "Authorization": f"Bearer {token}"}
                    resp = http.request(method, url, headers=bearer, content=content)
    except httpx.HTTPError as exc:
        raise ImagePushError(f"{url} unreachable: {type(exc).__name__}: {exc}") from exc
    return resp


def _manifest_url(registry: str, repository: str, reference: str) -> tuple[str, str]:
    name = repository.removeprefix(registry.rstrip("/") + "/")
    return f"{_registry_base_url(registry)}/v2/{name}/manifests/{reference}", name


def registry_digest(
    registry: str, repository: str, tag: str, username: str | None, password: str | None
) -> str:
    """Ask the registry's HTTP API which digest ``repository:tag`` has (``Docker-Content-Digest``).

    ``tag`` may also be a digest (``sha256:...``): then the answer says whether the registry holds it.
    Raises :class:`TagNotFoundError` when the registry has no such tag, :class:`ImagePushError` otherwise.
    """
    url, name = _manifest_url(registry, repository, tag)
    resp = _registry_call("GET", url, username, password, headers={"Accept": MANIFEST_ACCEPT})
    if resp.status_code == 404:
        raise TagNotFoundError(f"{registry} has no {name}:{tag}")
    if resp.status_code != 200:
        raise ImagePushError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")
    digest = resp.headers.get("Docker-Content-Digest")
    if not digest:
        raise ImagePushError(f"{url} answered without a Docker-Content-Digest header")
    return digest


def registry_retag(
    registry: str, repository: str, digest: str, tag: str, username: str | None, password: str | None
) -> str:
    """Point ``repository:tag`` at the manifest ``digest`` already in the registry (the registry API's retag:
    the manifest is read by digest and put under the tag, byte for byte), then confirm it; returns the digest.

    Nothing is pushed from the engine, so it needs no local image, and doing it twice changes nothing.
    """
    step = f"tag {tag}"
    if tag_digest(registry, repository, tag, username, password) == digest:
        return digest
    url, name = _manifest_url(registry, repository, digest)
    got = _registry_call("GET", url, username, password, headers={"Accept": MANIFEST_ACCEPT})
    if got.status_code != 200:
        raise ImagePushError(
            f"{registry} has no manifest {name}@{digest} (HTTP {got.status_code})", step=step
        )
    media_type = got.headers.get("Content-Type", MANIFEST_V2).split(";")[0]
    put_url, _ = _manifest_url(registry, repository, tag)
    put = _registry_call(
        "PUT", put_url, username, password, headers={"Content-Type": media_type}, content=got.content
    )
    if put.status_code not in (200, 201):
        raise ImagePushError(
            f"{registry} refused {name}:{tag} -> {digest}: HTTP {put.status_code} {put.text[:300]}", step=step
        )
    held = registry_digest(registry, repository, tag, username, password)
    if held != digest:
        raise ImagePushError(f"{registry} holds {held} for {name}:{tag}, expected {digest}", step=step)
    return digest


def delete_manifest(
    registry: str, repository: str, digest: str, username: str | None, password: str | None
) -> bool:
    """Delete the manifest ``digest`` (and so every tag on it) from the registry; False when it held none.

    Used only for a build that never served: the registry's API deletes by digest, not by tag."""
    url, name = _manifest_url(registry, repository, digest)
    resp = _registry_call("DELETE", url, username, password)
    if resp.status_code in (200, 202):
        return True
    if resp.status_code == 404:
        return False
    raise ImagePushError(
        f"{registry} refused to delete {name}@{digest}: HTTP {resp.status_code} {resp.text[:200]}"
    )


def tag_digest(
    registry: str, repository: str, tag: str, username: str | None, password: str | None
) -> str | None:
    """The digest ``repository:tag`` has in the registry, or None when it has no such tag (or digest)."""
    try:
        return registry_digest(registry, repository, tag, username, password)
    except TagNotFoundError:
        return None


# --- availability and pulling ------------------------------------------------------------------------------
def engine_available(settings: Settings) -> tuple[bool, str, str]:
    """Whether a Docker engine and the image registry answer (used to decide whether to deploy): (ready, what is
    missing — "engine", "registry" or "" —, why)."""
    try:
        client = get_client(settings.docker_host, timeout_s=5)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        where = settings.docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
        return False, "engine", f"no Docker engine answers at {where} ({exc})"
    try:
        httpx.get(f"{_registry_base_url(settings.image_registry)}/v2/", timeout=5)
    except httpx.HTTPError as exc:
        return False, "registry", f"registry {settings.image_registry} does not answer ({exc})"
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
    remote = _remote_repository(registry, repository)
    ref = f"{remote}{'@' if tag.startswith('sha256:') else ':'}{tag}"
    auth = {"username": username, "password": password} if username else None
    try:
        client.images.pull(remote, tag=tag, auth_config=auth)
    except (docker.errors.APIError, requests.RequestException) as exc:
        explanation = getattr(exc, "explanation", None) or exc
        raise ImagePushError(f"could not pull {ref}: {explanation}", step="pull") from exc
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
        raise ImagePushError(f"pulled {ref} but cannot inspect it: {exc}", step="pull") from exc
    if ref not in held:
        raise ImagePushError(
            f"pulled {ref} but the engine's image has repo digests {held}", step="verify pull"
        )
    return ref


# --- stages: the deploy flow's Docker steps, settings first ---------------------------------------------------


def _log() -> LogFn:
    from tasks.common import run_logger

    return run_logger().info


def registry_credentials(settings: Settings) -> tuple[str | None, str | None]:
    """Registry user and password: from the settings (environment), or a Prefect Secret block."""
    password = settings.registry_password.get_secret_value() if settings.registry_password else None
    if password is None and settings.registry_secret_block:
        from prefect.blocks.system import Secret

        password = str(Secret.load(settings.registry_secret_block).get())
    return settings.registry_username, password


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
    return build_image(
        context_dir,
        repository,
        [tag],
        buildargs,
        labels,
        _log(),
        client=get_client(settings.docker_host),
        build_id=build_id,
    )


@stage("run-image", max_retries=0)
def run_task(settings: Settings, image_ref: str) -> RunningContainer:
    """Stage: start the image on a free local port and wait (bounded) for ``/health``."""
    running = run_container(image_ref, client=get_client(settings.docker_host))
    try:
        wait_healthy(running.base_url, timeout_s=settings.health_timeout_seconds, container=running)
    except BaseException:
        remove_container(running)
        raise
    _log()(f"{image_ref} is healthy at {running.base_url}")
    return running


@stage("clean-up", max_retries=0)
def cleanup_task(settings: Settings, running: RunningContainer | None) -> None:
    """Stage: remove the smoke-test container (always runs)."""
    if running is not None:
        remove_container(running)


@stage("push-image")
def push_task(settings: Settings, image_ref: str, tags: list[str]) -> str:
    """Stage: push each tag in order (the version tag first, ``latest`` last) and confirm the digest."""
    registry, repository = settings.image_registry, settings.image_repository
    username, password = registry_credentials(settings)
    client = get_client(settings.docker_host)
    image = client.images.get(image_ref)
    digest = ""
    for tag in tags:
        image.tag(_remote_repository(registry, repository), tag=tag)
        digest = push_image(client, repository, tag, username, password, registry, log=_log())
        held = registry_digest(registry, repository, tag, username, password)
        if held != digest:
            raise ImagePushError(
                f"registry holds {held} for {repository}:{tag}, pushed {digest}", step="verify push"
            )
        _log()(f"pushed {registry}/{repository}:{tag} {digest}")
    return digest
