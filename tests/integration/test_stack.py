"""The shared stack against real servers: PostgreSQL (the OS package), ``prefect server`` and ``mlflow server`` on it
(proxied artifacts), the registry and two process workers, all started by ``deployments.stack`` for this module.

One small training run (sample at scale 0.02, two trials, no deploy) goes through ``prefect deployment run``;
its model must be in the server's registry, its bundle downloadable through the server with ``mlflow artifacts
download``, its study in PostgreSQL, and the service started from that bundle must answer a prediction.
Without PostgreSQL the module skips on a developer machine and fails under ``CI``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.stack import Stack, StackUrls, procs
from deployments.stack.launcher import basic
from tests.integration.prefect_fixtures import require_postgres
from tests.serving.conftest import LiveServer, live_server  # noqa: F401 - the service fixture, on bundle_dir
from tests.serving.synthetic import local_records, strip_label

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING = "loan-risk-training/retrain"
SMALL_RUN = {"source": "sample", "scale": 0.02, "n_trials": 2, "deploy": False}
RUN_TIMEOUT_S = 900

pytestmark = [pytest.mark.stack, pytest.mark.prefect_server, pytest.mark.slow]


@dataclass
class Running:
    stack: Stack
    urls: StackUrls
    up_s: float
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A client's environment: the stack's URLs, its own Prefect home and state folder."""
        return self.urls.client_env(self.tmp / "client", **extra)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    require_postgres()
    tmp = tmp_path_factory.mktemp("stack")
    t0 = time.monotonic()
    stack = Stack(tmp / "stack", workers=2)
    with stack as urls:
        yield Running(stack, urls, time.monotonic() - t0, tmp)


def _api(urls: StackUrls, method: str, path: str, **kwargs: Any) -> Any:
    response = httpx.request(
        method, f"{urls.prefect_api_url}/{path}", timeout=30, auth=basic(urls.prefect_auth_string), **kwargs
    )
    response.raise_for_status()
    return response.json()


def _pipeline(urls: StackUrls) -> tuple[str, str]:
    return (urls.mlflow_username or "", urls.mlflow_password or "")


def _mlflow(urls: StackUrls, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{urls.mlflow_tracking_uri}/api/2.0/mlflow/{path}", params=params, timeout=30, auth=_pipeline(urls)
    )
    response.raise_for_status()
    return response.json()


def _tables(urls: StackUrls, database: str) -> set[str]:
    import psycopg2

    conn = psycopg2.connect(
        urls.postgres_url.replace("postgresql+psycopg2", "postgresql").rsplit("/", 1)[0] + f"/{database}"
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def test_status_reports_every_service_healthy_on_postgresql(running: Running) -> None:
    rows = {r.name: r for r in running.stack.status()}
    assert set(rows) == {"postgres", "prefect", "mlflow", "registry", "worker-1", "worker-2"}
    assert all(r.healthy and r.pid for r in rows.values()), rows
    assert rows["prefect"].url == running.urls.prefect_api_url
    # both servers keep their state in the stack's PostgreSQL, not in SQLite files
    assert {"flow_run", "deployment", "work_pool"} <= _tables(running.urls, "prefect")
    assert {"experiments", "runs", "registered_models"} <= _tables(running.urls, "mlflow")
    workers = _api(running.urls, "POST", f"work_pools/{running.urls.pool}/workers/filter", json={})
    assert {w["name"] for w in workers if w["status"] == "ONLINE"} >= set(running.stack.worker_names())


def test_up_again_keeps_what_runs(running: Running) -> None:
    before = {r.name: r.pid for r in running.stack.status()}
    t0 = time.monotonic()
    again = running.stack.up()
    assert again == running.urls
    assert {r.name: r.pid for r in running.stack.status()} == before
    assert time.monotonic() - t0 < 30


@pytest.fixture(scope="module")
def trained(running: Running) -> dict[str, Any]:
    """One small training run through ``prefect deployment run --watch``; the run and model version it made."""
    params = [arg for k, v in SMALL_RUN.items() for arg in ("--param", f"{k}={json.dumps(v)}")]
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", TRAINING, *params, "--watch"],
        cwd=running.tmp,
        env=running.env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    logs = "\n".join(
        f"{p.name}:\n{procs.tail(p, 40)}" for p in sorted((running.stack.dir / "logs").glob("worker-*"))
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    versions = _mlflow(running.urls, "model-versions/search", filter="name='loan-risk'")["model_versions"]
    assert versions, "no model version in the server's registry"
    return {"stdout": proc.stdout, "version": max(versions, key=lambda v: int(v["version"]))}


def test_training_run_completes_through_the_deployment(running: Running, trained: dict[str, Any]) -> None:
    assert "Completed" in trained["stdout"]
    runs = _api(
        running.urls,
        "POST",
        "flow_runs/filter",
        json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
    )
    (run,) = [r for r in runs if r["parameters"].get("scale") == 0.02]
    assert run["parameters"]["n_trials"] == 2 and run["parameters"]["deploy"] is False
    assert run["work_queue_name"] == "default"


def test_model_is_registered_with_its_artifacts_on_the_server(
    running: Running, trained: dict[str, Any]
) -> None:
    version = trained["version"]
    run = _mlflow(running.urls, "runs/get", run_id=version["run_id"])["run"]
    # proxied artifact storage: clients upload through the server, which keeps them on its own volume
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), run["info"]["artifact_uri"]
    stored = list((running.stack.dir / "mlflow-artifacts").rglob("bundle/*"))
    assert stored, "the bundle is not on the server's artifact volume"
    # one nested run per trial under the training run
    response = httpx.post(
        f"{running.urls.mlflow_tracking_uri}/api/2.0/mlflow/runs/search",
        json={
            "experiment_ids": [run["info"]["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{version['run_id']}'",
        },
        timeout=30,
        auth=_pipeline(running.urls),
    )
    response.raise_for_status()
    assert len(response.json().get("runs", [])) >= SMALL_RUN["n_trials"], response.json()


@pytest.fixture(scope="module")
def bundle_dir(running: Running, trained: dict[str, Any]) -> Path:
    """The trained version's bundle, downloaded through the server with ``mlflow artifacts download``."""
    dst = running.tmp / "download"
    uri = f"models:/loan-risk/{trained['version']['version']}"
    cli = [sys.executable, "-m", "mlflow", "artifacts", "download"]
    proc = subprocess.run(
        [*cli, "--artifact-uri", uri, "--dst-path", str(dst)],
        env=running.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_bundle_downloads_through_the_server_and_serves(
    trained: dict[str, Any],
    bundle_dir: Path,
    live_server: Callable[..., LiveServer],  # noqa: F811 - the fixture imported above
) -> None:
    assert (bundle_dir / "bundle.json").is_file(), sorted(p.name for p in bundle_dir.iterdir())
    live = live_server(workers=1)
    health = httpx.get(f"{live.url}/health", timeout=10).json()
    assert str(health["model_version"]) == trained["version"]["version"]
    records = [strip_label(r) for r in local_records(3, seed=5)]
    response = httpx.post(f"{live.url}/predict/batch", json={"data": records}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert all(0.0 <= p["probability"] <= 1.0 for p in predictions), predictions


@pytest.mark.parametrize("who", ["anonymous", "reader"])
def test_only_the_pipeline_may_move_the_champion_or_tag_a_version(
    running: Running, trained: dict[str, Any], who: str
) -> None:
    """The tracking server's auth app: anonymous is 401, the reader account 403, and nothing moved."""
    urls, version = running.urls, trained["version"]["version"]
    auth = None if who == "anonymous" else (urls.mlflow_reader_username, urls.mlflow_reader_password)
    api = f"{urls.mlflow_tracking_uri}/api/2.0/mlflow"
    before = httpx.get(f"{api}/registered-models/get", params={"name": "loan-risk"}, auth=_pipeline(urls))
    tags_before = _mlflow(urls, "model-versions/get", name="loan-risk", version=version)["model_version"][
        "tags"
    ]
    writes = [
        ("registered-models/alias", {"name": "loan-risk", "alias": "champion", "version": version}),
        (
            "model-versions/set-tag",
            {"name": "loan-risk", "version": version, "key": "promotion.decision", "value": "forged"},
        ),
    ]
    expected = 401 if who == "anonymous" else 403
    for path, body in writes:
        answer = httpx.post(f"{api}/{path}", json=body, auth=auth, timeout=30)
        assert answer.status_code == expected, (path, answer.status_code, answer.text[:200])
    if who == "reader":  # the reader reads
        read = httpx.get(f"{api}/registered-models/get", params={"name": "loan-risk"}, auth=auth, timeout=30)
        assert read.status_code == 200, read.text[:200]
    after = httpx.get(f"{api}/registered-models/get", params={"name": "loan-risk"}, auth=_pipeline(urls))
    assert after.json()["registered_model"].get("aliases") == before.json()["registered_model"].get("aliases")
    tags = _mlflow(urls, "model-versions/get", name="loan-risk", version=version)["model_version"]["tags"]
    assert tags == tags_before and {"key": "promotion.decision", "value": "forged"} not in tags


def test_the_prefect_api_refuses_a_caller_without_credentials(running: Running) -> None:
    """The Prefect server's API auth string: 401 without it, 401 with a wrong one; health stays open."""
    urls = running.urls
    deployment = f"{urls.prefect_api_url}/deployments/name/{TRAINING}"
    assert httpx.get(deployment, timeout=30).status_code == 401
    assert httpx.get(deployment, timeout=30, auth=("loan-risk", "not-the-password")).status_code == 401
    assert httpx.get(deployment, timeout=30, auth=basic(urls.prefect_auth_string)).status_code == 200
    assert httpx.get(f"{urls.prefect_api_url}/health", timeout=30).status_code == 200


def test_study_lives_in_postgresql(running: Running, trained: dict[str, Any]) -> None:
    import optuna

    summaries = optuna.get_all_study_summaries(storage=running.urls.optuna_storage)
    assert summaries, "no Optuna study in the stack's PostgreSQL"
    (study,) = summaries
    assert study.n_trials == SMALL_RUN["n_trials"]


def test_down_stops_everything_it_started(running: Running) -> None:
    stack_id = json.loads(running.stack.state_file.read_text())["id"]
    ports = json.loads(running.stack.state_file.read_text())["ports"]
    stopped = running.stack.down()
    assert {"postgres", "prefect", "mlflow", "registry", "worker-1", "worker-2"} <= set(stopped)
    assert procs.marked(stack_id) == []
    assert not any(procs.port_open("127.0.0.1", int(p)) for p in ports.values()), ports
    assert not any(r.healthy for r in running.stack.status())
