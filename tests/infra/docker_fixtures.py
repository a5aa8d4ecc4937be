"""Pytest fixtures for the real Docker engine + registry that ``tests/infra/services.sh`` manages.

Import the fixture where it is used (``from tests.infra.docker_fixtures import docker_services``) or from
``tests/conftest.py``. The services are started when needed and stopped at the end of the session only when
this fixture started them, so a developer's warm engine is reused and left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

logger = logging.getLogger(__name__)

SERVICES_SH = Path(__file__).resolve().with_name("services.sh")
REPO_ROOT = SERVICES_SH.parents[2]
START_TIMEOUT_S = (
    1200  # a cold start builds the base image with debootstrap (about a minute, more on slow mirrors)
)


@dataclass(frozen=True)
class DockerServices:
    """Where the engine and registry are, and how to log in."""

    docker_host: str
    registry: str
    username: str
    password: str
    base_image: str
    started_here: bool = False


def docker_state_dir() -> Path:
    """The folder services.sh keeps the engine and registry in (LOANRISK_DOCKER_STATE_DIR or <repo>/.state/docker).

    Not under LOANRISK_STATE_DIR, which tests/conftest.py points at a throwaway folder per session.
    """
    return Path(os.environ.get("LOANRISK_DOCKER_STATE_DIR") or REPO_ROOT / ".state" / "docker")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the ``export NAME=value`` lines services.sh writes."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


def _services(command: str, timeout_s: float, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``services.sh command [args]`` against the shared docker state folder."""
    return subprocess.run(
        ["bash", str(SERVICES_SH), command, *args],
        env={**os.environ, "LOANRISK_DOCKER_STATE_DIR": str(docker_state_dir())},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def in_ci() -> bool:
    """Any non-empty ``CI`` value means CI (``CI=true``, ``CI=1``, ...), as CI services set it."""
    return bool(os.environ.get("CI", "").strip())


def _unavailable(reason: str) -> NoReturn:
    """Fail in CI (the engine must work there), skip on a developer machine."""
    if in_ci():
        pytest.fail(f"docker services unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"docker services unavailable: {reason}")


def _read_services(started_here: bool = False) -> DockerServices:
    env = read_env_file(docker_state_dir() / "env.sh")
    return DockerServices(
        docker_host=env["DOCKER_HOST"],
        registry=env["LOANRISK_IMAGE_REGISTRY"],
        username=env["LOANRISK_REGISTRY_USERNAME"],
        password=env["LOANRISK_REGISTRY_PASSWORD"],
        base_image=env["LOANRISK_BASE_IMAGE"],
        started_here=started_here,
    )


def services_up() -> bool:
    try:
        return _services("status", 60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_services(snapshot_file: Path) -> Iterator[DockerServices]:
    """Ensure the local engine, registry and base image exist; point DOCKER_HOST at the engine. What the engine
    and the registry held before the run is noted once (:func:`note_engine`); the run's controlling process
    removes what the tests added and stops the services it started (:func:`leave_nothing`)."""
    try:
        was_running = services_up()
        proc = _services("start", START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"services.sh could not run: {exc}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        if not was_running:  # leave nothing half-started behind
            _services("stop", 120)
        _unavailable(f"services.sh start exited {proc.returncode}:\n{tail}")
    services = _read_services(started_here=not was_running)
    note_engine(snapshot_file, services)
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = services.docker_host
    try:
        yield services
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous


WHEEL_CACHE = REPO_ROOT / ".state" / "wheels"


@pytest.fixture(scope="session")
def serving_layers(docker_services: DockerServices, trained_run: Any, snapshot_file: Path) -> None:
    """The serving image's environment layers in the builder's cache, built once per test run: the first worker
    to need them builds the image from the run's trained bundle (the others wait), then removes the image and
    keeps its layers. Without it, workers starting their first builds together each install the environment."""
    folder = snapshot_file.parent
    done = folder / "serving-layers.done"
    with open(folder / "serving-layers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return
        import docker

        from tasks.release.build import build_image
        from tasks.release.build_context import prepare_build_context

        context = prepare_build_context(trained_run.bundle_dir, folder / "serving-layers", WHEEL_CACHE)
        client = docker.DockerClient(base_url=docker_services.docker_host, timeout=900)
        try:
            ref = "loan-risk-test-layers"
            tag = str(os.getpid())
            build_image(context, ref, [tag], {"BASE_IMAGE": docker_services.base_image}, {}, logger.info,
                        client=client)  # fmt: skip
            client.api.remove_image(f"{ref}:{tag}", noprune=True)  # its layers stay: the builder's cache
        finally:
            client.close()
            shutil.rmtree(context, ignore_errors=True)
        done.write_text("built\n")


def note_engine(snapshot_file: Path, services: DockerServices) -> None:
    """Write what the engine and the registry hold now, unless a process of this run already has (the first to
    see the engine up notes it: the controller at the start, or the worker that started the services)."""
    snapshot_file.parent.mkdir(parents=True, exist_ok=True)
    with open(snapshot_file.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not snapshot_file.exists():
            snapshot = EngineSnapshot.take(services)
            data = {
                "started_here": services.started_here,
                **{k: sorted(v) for k, v in asdict(snapshot).items()},
            }
            snapshot_file.write_text(json.dumps(data))


def leave_nothing(snapshot_file: Path) -> list[str]:
    """At the end of a run: remove what was added to the engine and the registry since :func:`note_engine`,
    stop the services when the run started them; returns what could not be removed."""
    if not snapshot_file.exists() or not services_up():
        return []
    data = json.loads(snapshot_file.read_text())
    started_here = bool(data.pop("started_here"))
    snapshot = EngineSnapshot(**{k: frozenset(v) for k, v in data.items()})
    left = snapshot.restore(_read_services())
    if started_here:
        stop = _services("stop", 120)
        if stop.returncode != 0:
            logger.warning("services.sh stop exited %s: %s", stop.returncode, stop.stderr[-2000:])
    return left


def _registry_http(services: DockerServices) -> Any:
    import httpx

    return httpx.Client(
        base_url=f"http://{services.registry}/v2/", auth=(services.username, services.password), timeout=30
    )


def registry_repositories(services: DockerServices) -> set[str]:
    """Every repository the shared registry lists."""
    names: set[str] = set()
    with _registry_http(services) as http:
        params: dict[str, Any] = {"n": 100}
        while True:  # a page at a time: the registry caps a page's size
            response = http.get("_catalog", params=params)
            response.raise_for_status()
            page = response.json().get("repositories") or []
            names.update(page)
            if len(page) < params["n"] or "next" not in response.headers.get("Link", ""):
                return names
            params["last"] = page[-1]


@dataclass(frozen=True)
class EngineSnapshot:
    """What the engine and the registry held when the session began: the end of the session removes the rest."""

    containers: frozenset[str]
    images: frozenset[str]
    networks: frozenset[str]
    volumes: frozenset[str]
    repositories: frozenset[str]

    @classmethod
    def take(cls, services: DockerServices) -> EngineSnapshot:
        import docker

        client = docker.DockerClient(base_url=services.docker_host, timeout=120)
        try:
            return cls(
                frozenset(c["Id"] for c in client.api.containers(all=True)),
                frozenset(i["Id"] for i in client.api.images(all=True)),
                frozenset(n["Id"] for n in client.api.networks()),
                frozenset(v["Name"] for v in client.api.volumes().get("Volumes") or []),
                frozenset(registry_repositories(services)),
            )
        finally:
            client.close()

    def restore(self, services: DockerServices) -> list[str]:
        """Remove every container, image, network, volume and registry repository made since the snapshot (the
        registry garbage-collected after); returns what is still there after that (empty when all went)."""
        import docker

        client = docker.DockerClient(base_url=services.docker_host, timeout=300)
        try:
            for c in client.api.containers(all=True):
                if c["Id"] not in self.containers:
                    with contextlib.suppress(docker.errors.NotFound):
                        client.api.remove_container(c["Id"], force=True, v=True)
            for _ in range(10):  # children before parents: repeat until nothing new is left or nothing moves
                new = [i["Id"] for i in client.api.images(all=True) if i["Id"] not in self.images]
                if not new:
                    break
                for image_id in new:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        client.api.remove_image(image_id, force=True, noprune=True)
            for n in client.api.networks():
                if n["Id"] not in self.networks:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        client.api.remove_network(n["Id"])
            for v in client.api.volumes().get("Volumes") or []:
                if v["Name"] not in self.volumes:
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        client.api.remove_volume(v["Name"], force=True)
            repositories = sorted(registry_repositories(services) - self.repositories)
            if repositories:
                gc = _services("gc", 300, *repositories)
                if gc.returncode != 0:
                    logger.warning("services.sh gc exited %s: %s", gc.returncode, gc.stderr[-2000:])
            left = [f"container {c['Id'][:12]} ({c.get('Image')})" for c in client.api.containers(all=True)
                    if c["Id"] not in self.containers]  # fmt: skip
            left += [f"image {i['Id'][7:19]} {i.get('RepoTags') or ''}" for i in client.api.images(all=True)
                     if i["Id"] not in self.images]  # fmt: skip
            left += [f"network {n['Name']}" for n in client.api.networks() if n["Id"] not in self.networks]
            left += [f"volume {v['Name']}" for v in client.api.volumes().get("Volumes") or []
                     if v["Name"] not in self.volumes]  # fmt: skip
            left += [f"registry repository {r}" for r in registry_repositories(services) - self.repositories]
            return left
        finally:
            client.close()
