"""Run an image as a local container on a free port, wait for its health check, and remove it."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass

import docker
import docker.errors
import httpx
from docker.models.containers import Container

from tasks.common import run_logger, stage
from tasks.release.engine import DeployStepError, get_client
from tasks.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class RunningContainer:
    """A started container, published on ``127.0.0.1:host_port``. Usable as a context manager (removes it)."""

    container: Container
    name: str
    host_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def logs(self, tail: int = 50) -> str:
        """The last ``tail`` lines of stdout+stderr ('' when the container is gone)."""
        return _container_logs(self.container, tail)

    def __enter__(self) -> RunningContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        remove_container(self)


def _container_logs(container: Container, tail: int = 50) -> str:
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
    """Start ``image`` detached, publishing ``port_in_container`` on a free port of 127.0.0.1; raises
    :class:`DeployStepError` when the engine cannot create or start it (nothing is left behind)."""
    client = client or get_client()
    last_error: Exception | None = None
    for _attempt in range(3):  # a picked port can be taken before the engine binds it
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
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
            raise DeployStepError("run", f"image {image} not found: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            last_error = exc
            with contextlib.suppress(docker.errors.APIError):  # the half-created container, if any
                client.containers.get(name).remove(force=True)
            if "already allocated" in str(exc) or "address already in use" in str(exc):
                continue
            raise DeployStepError("run", f"engine could not start {image}: {exc.explanation or exc}") from exc
        logger.info("started %s (%s) on 127.0.0.1:%d", name, image, port)
        return RunningContainer(container, name, port)
    raise DeployStepError("run", f"no free port to publish {image}: {last_error}")


def _exit_state(container: Container) -> dict | None:
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
    """Poll ``base_url + path`` until it answers 200, stopping at once when ``container`` dies. Raises
    :class:`DeployStepError` with its last 50 log lines and exit status (``details``: logs, exit_status)."""
    container = getattr(container, "container", container)
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
            if state is None and time.monotonic() < deadline:
                time.sleep(interval_s)
                continue
            logs = _container_logs(container) if container is not None else ""
            if state is None:
                why, code = f"{url} not healthy after {timeout_s:.0f}s ({last})", None
            else:
                code = state.get("ExitCode")
                why = f"container {state.get('Status')} with exit status {code}"
                why += f", error: {state['Error']}" if state.get("Error") else ""
                why += f"{', OOM-killed' if state.get('OOMKilled') else ''} before {url} answered"
            raise DeployStepError("run", f"{why}; last 50 log lines:\n{logs}", logs=logs, exit_status=code)


def remove_container(container: Container | RunningContainer) -> None:
    """Force-remove the container (and its anonymous volumes); no error when it is already gone."""
    container = getattr(container, "container", container)
    try:
        container.remove(force=True, v=True)
        logger.info("removed container %s", container.name)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409 or "already in progress" not in str(exc):
            raise


@stage("run-image", max_retries=0)
def run_task(settings: Settings, image_ref: str) -> RunningContainer:
    """Stage: start the image on a free local port and wait (bounded) for ``/health``."""
    running = run_container(image_ref, client=get_client(settings.release.docker_host))
    try:
        wait_healthy(running.base_url, timeout_s=settings.release.health_timeout_seconds, container=running)
    except BaseException:
        remove_container(running)
        raise
    run_logger().info("%s is healthy at %s", image_ref, running.base_url)
    return running


@stage("clean-up", max_retries=0)
def cleanup_task(settings: Settings, running: RunningContainer | None) -> None:
    """Stage: remove the smoke-test container (always runs)."""
    if running is not None:
        remove_container(running)
