"""The deploy flow against a real Docker engine and a real registry with password authentication.

A small training run promotes a model; the deploy flow builds, smoke-tests and pushes its image; the image is
pulled back and answers; ``champion`` moves; failures leave everything as it was; a rollback goes back.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


class GitHubStandIn:
    """A local HTTP server that records release requests the way GitHub's REST API takes them."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                data = json.dumps(
                    {"id": len(outer.requests), "html_url": f"http://github.invalid/{body['tag_name']}"}
                )
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def deploy_env(docker_services: DockerServices, github: GitHubStandIn, tmp_path_factory) -> Iterator[dict]:  # noqa: F811
    """Settings for this module through the environment, as a user would set them."""
    import os

    from tasks.settings import get_settings

    state = tmp_path_factory.mktemp("deploy-state")
    env = {
        "LOANRISK_STATE_DIR": str(state),
        "LOANRISK_WHEEL_CACHE": str(REPO / ".state" / "wheels"),
        "LOANRISK_DOCKER_HOST": docker_services.docker_host,
        "LOANRISK_IMAGE_REGISTRY": docker_services.registry,
        "LOANRISK_IMAGE_REPOSITORY": f"loan-risk-it-{uuid.uuid4().hex[:8]}",
        "LOANRISK_REGISTRY_USERNAME": docker_services.username,
        "LOANRISK_REGISTRY_PASSWORD": docker_services.password,
        "LOANRISK_BASE_IMAGE": docker_services.base_image,
        "LOANRISK_GITHUB_TOKEN": "test-token",
        "LOANRISK_GITHUB_REPOSITORY": "lending/loan-risk",
        "LOANRISK_GITHUB_API_URL": github.url,
        "LOANRISK_SAMPLE_SCALE": "0.02",
        "LOANRISK_N_TRIALS": "2",
        # the gate is not under test here: every trained version may pass it
        "LOANRISK_MIN_PRECISION": "0.5",
        "LOANRISK_MIN_RECALL": "0.5",
        "LOANRISK_MIN_F1_GAIN": "-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    get_settings.cache_clear()


def settings():
    from tasks.settings import get_settings

    return get_settings()


def champion() -> str | None:
    from tasks import registry

    v = registry.version_by_alias(settings(), "champion")
    return None if v is None else str(v.version)


def smoke_containers() -> list:
    from tasks.image import get_client

    return get_client(settings().docker_host).containers.list(
        all=True, filters={"label": "loan-risk.role=smoke"}
    )


def registry_tag(tag: str) -> str | None:
    from tasks.image import TagNotFoundError, registry_digest

    s = settings()
    try:
        return registry_digest(s.image_registry, s.image_repository, tag, s.registry_username,
                               s.registry_password.get_secret_value())  # fmt: skip
    except TagNotFoundError:
        return None


def register_variant(version: str, change) -> str:
    """Register a new version whose bundle is ``version``'s, changed by ``change(bundle_dir)``."""
    import tempfile

    from tasks import registry, tracking

    s = settings()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = registry.download_bundle(s, version, Path(tmp) / "bundle")
        change(bundle)
        run = tracking.start_run(s, "variant")
        return registry.register_bundle(s, run, bundle, {"variant_of": version})


@pytest.fixture(scope="module")
def first_release(deploy_env: dict) -> dict:
    """Train at a small scale with deploy required: the promoted version is built, tested, pushed, released."""
    from flows.training import training_flow

    result = training_flow(source="sample", deploy=True)
    assert result["promoted"], result["reasons"]
    return result


def test_training_promotes_and_deploy_releases(first_release: dict, github: GitHubStandIn) -> None:
    deploy = first_release["deploy"]
    version = first_release["model_version"]
    assert deploy["status"] == "completed" and deploy["model_version"] == version
    assert champion() == version
    assert registry_tag(version) == deploy["digest"] and registry_tag("latest") == deploy["digest"]
    assert deploy["smoke"]["rows_compared"] > 0 and deploy["smoke"]["max_abs_diff"] <= 1e-6
    assert not smoke_containers()
    from tasks import registry

    tags = registry.get_version(settings(), version).tags
    assert tags["release.image"] == deploy["image"] and tags["release.digest"] == deploy["digest"]
    sent = [r for r in github.requests if r["body"]["tag_name"] == f"loan-risk-v{version}"]
    assert sent and sent[0]["path"] == "/repos/lending/loan-risk/releases"
    assert sent[0]["auth"] == "Bearer test-token" and deploy["image"] in sent[0]["body"]["body"]


def test_release_notes_artifact_exists(first_release: dict) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["release-notes"]))
        )
    assert any(f"v{first_release['model_version']}" in (a.data or "") for a in arts)


def test_pushed_image_pulls_back_and_answers(first_release: dict, docker_services: DockerServices) -> None:  # noqa: F811
    """Remove the local image, pull it from the registry with credentials, run it, ask /predict."""
    from serving.bundle import load_bundle
    from tasks import registry
    from tasks.image import get_client, pull_image, remove_container, run_container, wait_healthy

    s = settings()
    version = first_release["model_version"]
    client = get_client(s.docker_host)
    client.images.remove(first_release["deploy"]["image"], force=True)
    ref = pull_image(client, s.image_registry, s.image_repository, version, s.registry_username,
                     s.registry_password.get_secret_value())  # fmt: skip
    bundle = load_bundle(registry.download_bundle(s, version, Path(s.state_dir) / "check-bundle"))
    ref_data = bundle.reference()
    running = run_container(ref, client=client, name_prefix="loan-risk-it-pull")
    try:
        wait_healthy(running.base_url, timeout_s=90, container=running)
        answer = httpx.post(f"{running.base_url}/predict", json=ref_data["records"][0], timeout=30).json()
    finally:
        remove_container(running)
    assert answer["model_version"] == version
    assert abs(answer["probability"] - ref_data["probabilities"][0]) <= 1e-6


def _assert_nothing_moved(before_champion: str, version: str) -> None:
    assert champion() == before_champion
    assert registry_tag(version) is None
    assert not smoke_containers()


def test_image_whose_server_cannot_start(first_release: dict, monkeypatch) -> None:
    import serving.build_context as bc
    from flows.deploy import DeployError, deploy_flow

    before = champion()
    version = register_variant(first_release["model_version"], lambda b: None)
    original = bc.prepare_build_context

    def broken(*args, **kwargs):
        out = original(*args, **kwargs)
        with (out / "serving" / "gunicorn_conf.py").open("a") as fh:
            fh.write('\nraise SystemExit("deliberately broken for a test")\n')
        return out

    monkeypatch.setattr(bc, "prepare_build_context", broken)
    with pytest.raises(DeployError, match="deploy step 'run' failed"):
        deploy_flow(model_version=version)
    _assert_nothing_moved(before, version)


def test_smoke_test_that_sees_wrong_predictions(first_release: dict, monkeypatch) -> None:
    """The image serves its model, but the predictions differ from what training recorded: no release."""
    from flows.deploy import DeployError, deploy_flow
    from serving.bundle import Bundle

    original = Bundle.reference

    def skewed(self: Bundle) -> dict:
        ref = original(self)
        return dict(ref, probabilities=[min(1.0, p + 0.01) for p in ref["probabilities"]])

    before = champion()
    version = register_variant(first_release["model_version"], lambda b: None)
    monkeypatch.setattr(Bundle, "reference", skewed)
    with pytest.raises(DeployError, match="deploy step 'smoke-test' failed.*differs from training"):
        deploy_flow(model_version=version)
    _assert_nothing_moved(before, version)
    from tasks.image import get_client

    tags = [t for img in get_client(settings().docker_host).images.list() for t in img.tags]
    assert not [t for t in tags if t.endswith(f"{settings().image_repository}:{version}")]


def test_bundle_that_does_not_reproduce_its_reference_never_builds(first_release: dict) -> None:
    """A bundle whose recorded predictions its own model cannot reproduce is refused at build time."""
    from flows.deploy import DeployError, deploy_flow

    def skew(bundle: Path) -> None:
        ref = json.loads((bundle / "reference.json").read_text())
        ref["probabilities"] = [min(1.0, p + 0.01) for p in ref["probabilities"]]
        (bundle / "reference.json").write_text(json.dumps(ref))

    before = champion()
    version = register_variant(first_release["model_version"], skew)
    with pytest.raises(DeployError, match="deploy step 'build' failed"):
        deploy_flow(model_version=version)
    _assert_nothing_moved(before, version)


def test_registry_that_refuses_the_credentials(first_release: dict, monkeypatch) -> None:
    from flows.deploy import DeployError, deploy_flow
    from tasks.settings import get_settings

    before = champion()
    latest_before = registry_tag("latest")
    version = register_variant(first_release["model_version"], lambda b: None)
    monkeypatch.setenv("LOANRISK_REGISTRY_PASSWORD", "wrong-password")
    get_settings.cache_clear()
    try:
        with pytest.raises(DeployError, match="deploy step 'push' failed"):
            deploy_flow(model_version=version)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    _assert_nothing_moved(before, version)
    assert registry_tag("latest") == latest_before


def test_rollback_moves_champion_back_and_the_previous_image_answers(first_release: dict) -> None:
    from flows.deploy import deploy_flow
    from tasks.image import get_client, remove_container, run_container, wait_healthy

    first = first_release["model_version"]
    second = register_variant(first, lambda b: None)
    released = deploy_flow(model_version=second)
    assert champion() == second and released["previous_champion"] == first
    rolled = deploy_flow(rollback=True)
    assert rolled["rolled_back_from"] == second and rolled["model_version"] == first
    assert champion() == first
    assert registry_tag("latest") == registry_tag(first)
    s = settings()
    running = run_container(f"{s.image_registry}/{s.image_repository}:latest", client=get_client(s.docker_host),
                            name_prefix="loan-risk-it-rollback")  # fmt: skip
    try:
        wait_healthy(running.base_url, timeout_s=90, container=running)
        info = httpx.get(f"{running.base_url}/model/info", timeout=30).json()
    finally:
        remove_container(running)
    assert str(info["version"]) == first
