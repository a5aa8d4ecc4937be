"""The serving image on the real engine, from the local debootstrap base: builds from tasks/release/build_context.py's
context, runs as non-root, turns healthy, answers /predict like training did, stays under 600 MB, and passes the
service's whole HTTP contract (the error, fuzz and schemathesis suites of tests/serving, run against the
container): the image's slimmed environment (tasks/release/prune.py) is proven by every endpoint, not a probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tasks.release.build_context import prepare_build_context
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401
from tests.serving.conftest import ADMIN_TOKEN
from tests.serving.remote import SERVICE_URL_ENV
from tests.serving.synthetic import make_bundle, sample_records

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

MAX_IMAGE_BYTES = 600 * 1000**2  # "600 MB" as docker reports sizes
REPO_ROOT = Path(__file__).resolve().parents[2]
# Wheels are downloaded from PyPI on the host once and kept across test sessions (the tests' state dir is not).
WHEEL_CACHE = Path(os.environ.get("LOANRISK_WHEEL_CACHE") or REPO_ROOT / ".state" / "wheels")
MODEL_VERSION = "7"
# The suites that make up the service's HTTP contract; tests marked `inprocess` are left out against a container.
CONTRACT_SUITES = (
    "tests/serving/test_errors.py",
    "tests/serving/test_json_fuzz.py",
    "tests/serving/test_schemathesis.py",
)


@pytest.fixture(scope="module")
def built_image(
    docker_services: DockerServices,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    serving_layers: None,  # noqa: F811
) -> Iterator[tuple[docker.DockerClient, str, dict[str, Any]]]:
    records = sample_records(tmp_path_factory.mktemp("sample"), scale=0.02, seed=1)
    bundle = make_bundle(
        tmp_path_factory.mktemp("bundle"), records, iterations=50, model_version=MODEL_VERSION
    )
    reference = json.loads((bundle / "reference.json").read_text())
    reference["anon_ssn"] = sorted({r["anon_ssn"] for r in records if r.get("anon_ssn")})
    context = prepare_build_context(bundle, tmp_path_factory.mktemp("ctx") / "context", WHEEL_CACHE)
    client = docker.DockerClient(base_url=docker_services.docker_host, timeout=900)
    tag = f"loanrisk-serving-test:{uuid.uuid4().hex[:12]}"
    try:
        image, build_log = client.images.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            buildargs={
                "BASE_IMAGE": docker_services.base_image,
                "MODEL_NAME": "loan-risk",
                "MODEL_VERSION": MODEL_VERSION,
                "GIT_COMMIT": "0123abc",
            },
        )
    except docker.errors.BuildError as exc:
        tail = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)[
            -4000:
        ]
        pytest.fail(f"image build failed: {exc}\n{tail}")
    made = _made_by_build(build_log)
    try:
        yield client, tag, reference
    finally:
        # the tagged image, then every image this build made (the build stage too, which nothing tags);
        # noprune: layers it took from the shared engine's cache belong to whoever built them
        for image_id in [image.id, *reversed(made)]:
            try:
                client.images.remove(image_id, force=True, noprune=True)
            except docker.errors.APIError:
                pass
        client.close()


def _made_by_build(build_log: Iterable[dict[str, Any]]) -> list[str]:
    """Ids of the images a classic-builder build made, in order (not those it took from the cache)."""
    made: list[str] = []
    cached = False
    for chunk in build_log:
        for line in str(chunk.get("stream") or "").splitlines():
            text = line.strip()
            if text == "---> Using cache":
                cached = True
            elif text.startswith("---> ") and not text.startswith("---> Running in "):
                if not cached:
                    made.append(text.removeprefix("---> "))
                cached = False
    return made


def test_image_metadata_and_size(built_image) -> None:
    client, tag, _ = built_image
    image = client.images.get(tag)
    config = image.attrs["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("0", "root")
    assert config["Healthcheck"]["Test"][-1] == "serving.healthcheck"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == MODEL_VERSION
    assert labels["org.opencontainers.image.title"] == "loan-risk"
    assert labels["org.opencontainers.image.revision"] == "0123abc"
    size = image.attrs["Size"]
    print(
        f"\nserving image: {size / 1e6:.1f} MB"
    )  # the figure docs/service.md "The image" reports (pytest -s)
    assert size < MAX_IMAGE_BYTES, f"image is {size / 1e6:.1f} MB"


def _wait_healthy(container: Any, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = "starting"
    while time.monotonic() < deadline:
        container.reload()
        state = container.attrs["State"]
        if not state["Running"]:
            raise AssertionError(
                f"container exited ({state.get('ExitCode')}):\n{container.logs().decode()[-3000:]}"
            )
        status = state.get("Health", {}).get("Status", "none")
        if status == "healthy":
            return status
        time.sleep(1)
    raise AssertionError(
        f"container not healthy after {timeout_s}s ({status}):\n{container.logs().decode()[-3000:]}"
    )


def _base_url(container: Any) -> str:
    container.reload()
    port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
    return f"http://127.0.0.1:{port}"


def test_container_runs_non_root_turns_healthy_and_predicts(built_image) -> None:
    client, tag, reference = built_image
    container = client.containers.run(tag, detach=True, ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        _wait_healthy(container, 180)
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        assert uid.isdigit() and uid != "0"
        base = _base_url(container)
        with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
            assert json.loads(r.read())["model_version"] == MODEL_VERSION
        for record, expected in list(zip(reference["records"], reference["probabilities"], strict=True))[:5]:
            req = urllib.request.Request(
                f"{base}/predict",
                data=json.dumps(record).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                answer = json.loads(r.read())
            assert abs(answer["probability"] - expected) <= 1e-9
            assert answer["model_version"] == MODEL_VERSION
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            assert b'loanrisk_predictions_total{endpoint="/predict"} 5.0' in r.read()
        logs = container.logs().decode()
        assert reference["anon_ssn"] and not [ssn for ssn in reference["anon_ssn"] if ssn in logs]
        sent = reference["records"]
        assert not {"anon_ssn", "loanId"} & {k for r in sent for k in r}  # nothing personal was sent
    finally:
        container.remove(force=True)


@pytest.mark.nightly
def test_container_passes_the_full_http_contract(built_image) -> None:
    """The error, fuzz and schemathesis suites against the running container (what the pruned image must serve).

    The container gets the settings the suites' in-process app has (reload on, batches of at most 50).
    """
    client, tag, reference = built_image
    container = client.containers.run(
        tag,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", None)},
        environment={"LOANRISK_ADMIN_TOKEN": ADMIN_TOKEN, "LOANRISK_MAX_BATCH_SIZE": "50"},
    )
    try:
        _wait_healthy(container, 180)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", *CONTRACT_SUITES],
            cwd=REPO_ROOT,
            # the outer run's PYTEST_ADDOPTS (a tier's -m, a junit path) are not the inner run's
            env={
                **{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
                SERVICE_URL_ENV: _base_url(container),
            },
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        assert proc.returncode == 0, f"{summary}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
        assert " passed" in summary and "deselected" in summary and "skipped" not in summary, summary
        container.reload()
        assert container.attrs["State"]["Running"], container.logs().decode()[-3000:]
        logs = container.logs().decode()
        assert '"status":500' not in logs and "unhandled error" not in logs, logs[-3000:]
        assert not [ssn for ssn in reference["anon_ssn"] if ssn in logs]
    finally:
        container.remove(force=True)
