"""The ``docker`` work-pool variant: one small training flow run in a container of the training image, on the real
engine (the shared one ``tests/infra/services.sh`` manages), against the stack's Prefect and MLflow servers.

The training image is built from ``Dockerfile.training`` on the local base image (wheels prepared on the host,
nothing fetched in the build). The stack (PostgreSQL, Prefect, MLflow; no process workers) runs on the host's
loopback; the flow-run containers use host networking, so they reach it at the same URLs. ``deployments.setup``
puts the settings the container needs (MLflow URL, Optuna storage, pseudonym key) on the pool as environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from deployments.stack import Stack, StackUrls, image
from deployments.stack.launcher import basic
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401 - fixture
from tests.integration.prefect_fixtures import _spawn, _stop_group, _tail, require_postgres

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "loan-risk-docker"
TAG = "loan-risk-training:stack-test"
SMALL_RUN = {"source": "sample", "scale": 0.02, "n_trials": 2, "deploy": False}
RUN_TIMEOUT_S = 1200

pytestmark = [pytest.mark.docker, pytest.mark.stack, pytest.mark.slow, pytest.mark.nightly]


def _secrets(urls: StackUrls) -> dict[str, str]:
    found = {
        "pseudonym key": urls.pseudonym_key,
        "MLflow password": urls.mlflow_password or "",
        "Prefect auth string": urls.prefect_auth_string or "",
    }
    return {k: v for k, v in found.items() if v}


def _no_secret_in(place: str, text: str, secrets: dict[str, str]) -> None:
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, f"{place} holds the {', '.join(leaked)}"


@pytest.fixture(scope="module")
def training_image(docker_services: DockerServices) -> Iterator[str]:  # noqa: F811
    t0 = time.monotonic()
    image_id = image.build(TAG, base_image=docker_services.base_image)
    print(f"training image {TAG} ({image_id[:19]}) built in {time.monotonic() - t0:.0f}s")
    yield TAG
    client = docker.from_env()
    try:
        client.images.remove(TAG, noprune=True)  # our tag only: the cached steps stay for later builds
    except docker.errors.APIError:
        pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StackUrls, Path]]:
    require_postgres()
    tmp = tmp_path_factory.mktemp("docker-pool")
    with Stack(tmp / "stack", workers=0, registry=False, deploy=False) as urls:
        yield urls, tmp


def test_docker_pool_runs_a_training_flow_in_the_training_image(
    training_image: str,
    stack: tuple[StackUrls, Path],
    docker_services: DockerServices,  # noqa: F811
) -> None:
    urls, tmp = stack
    env = urls.client_env(
        tmp / "client", DOCKER_HOST=docker_services.docker_host, PREFECT_WORKER_QUERY_SECONDS="3"
    )
    setup = subprocess.run(
        [sys.executable, "-m", "deployments.setup", "--prefect-file", "prefect.docker.yaml", "--pool", POOL,
         "--pool-type", "docker", "--image", training_image, "--network-mode", "host"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stderr[-3000:]
    result = json.loads(setup.stdout.strip().splitlines()[-1])
    assert result["pool"] == POOL and [d["name"] for d in result["deployments"]] == [
        "loan-risk-training/retrain"
    ]
    auth = basic(urls.prefect_auth_string)
    pool = httpx.get(f"{urls.prefect_api_url}/work_pools/{POOL}", timeout=10, auth=auth).json()
    props = pool["base_job_template"]["variables"]["properties"]
    assert pool["type"] == "docker" and props["image"]["default"] == training_image
    # the settings reach the container as environment, from the pool (not from any prefect file); the secrets
    # as references to Prefect Secret blocks, resolved by the worker
    pool_env = props["env"]["default"]
    assert pool_env["MLFLOW_TRACKING_URI"] == urls.mlflow_tracking_uri
    assert pool_env["LOANRISK_DEPLOY_MODE"] == "required"
    assert (
        pool_env["LOANRISK_PSEUDONYM_KEY"]
        == "{{ prefect.blocks.secret.loan-risk-env-loanrisk-pseudonym-key }}"
    )
    assert pool_env["MLFLOW_TRACKING_PASSWORD"].startswith("{{ prefect.blocks.secret.")
    assert urls.mlflow_tracking_uri not in (REPO_ROOT / "prefect.docker.yaml").read_text()
    secrets = _secrets(urls)
    inspect = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "inspect", POOL],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr[-2000:]
    _no_secret_in("prefect work-pool inspect", inspect.stdout, secrets)

    worker_home = tmp / "docker-worker"
    worker_home.mkdir()
    worker = _spawn(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "docker", "--name", "docker-1"],
        worker_home, env, worker_home / "worker.log",
    )  # fmt: skip
    try:
        params = [arg for k, v in SMALL_RUN.items() for arg in ("--param", f"{k}={json.dumps(v)}")]
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "loan-risk-training/retrain", *params, "--watch"],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        context = (
            f"{run.stdout[-3000:]}\n{run.stderr[-2000:]}\nworker:\n{_tail(worker_home / 'worker.log', 80)}"
        )
        assert run.returncode == 0, context
    finally:
        _stop_group(worker, "docker worker")

    runs = httpx.post(f"{urls.prefect_api_url}/flow_runs/filter", json={}, timeout=10, auth=auth).json()
    deployments = httpx.post(f"{urls.prefect_api_url}/deployments/filter", json={}, timeout=10, auth=auth)
    _no_secret_in("the API's flow runs", json.dumps(runs), secrets)
    _no_secret_in("the API's deployments", deployments.text, secrets)
    (flow_run,) = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert flow_run["work_pool_name"] == POOL
    # the docker worker records the container it ran the flow in
    assert flow_run["infrastructure_pid"], flow_run
    log = _tail(worker_home / "worker.log", 400)
    assert "container" in log.lower(), log
    # the run tracked into the stack's MLflow server and registered its model there
    versions = httpx.get(
        f"{urls.mlflow_tracking_uri}/api/2.0/mlflow/model-versions/search",
        params={"filter": "name='loan-risk'"},
        timeout=30,
        auth=(urls.mlflow_username or "", urls.mlflow_password or ""),
    ).json()["model_versions"]
    assert versions, "no model version registered from the container"
