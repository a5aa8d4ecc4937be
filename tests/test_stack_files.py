"""The stack's files and process bookkeeping, without servers: the Compose file, the docker pool's job template,
and ``down``'s rule (everything the stack started, by marker, even a process that left its group; nothing else)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments import setup as deploy_setup
from deployments.stack import procs
from tests.infra.docker_fixtures import in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = REPO_ROOT / "deployments" / "stack" / "compose.yaml"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REGISTRY_PASSWORD": "reg-secret",
    "LOANRISK_PSEUDONYM_KEY": secrets.token_hex(32),  # made per run: a literal key would be published
}


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if not binary:
        if in_ci():
            pytest.fail("docker-compose missing in CI (tests/infra/services.sh install)", pytrace=False)
        pytest.skip("docker-compose is not installed")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid_and_describes_the_stack() -> None:
    proc = _compose_config(SECRETS)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "registry", "setup", "worker"}
    prefect_db = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    mlflow = services["mlflow"]["command"]
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    assert (
        "--serve-artifacts" in mlflow and mlflow[mlflow.index("--artifacts-destination") + 1] == "/artifacts"
    )
    assert services["registry"]["environment"]["REGISTRY_AUTH"] == "htpasswd"
    worker = services["worker"]
    assert worker["command"][:3] == ["prefect", "worker", "start"] and worker["deploy"]["replicas"] == 2
    assert worker["environment"]["LOANRISK_OPTUNA_STORAGE"].startswith("postgresql+psycopg2://")
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert {"pgdata", "mlflow-artifacts", "registry-data"} <= set(config["volumes"])


def test_compose_file_holds_no_secret_and_refuses_to_start_without_them() -> None:
    text = COMPOSE.read_text()
    assert not any(secret in text for secret in SECRETS.values())
    proc = _compose_config({})
    assert proc.returncode != 0 and "POSTGRES_PASSWORD" in proc.stderr


def test_docker_pool_template_carries_image_network_and_only_the_set_settings() -> None:
    spec = deploy_setup.PoolSpec(
        "docker", "loan-risk-training:1", "host", {"MLFLOW_TRACKING_URI": "http://m:5000"}
    )
    props = spec.template()["variables"]["properties"]
    assert props["image"]["default"] == "loan-risk-training:1"
    assert props["network_mode"]["default"] == "host"
    # required: a flow run in a container never ends Completed with a silent "deploy skipped"
    assert props["env"]["default"] == {
        "LOANRISK_DEPLOY_MODE": "required",
        "MLFLOW_TRACKING_URI": "http://m:5000",
    }
    assert props["auto_remove"]["default"] is True
    with pytest.raises(deploy_setup.SetupError, match="--image"):
        deploy_setup.PoolSpec("docker").template()


def test_every_secret_the_pool_passes_is_held_by_reference() -> None:
    """Each variable of PASS_ENV that holds a secret goes to the pool as a Secret block reference (the real
    pool is inspected for the values in tests/integration/test_docker_pool.py)."""
    secret = {n for n in deploy_setup.PASS_ENV if deploy_setup.is_secret(n)}
    assert secret == {
        "MLFLOW_TRACKING_PASSWORD", "LOANRISK_PSEUDONYM_KEY", "LOANRISK_REGISTRY_PASSWORD", "LOANRISK_HF_TOKEN",
        "LOANRISK_GITHUB_TOKEN", "PREFECT_API_AUTH_STRING",
    }  # fmt: skip
    assert deploy_setup.secret_block_name("LOANRISK_PSEUDONYM_KEY") == "loan-risk-env-loanrisk-pseudonym-key"
    assert deploy_setup.by_reference({"MLFLOW_TRACKING_URI": "http://m:5000"}) == {
        "MLFLOW_TRACKING_URI": "http://m:5000"
    }


def test_docker_variant_keeps_secrets_out_and_runs_the_code_in_the_image() -> None:
    data = deploy_setup.load_prefect_file(REPO_ROOT / "prefect.docker.yaml")
    assert {s.pool for s in deploy_setup.deployment_specs(data)} == {"loan-risk-docker"}
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/app"}}]
    for dep in data["deployments"]:
        assert not dep["work_pool"].get(
            "job_variables"
        )  # image and env come from the pool (deployments.setup)


def _spawn_marked(stack_id: str, script: str, log: Path) -> int:
    env = {**os.environ, procs.MARKER: stack_id}
    return procs.spawn([sys.executable, "-c", script], env, log, Path.cwd())


def test_down_stops_what_the_stack_started_even_outside_its_group_and_nothing_else(tmp_path: Path) -> None:
    # The leader starts a child in a session of its own (as MLflow's huey_consumer leaves its parent's group).
    escaped = tmp_path / "escaped.pid"
    leader = _spawn_marked(
        "stack-a",
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        f"open({str(escaped)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n",
        tmp_path / "a.log",
    )
    other = _spawn_marked("stack-b", "import time; time.sleep(300)", tmp_path / "b.log")
    unmarked = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    try:
        procs.wait_until(lambda: escaped.is_file() and escaped.read_text().strip() != "", 30, "escaped child")
        child = int(escaped.read_text())
        assert set(procs.marked("stack-a")) == {leader, child}

        assert procs.stop(unmarked.pid, "stack-a") is False  # not ours: left alone
        assert procs.stop(leader, "stack-a") is True
        assert procs.alive(child)  # it left the group: the group signal missed it ...
        assert procs.sweep("stack-a") == [child]  # ... the marker finds it
        assert not procs.alive(leader) and not procs.alive(child)
        assert (
            procs.alive(other) and unmarked.poll() is None
        )  # another stack's process and a stranger live on
    finally:
        procs.sweep("stack-b")
        unmarked.kill()
        unmarked.wait()
