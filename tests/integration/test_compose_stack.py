"""The Compose stack as shipped (``deployments/stack/compose.yaml``), run for real on the engine with
``docker-compose``: the README's commands (``compose init``, ``compose build`` on the local base image,
``docker-compose up -d``), then the whole loop through the stack's public addresses only.

``prefect deployment run`` of the training deployment → promoted → the worker's deploy builds the service image,
smoke-tests it and pushes it to the stack's registry → the service container, started from the pushed digest,
answers ``/predict`` with the champion's version. A second promoted release, then the rollback deployment → the
service (from ``latest``) answers with the previous version. Every secret ``init`` made is then looked for in the
Prefect API, the pool, the flow-run logs, MLflow's params, tags and artifacts, the service image, the containers'
environment and their logs. ``docker-compose down -v`` removes it all.

The promotion policy is lowered (through ``.env``, as an operator would) so the small sample always passes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from deployments.stack.compose import SECRETS
from tests.infra.docker_fixtures import DockerServices, docker_services, in_ci  # noqa: F401 - fixture
from tests.integration.prefect_fixtures import free_port
from tests.serving.synthetic import local_records, strip_label

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "deployments" / "stack" / "compose.yaml"
RUN = {"source": "sample", "scale": 0.02, "n_trials": 2, "deploy": True}
RUN_TIMEOUT_S = 1200
SERVICES = ("postgres", "prefect-server", "mlflow", "registry", "worker")

pytestmark = [pytest.mark.docker, pytest.mark.stack, pytest.mark.slow, pytest.mark.nightly]


@dataclass
class Compose:
    project: str
    folder: Path
    env: dict[str, str]  # the shell docker-compose and the clients run in
    ports: dict[str, int]
    tag: str
    secrets: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 900, extra: dict[str, str] | None = None) -> str:
        cmd = ["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file",
               str(self.folder / ".env"), *args]  # fmt: skip
        proc = subprocess.run(
            cmd, env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['PREFECT_PORT']}/api"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW_PORT']}"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.ports['REGISTRY_PORT']}"

    def prefect_auth(self) -> tuple[str, str]:
        user, _, password = self.secrets["prefect-auth-string"].partition(":")
        return user, password

    def pipeline(self) -> tuple[str, str]:
        return "loan-risk-pipeline", self.secrets["mlflow-pipeline-password"]

    def registry_auth(self) -> dict[str, str]:
        return {"username": "loanrisk", "password": self.secrets["registry-password"]}

    def client_env(self) -> dict[str, str]:
        home = self.folder / "client"
        home.mkdir(exist_ok=True)
        return {
            **self.env,
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": self.secrets["prefect-auth-string"],
            "PREFECT_HOME": str(home / "prefect"),
            "LOANRISK_STATE_DIR": str(home / "state"),
        }

    def containers(self) -> list[Any]:
        client = docker.from_env(environment=self.env)
        return client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={self.project}"}
        )


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO_ROOT)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _wait_for_worker(stack: Compose, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.post(
                f"{stack.prefect_api}/work_pools/loan-risk-pool/workers/filter",
                json={}, auth=stack.prefect_auth(), timeout=10,
            )  # fmt: skip
            last = answer.text[:300]
            if answer.status_code == 200 and any(w["status"] == "ONLINE" for w in answer.json()):
                return
        time.sleep(3)
    logs = stack.compose("logs", "--tail", "60")
    pytest.fail(f"no worker online within {timeout}s ({last})\n{logs[-6000:]}")


@pytest.fixture(scope="module")
def stack(docker_services: DockerServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:  # noqa: F811
    import shutil

    if shutil.which("docker-compose") is None:
        if in_ci():
            pytest.fail("docker-compose is missing (bash tests/infra/services.sh install installs it)")
        pytest.skip("docker-compose is missing")
    folder = tmp_path_factory.mktemp("compose")
    tag = f"it-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("POSTGRES_PORT", "PREFECT_PORT", "MLFLOW_PORT", "REGISTRY_PORT", "SERVICE_PORT")}  # fmt: skip
    socket_path = docker_services.docker_host.removeprefix("unix://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOANRISK_", "PREFECT_", "MLFLOW_"))}
    env["DOCKER_HOST"] = docker_services.docker_host
    env["DOCKER_CONFIG"] = str(folder / "docker-config")  # the test's own `docker login`s
    settings = {
        **{k: str(v) for k, v in ports.items()},
        "LOANRISK_STACK_SECRETS": str(folder / "secrets"),
        "LOANRISK_TRAINING_IMAGE": f"loan-risk-training:{tag}",
        "LOANRISK_POSTGRES_IMAGE": f"loan-risk-postgres:{tag}",
        "LOANRISK_REGISTRY_IMAGE": f"loan-risk-registry:{tag}",
        "LOANRISK_BASE_IMAGE": docker_services.base_image,
        "DOCKER_SOCKET": socket_path,
        "WORKERS": "1",
        "LOANRISK_MIN_PRECISION": "0.5",
        "LOANRISK_MIN_RECALL": "0.5",
        "LOANRISK_MIN_F1_GAIN": "-1",
    }
    sets = [arg for k, v in settings.items() for arg in ("--set", f"{k}={v}")]
    _run([sys.executable, "-m", "deployments.stack.compose", "init", "--dir", str(folder), *sets], env, 120)
    base = ["--base-image", docker_services.base_image, "--tag", tag]
    t0 = time.monotonic()
    _run([sys.executable, "-m", "deployments.stack.compose", "build", *base], env, 1800)
    print(f"stack images built in {time.monotonic() - t0:.0f}s")
    stack = Compose(f"loanrisk-it-{tag}", folder, env, ports, tag)
    stack.secrets = {name: (folder / "secrets" / name).read_text().strip() for name in SECRETS}
    try:
        t0 = time.monotonic()
        stack.compose("up", "-d")
        _wait_for_worker(stack)
        print(f"stack up in {time.monotonic() - t0:.0f}s")
        yield stack
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            stack.compose(
                "--profile", "serving", "down", "-v", "--remove-orphans", "--rmi", "local", timeout=300
            )
        client = docker.from_env(environment=env)
        for image in client.images.list():
            for ref in image.tags:
                if ref.endswith(f":{tag}") or ref.startswith(stack.registry):
                    with contextlib.suppress(docker.errors.APIError):
                        # Untag only (noprune): pruning the untagged parents removes the classic builder's
                        # cached steps under a later build of the same Dockerfile, which then fails with
                        # "unknown parent image ID" (the docker-pool test's training image build did).
                        client.images.remove(ref, force=True, noprune=True)


def _deployment_run(stack: Compose, name: str, params: dict[str, Any]) -> str:
    args = [arg for k, v in params.items() for arg in ("--param", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "prefect", "deployment", "run", name, *args, "--watch"]
    proc = subprocess.run(
        cmd, env=stack.client_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=stack.folder
    )
    if proc.returncode != 0:
        logs = stack.compose("logs", "--tail", "120", "worker")
        pytest.fail(f"{name}: {proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\nworker:\n{logs[-8000:]}")
    return proc.stdout


def _deploy_runs(stack: Compose) -> dict[str, dict[str, Any]]:
    """The deploy deployment's flow runs by id (the training flow schedules one when it promotes)."""
    auth = stack.prefect_auth()
    deployment = httpx.get(
        f"{stack.prefect_api}/deployments/name/loan-risk-deploy/deploy", auth=auth, timeout=30
    )
    deployment.raise_for_status()
    runs = httpx.post(
        f"{stack.prefect_api}/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment.json()["id"]]}}}, auth=auth, timeout=30,
    )  # fmt: skip
    runs.raise_for_status()
    return {r["id"]: r for r in runs.json()}


def _train_and_ship(stack: Compose) -> str:
    """One training run through its deployment, then the deploy run it scheduled, to its end (Completed)."""
    before = set(_deploy_runs(stack))
    out = _deployment_run(stack, "loan-risk-training/retrain", RUN)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        new = [r for i, r in _deploy_runs(stack).items() if i not in before]
        assert len(new) <= 1, new
        if new and new[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            if new[0]["state_type"] != "COMPLETED":
                logs = stack.compose("logs", "--tail", "150", "worker")
                pytest.fail(f"the deploy run ended {new[0]['state_type']}:\n{logs[-8000:]}")
            return out
        time.sleep(3)
    pytest.fail("the training run scheduled no deploy that ended in time")


def _mlflow_get(stack: Compose, path: str, **params: Any) -> Any:
    answer = httpx.get(
        f"{stack.mlflow}/api/2.0/mlflow/{path}", params=params, auth=stack.pipeline(), timeout=30
    )
    answer.raise_for_status()
    return answer.json()


def _champion(stack: Compose) -> str:
    model = _mlflow_get(stack, "registered-models/get", name="loan-risk")["registered_model"]
    return {a["alias"]: a["version"] for a in model.get("aliases", [])}["champion"]


def _latest_digest(stack: Compose) -> str:
    from tasks.release.registry_api import tag_digest

    auth = stack.registry_auth()
    digest = tag_digest(stack.registry, "loan-risk", "latest", auth["username"], auth["password"])
    assert digest, "the stack's registry has no loan-risk:latest"
    return digest


def _serve(stack: Compose, ref: str) -> dict[str, Any]:
    """(Re)start the ``service`` container from ``ref`` (``@sha256:…`` or ``:latest``), pulled from the stack's
    registry; what ``/predict`` answers."""
    client = docker.from_env(environment=stack.env)
    image = f"{stack.registry}/loan-risk{ref}"
    client.images.pull(image, auth_config=stack.registry_auth())
    stack.compose(
        "--profile", "serving", "up", "-d", "--no-deps", "--force-recreate", "service",
        extra={"LOANRISK_SERVICE_REF": ref},
    )  # fmt: skip
    url = f"http://127.0.0.1:{stack.ports['SERVICE_PORT']}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"the service from {image} did not answer:\n{stack.compose('logs', 'service')[-3000:]}"
            )
        time.sleep(1)
    record = strip_label(local_records(1, seed=11)[0])
    answer = httpx.post(f"{url}/predict", json=record, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def _version_of(prediction: dict[str, Any]) -> str:
    return str(prediction.get("model_version") or prediction.get("version"))


@pytest.fixture(scope="module")
def loop(stack: Compose) -> dict[str, Any]:
    """The whole loop; what each step left, for the tests below."""
    seen: dict[str, Any] = {}
    t0 = time.monotonic()
    seen["first_run"] = _train_and_ship(stack)
    seen["first"], seen["first_digest"] = _champion(stack), _latest_digest(stack)
    seen["first_prediction"] = _serve(stack, f"@{seen['first_digest']}")
    seen["second_run"] = _train_and_ship(stack)
    seen["second"], seen["second_digest"] = _champion(stack), _latest_digest(stack)
    seen["second_prediction"] = _serve(stack, f"@{seen['second_digest']}")
    seen["rollback_run"] = _deployment_run(
        stack, "loan-risk-rollback/rollback", {"reason": "compose stack test"}
    )
    seen["after_rollback"], seen["rollback_digest"] = _champion(stack), _latest_digest(stack)
    seen["rollback_prediction"] = _serve(stack, ":latest")
    print(f"loop (two trainings with deploys, one rollback) in {time.monotonic() - t0:.0f}s")
    return seen


def test_every_container_runs_as_uid_10001_and_listens_on_loopback_only(stack: Compose) -> None:
    running = {c.labels["com.docker.compose.service"]: c for c in stack.containers() if c.status == "running"}
    assert set(SERVICES) <= set(running), sorted(running)
    for name, container in running.items():
        uid = container.exec_run(["id", "-u"]).output.decode().strip()
        assert uid == "10001", (name, uid)
        for bindings in (container.attrs["NetworkSettings"]["Ports"] or {}).values():
            assert all(b["HostIp"] == "127.0.0.1" for b in bindings or []), (name, bindings)


def test_a_promoted_model_ships_and_the_service_answers_with_the_champion(loop: dict[str, Any]) -> None:
    assert "Completed" in loop["first_run"]
    assert _version_of(loop["first_prediction"]) == loop["first"]
    assert 0.0 <= loop["first_prediction"]["probability"] <= 1.0
    assert loop["second"] != loop["first"] and loop["second_digest"] != loop["first_digest"]
    assert _version_of(loop["second_prediction"]) == loop["second"]


def test_the_rollback_deployment_restores_the_previous_release(loop: dict[str, Any]) -> None:
    assert loop["after_rollback"] == loop["first"]
    assert loop["rollback_digest"] == loop["first_digest"]
    assert _version_of(loop["rollback_prediction"]) == loop["first"]


def _no_secret_in(place: str, text: str, secrets: dict[str, str]) -> None:
    values = {name: value.partition(":")[2] or value for name, value in secrets.items()}
    leaked = [name for name, value in values.items() if value and value in text]
    assert not leaked, f"{place} holds {', '.join(leaked)}"


def test_no_secret_is_readable_where_readers_look(stack: Compose, loop: dict[str, Any]) -> None:
    secrets, auth = stack.secrets, stack.prefect_auth()
    api = stack.prefect_api
    for what, body in (("deployments", {}), ("flow_runs", {}), ("work_pools", {}), ("logs", {"limit": 200})):
        answer = httpx.post(f"{api}/{what}/filter", json=body, auth=auth, timeout=30)
        assert answer.status_code == 200, answer.text[:300]
        _no_secret_in(f"the Prefect API's {what}", answer.text, secrets)
    inspect = _run(
        [sys.executable, "-m", "prefect", "work-pool", "inspect", "loan-risk-pool"], stack.client_env(), 120
    )
    _no_secret_in("prefect work-pool inspect", inspect, secrets)

    experiments = _mlflow_get(stack, "experiments/search", max_results=100)["experiments"]
    runs = httpx.post(
        f"{stack.mlflow}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [e["experiment_id"] for e in experiments], "max_results": 1000},
        auth=stack.pipeline(), timeout=30,
    )  # fmt: skip
    assert runs.status_code == 200 and runs.json().get("runs"), runs.text[:300]
    _no_secret_in("MLflow's runs (params, tags, metrics)", runs.text, secrets)
    versions = _mlflow_get(stack, "model-versions/search", filter="name='loan-risk'")
    _no_secret_in("MLflow's model versions", json.dumps(versions), secrets)
    artifacts = stack.folder / "artifacts"
    for run in runs.json()["runs"][:3]:
        _run(
            [sys.executable, "-m", "mlflow", "artifacts", "download", "--run-id", run["info"]["run_id"],
             "--dst-path", str(artifacts / run["info"]["run_id"])],
            {**stack.client_env(), "MLFLOW_TRACKING_URI": stack.mlflow,
             "MLFLOW_TRACKING_USERNAME": stack.pipeline()[0], "MLFLOW_TRACKING_PASSWORD": stack.pipeline()[1]},
            300,
        )  # fmt: skip
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert files, "no artifact downloaded"
    for path in files:
        _no_secret_in(
            f"the artifact {path.relative_to(artifacts)}", path.read_bytes().decode(errors="replace"), secrets
        )

    client = docker.from_env(environment=stack.env)
    image = client.images.get(f"{stack.registry}/loan-risk@{loop['first_digest']}")
    tar = stack.folder / "service-image.tar"
    with open(tar, "wb") as fh:
        for chunk in image.save(named=False):
            fh.write(chunk)
    with tarfile.open(tar) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for inner in layer.getmembers():
                        if inner.isfile() and inner.size < 50_000_000:
                            content = layer.extractfile(inner).read()  # type: ignore[union-attr]
                            _no_secret_in(
                                f"the service image's {inner.name}", content.decode(errors="replace"), secrets
                            )
            else:
                _no_secret_in(f"the service image's {member.name}", data.decode(errors="replace"), secrets)
    for container in stack.containers():
        name = container.labels["com.docker.compose.service"]
        _no_secret_in(f"the {name} container's configuration", json.dumps(container.attrs), secrets)
    _no_secret_in("the stack's logs", stack.compose("--profile", "serving", "logs", "--no-color"), secrets)


def test_down_removes_everything(stack: Compose, loop: dict[str, Any]) -> None:
    stack.compose("--profile", "serving", "down", "-v", "--remove-orphans")
    assert stack.containers() == []
    client = docker.from_env(environment=stack.env)
    volumes = client.volumes.list(filters={"label": f"com.docker.compose.project={stack.project}"})
    assert volumes == []
    smoke = client.containers.list(all=True, filters={"label": "loan-risk.role=smoke"})
    assert not [c for c in smoke if stack.registry in (c.attrs.get("Config") or {}).get("Image", "")]
