"""Pytest fixtures for the real Docker engine + registry that ``tests/infra/services.sh`` manages.

Import the fixture where it is used (``from tests.infra.docker_fixtures import docker_services``) or from
``tests/conftest.py``. The services are started when needed and stopped at the end of the session only when
this fixture started them, so a developer's warm engine is reused and left running.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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


def _services(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run ``services.sh command`` against the shared docker state folder."""
    return subprocess.run(
        ["bash", str(SERVICES_SH), command],
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


@pytest.fixture(scope="session")
def docker_services() -> Iterator[DockerServices]:
    """Ensure the local engine, registry and base image exist; point DOCKER_HOST at the engine."""
    try:
        was_running = _services("status", 60).returncode == 0
        proc = _services("start", START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"services.sh could not run: {exc}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        if not was_running:  # leave nothing half-started behind
            _services("stop", 120)
        _unavailable(f"services.sh start exited {proc.returncode}:\n{tail}")
    env = read_env_file(docker_state_dir() / "env.sh")
    services = DockerServices(
        docker_host=env["DOCKER_HOST"],
        registry=env["LOANRISK_IMAGE_REGISTRY"],
        username=env["LOANRISK_REGISTRY_USERNAME"],
        password=env["LOANRISK_REGISTRY_PASSWORD"],
        base_image=env["LOANRISK_BASE_IMAGE"],
        started_here=not was_running,
    )
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = services.docker_host
    try:
        yield services
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        if services.started_here:
            stop = _services("stop", 120)
            if stop.returncode != 0:
                logger.warning("services.sh stop exited %s: %s", stop.returncode, stop.stderr[-2000:])
