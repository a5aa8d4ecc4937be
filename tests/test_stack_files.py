"""The stack's files and process bookkeeping, without servers: the Compose file, the docker pool's job template,
and ``down``'s rule (everything the stack started, by marker, even a process that left its group; nothing else)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments import setup as deploy_setup
from deployments.stack import compose, procs
from tests.infra.docker_fixtures import in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE = REPO_ROOT / "deployments" / "stack" / "compose.yaml"


def _init(folder: Path, *sets: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [a for kv in sets for a in ("--set", kv)]
    return subprocess.run(
        [sys.executable, "-m", "deployments.stack.compose", "init", "--dir", str(folder), *args],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _compose_config(folder: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if not binary:
        if in_ci():
            pytest.fail("docker-compose missing in CI (tests/infra/services.sh install)", pytrace=False)
        pytest.skip("docker-compose is not installed")
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "--env-file", str(folder / ".env"), "--profile", "serving", "config"],
        env={k: v for k, v in os.environ.items() if not k.startswith("LOANRISK_")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    proc = _init(tmp_path, f"LOANRISK_STACK_SECRETS={tmp_path / 'secrets'}", "MLFLOW_PORT=15000")
    assert proc.returncode == 0, proc.stderr
    return tmp_path


def test_init_makes_strong_secrets_once_and_keeps_them_out_of_env(initialised: Path) -> None:
    folder = initialised / "secrets"
    assert folder.stat().st_mode & 0o777 == 0o700
    values = {p.name: p.read_text() for p in folder.iterdir()}
    assert set(values) == set(compose.SECRETS)
    assert all(len(v.partition(":")[2] or v) >= 64 for v in values.values()), values.keys()
    assert values["prefect-auth-string"].startswith("loan-risk:")
    env_text = (initialised / ".env").read_text()
    assert "MLFLOW_PORT=15000" in env_text
    assert not any(v in env_text for v in values.values())
    again = _init(initialised)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in folder.iterdir()} == values
    assert (initialised / ".env").read_text() == env_text


def test_init_refuses_the_placeholder_pseudonym_key_and_a_secret_in_env(tmp_path: Path) -> None:
    from serving.privacy import PUBLISHED_KEYS

    proc = _init(tmp_path / "a", env={"LOANRISK_PSEUDONYM_KEY": sorted(PUBLISHED_KEYS)[0]})
    assert proc.returncode != 0 and "token_hex" in proc.stderr, proc.stderr[-500:]
    proc = _init(tmp_path / "b", "REGISTRY_PASSWORD=hunter2hunter2")
    assert proc.returncode != 0 and "secrets go in files" in proc.stderr, proc.stderr[-500:]


def test_compose_file_is_valid_and_describes_the_stack(initialised: Path) -> None:
    proc = _compose_config(initialised)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "registry", "setup", "worker", "service"}
    # secrets are files mounted where the process reads them; no password in any URL or environment
    for name, service in services.items():
        env = service.get("environment") or {}
        assert not any(deploy_setup.is_secret(k) or "PASSWORD" in k for k in env), (name, sorted(env))
        assert all("://postgres:" not in str(v) for v in env.values()), name
        for port in service.get("ports") or []:
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
    prefect_db = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db == "postgresql+asyncpg://postgres@postgres:5432/prefect"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--app-name basic-auth" in mlflow and "--allowed-hosts 127.0.0.1:15000," in mlflow
    assert "*" not in mlflow and "0:0" not in str(services["mlflow"].get("user"))
    worker = services["worker"]
    assert worker["network_mode"] == "host" and worker["environment"]["LOANRISK_DEPLOY_MODE"] == "required"
    assert worker["environment"]["LOANRISK_IMAGE_REGISTRY"] == "127.0.0.1:5001"
    assert {s["target"] for s in worker["secrets"]} == {
        "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "LOANRISK_REGISTRY_PASSWORD",
        "LOANRISK_PSEUDONYM_KEY",
    }  # fmt: skip
    assert all(Path(s["file"]).parent == initialised / "secrets" for s in config["secrets"].values())
    assert {"pgdata", "mlflow-artifacts", "registry-data"} <= set(config["volumes"])


def test_secret_env_puts_each_secret_file_in_the_environment_and_the_shell_wins(tmp_path: Path) -> None:
    (tmp_path / "PGPASSWORD").write_text("from-file\n")
    (tmp_path / "MLFLOW_TRACKING_PASSWORD").write_text("file-value")
    (tmp_path / "not-a-name").write_text("ignored")
    script = "import os; print(os.environ['PGPASSWORD'], os.environ['MLFLOW_TRACKING_PASSWORD'], 'not-a-name' in os.environ)"
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.stack.secret_env", sys.executable, "-c", script],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "LOANRISK_SECRETS_FROM": str(tmp_path), "MLFLOW_TRACKING_PASSWORD": "from-shell"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["from-file", "from-shell", "False"]


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
