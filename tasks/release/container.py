"""Run an image as a local container on a free port, wait for its health check, smoke-test it, remove it."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import httpx
from docker.models.containers import Container

from tasks.common import run_logger, stage
from tasks.errors import PermanentError
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
        try:
            return self.container.logs(stdout=True, stderr=True, tail=tail).decode("utf-8", errors="replace")
        except docker.errors.APIError:
            return ""

    def __enter__(self) -> RunningContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        remove_container(self)


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


def wait_healthy(base_url: str, timeout_s: float = 60, *, container: RunningContainer | None = None) -> None:
    """Poll ``base_url``'s ``/health`` until it answers 200, stopping at once when ``container`` dies. Raises
    :class:`DeployStepError` with its last 50 log lines and exit status (``details``: logs, exit_status)."""
    url = base_url.rstrip("/") + "/health"
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
            state = _exit_state(container.container) if container is not None else None
            if state is None and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            logs = container.logs() if container is not None else ""
            if state is None:
                why, code = f"{url} not healthy after {timeout_s:.0f}s ({last})", None
            else:
                code = state.get("ExitCode")
                why = f"container {state.get('Status')} with exit status {code}"
                why += f", error: {state['Error']}" if state.get("Error") else ""
                why += f"{', OOM-killed' if state.get('OOMKilled') else ''} before {url} answered"
            raise DeployStepError("run", f"{why}; last 50 log lines:\n{logs}", logs=logs, exit_status=code)


def remove_container(running: RunningContainer) -> None:
    """Force-remove the container (and its anonymous volumes); no error when it is already gone."""
    try:
        running.container.remove(force=True, v=True)
        logger.info("removed container %s", running.name)
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


class SmokeTestError(PermanentError):
    """The running image answered wrongly; the message says which check failed and why."""

    step = "smoke-test"

    def __str__(self) -> str:
        return f"smoke-test failed: {super().__str__()}"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SmokeTestError(message)


def _json(response: httpx.Response, what: str) -> Any:
    _check(response.status_code == 200, f"{what} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise SmokeTestError(f"{what} answered non-JSON: {response.text[:300]}") from None


def compare_predictions(
    answers: Mapping[str, Sequence[Any]], expected: Sequence[float], tolerance: float = 1e-6
) -> float:
    """Check each endpoint's probabilities (a prefix of ``expected`` is allowed: /predict answers for the first
    record only) against training's; returns the largest difference. A value that is not a number or is more
    than ``tolerance`` away raises :class:`SmokeTestError` naming the endpoint, the record and the difference."""
    worst = 0.0
    for name, values in answers.items():
        for i, (got, want) in enumerate(zip(values, expected, strict=False)):
            try:
                diff = abs(float(got) - float(want))
            except (TypeError, ValueError):
                raise SmokeTestError(f"{name} record {i}: probability {got!r} is not a number") from None
            worst = max(worst, diff)
            _check(
                math.isfinite(diff) and diff <= tolerance,
                f"{name} record {i}: probability {got} differs from training's {want} by {diff:.2e} (> {tolerance})",
            )
    return worst


def smoke_test(base_url: str, expected_version: str, reference: dict[str, list[Any]]) -> dict[str, Any]:
    """Call /health, /model/info, /predict, /predict/batch and /invocations; compare with ``reference`` (raw
    test records and the probabilities training computed for them). Returns a summary."""
    records, expected = reference["records"], reference["probabilities"]
    _check(0 < len(records) == len(expected), "the bundle's reference sample is empty or uneven")
    with httpx.Client(base_url=base_url, timeout=30.0) as http:
        health = _json(http.get("/health"), "GET /health")
        info = _json(http.get("/model/info"), "GET /model/info")
        _check(
            str(info.get("version")) == str(expected_version),
            f"/model/info reports version {info.get('version')!r}, expected {expected_version!r}",
        )
        single = _json(http.post("/predict", json=records[0]), "POST /predict")
        batch = _json(http.post("/predict/batch", json={"data": records}), "POST /predict/batch")
        invocations = _json(
            http.post("/invocations", json={"dataframe_records": records}), "POST /invocations"
        )

    got_batch = [p["probability"] for p in batch["predictions"]]
    got_inv = [p if isinstance(p, int | float) else p.get("probability") for p in invocations["predictions"]]
    answers = {"/predict/batch": got_batch, "/invocations": got_inv}
    for name, got in answers.items():
        _check(len(got) == len(expected), f"{name} returned {len(got)} rows for {len(expected)}")
    worst = compare_predictions({**answers, "/predict": [single["probability"]]}, expected)
    return {
        "health": health,
        "version": info.get("version"),
        "rows_compared": len(expected),
        "max_abs_diff": worst,
        "checks": ["/health", "/model/info", "/predict", "/predict/batch", "/invocations"],
    }


@stage("smoke-test", max_retries=0)
def smoke_task(
    settings: Settings, base_url: str, expected_version: str, reference: dict[str, list[Any]]
) -> dict[str, Any]:
    """Stage: the smoke test of the running container (a wrong answer stays wrong: no retry)."""
    summary = smoke_test(base_url, expected_version, reference)
    run_logger().info("smoke test passed: %s", summary)
    return summary
