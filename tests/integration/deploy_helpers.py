"""Helpers shared by the deploy-flow integration tests and the release fault tests (``tests/faults/``).

Each module trains once into its own state folder and pushes to its own repository of the registry; the
settings reach the flows through the environment, as a user sets them. At the end a module removes every local
image of its repository, so the shared engine keeps nothing of it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.github_stand_in import GitHubStandIn
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401
from tests.training import register_copy

REPO = Path(__file__).resolve().parents[2]
# the gate is not under test in these modules: every trained version passes it
LENIENT_GATE = {"LOANRISK_MIN_PRECISION": "0.5", "LOANRISK_MIN_RECALL": "0.5", "LOANRISK_MIN_F1_GAIN": "-1"}


def deploy_environment(services: DockerServices, github_url: str, state: Path) -> dict[str, str]:
    """The settings of a deploy test module: its own state, repository and deploy lock; a local GitHub."""
    return {
        "LOANRISK_STATE_DIR": str(state),
        "LOANRISK_WHEEL_CACHE": str(REPO / ".state" / "wheels"),
        "LOANRISK_DOCKER_HOST": services.docker_host,
        "LOANRISK_IMAGE_REGISTRY": services.registry,
        "LOANRISK_IMAGE_REPOSITORY": f"loan-risk-it-{uuid.uuid4().hex[:8]}",
        "LOANRISK_REGISTRY_USERNAME": services.username,
        "LOANRISK_REGISTRY_PASSWORD": services.password,
        "LOANRISK_BASE_IMAGE": services.base_image,
        "LOANRISK_GITHUB_TOKEN": "test-token",
        "LOANRISK_GITHUB_REPOSITORY": "lending/loan-risk",
        "LOANRISK_GITHUB_API_URL": github_url,
        "LOANRISK_SAMPLE_SCALE": "0.02",
        "LOANRISK_N_TRIALS": "2",
        "LOANRISK_DEPLOY_LOCK_NAME": f"loan-risk-deploy-it-{uuid.uuid4().hex[:8]}",
        **LENIENT_GATE,
    }


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    """The module's local GitHub."""
    stand_in = GitHubStandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture(scope="module")
def deploy_env(
    docker_services: DockerServices,  # noqa: F811
    github: GitHubStandIn,
    tmp_path_factory: pytest.TempPathFactory,
    serving_layers: None,  # noqa: F811
) -> Iterator[dict]:
    """The module's settings in the environment; its repository's local images are removed at the end."""
    with environment(
        deploy_environment(docker_services, github.url, tmp_path_factory.mktemp("deploy"))
    ) as env:
        try:
            yield env
        finally:
            remove_repo_images()


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Set ``env`` in the process environment (settings re-read), restore it afterwards."""
    from tasks.settings import get_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def settings() -> Any:
    from tasks.settings import get_settings

    return get_settings()


def champion() -> str | None:
    from tasks.registry import versions

    v = versions.version_by_alias(settings(), "champion")
    return None if v is None else str(v.version)


def registry_tag(tag: str) -> str | None:
    """The digest the registry holds for ``tag`` of this module's repository (None: no such tag)."""
    from tasks.release.registry_api import tag_digest

    s = settings()
    return tag_digest(s.release.image_registry, s.release.image_repository, tag, s.release.registry_username,
                      s.release.registry_password.get_secret_value())  # fmt: skip


def remote() -> str:
    return f"{settings().release.image_registry}/{settings().release.image_repository}"


def client() -> Any:
    from tasks.release.engine import get_client

    return get_client(settings().release.docker_host)


def smoke_containers() -> list:
    """Smoke-test containers of this module's repository (other developers' runs share the engine)."""
    return [
        c for c in client().containers.list(all=True, filters={"label": "loan-risk.role=smoke"})
        if (c.attrs.get("Config") or {}).get("Image", "").startswith(remote())
    ]  # fmt: skip


def local_refs() -> set[str]:
    """Local tags and digests of this module's repository."""
    refs: set[str] = set()
    for image in client().api.images(name=remote()):
        refs |= set(image.get("RepoTags") or []) | set(image.get("RepoDigests") or [])
    return {r for r in refs if r.startswith(remote())}


def build_leftovers(build_id: str) -> list[str]:
    """Images (intermediate ones included) still carrying the label of build ``build_id``."""
    from tasks.release.build import LABEL_BUILD_ID

    return [i["Id"] for i in client().api.images(all=True, filters={"label": f"{LABEL_BUILD_ID}={build_id}"})]


def remove_repo_images() -> None:
    """Remove every local image of this module's repository (end of module)."""
    from tasks.release.engine import remove_local_image

    c = client()
    for ref in sorted(local_refs(), key=lambda r: "@" in r):
        with contextlib.suppress(Exception):
            remove_local_image(c, ref)


def register_variant(
    version: str, change: Callable[[Path], None] | None = None, decision: str = "promoted"
) -> str:
    """Register a new version whose bundle is ``version``'s (changed by ``change``), with the gate's decision
    recorded as the promote stage records it."""
    from tasks.registry import versions

    s = settings()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = versions.download_bundle(s, version, Path(tmp) / "bundle")
        if change is not None:
            change(bundle)
        return register_copy(s, bundle, decision, note=f"variant of v{version}: {decision}")


def assert_nothing_moved(champion_before: str | None, latest_before: str | None, version: str) -> None:
    """A deploy of ``version`` failed before the commit point: nothing moved, nothing of it is left."""
    assert champion() == champion_before
    assert registry_tag("latest") == latest_before
    assert not any(r.endswith(f":{version}") for r in local_refs()), local_refs()
    assert not smoke_containers()
