"""Tuning in ``pool`` mode (issue 12) against real servers: PostgreSQL (Debian's ``postgresql``, a throwaway
cluster of this module), ``prefect server`` on it, ``mlflow server`` on it with proxied artifacts, the deployments
applied by ``python -m deployments.setup``, and two process workers (one flow run each). The tune stage runs in
this process; its trials run in flow runs of ``loan-risk-training/tune-worker`` on the two workers.

- trials from both workers in one study (asserted from the study's ``worker_id`` user attributes) and each trial a
  nested run of the training run on the tracking server;
- one tune worker's flow-run process SIGKILLed during a trial: the heartbeat fails that trial, Optuna's retry
  callback queues it again, the other worker re-runs it, and the study ends with the configured count.

The servers are shared by the module; trials are tiny (scale 0.02, at most 300 iterations). Without PostgreSQL the
tests skip on a developer machine and fail under ``CI``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from tests.infra.docker_fixtures import in_ci
from tests.integration.prefect_fixtures import (
    REPO_ROOT,
    PrefectServer,
    _spawn,
    _stop_group,
    free_port,
    prefect_server,
    process_worker,
)
from tests.tune_faults import assert_rerun_elsewhere, kill_during_a_trial

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow, pytest.mark.nightly, pytest.mark.timeout(1200)]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
POOL = "loan-risk-pool"
WORKER_NAMES = ("worker-a", "worker-b")
TINY = {
    "LOANRISK_MAX_ITERATIONS": "300",
    "LOANRISK_EARLY_STOPPING_ROUNDS": "300",
    "LOANRISK_THREAD_COUNT": "1",
}
BEAT = {"LOANRISK_TUNE_HEARTBEAT_SECONDS": "1", "LOANRISK_TUNE_GRACE_SECONDS": "5"}


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"tune pool services unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"tune pool services unavailable: {reason}")


@contextlib.contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster on a free port (run as the ``postgres`` user); yields its base URL."""
    if not (PG_BIN / "initdb").exists() or shutil.which("su") is None:
        _missing(f"no PostgreSQL 15 in {PG_BIN} (apt-get install -y postgresql)")
    folder.mkdir(parents=True)
    shutil.chown(folder, "postgres")
    port = free_port()

    def as_postgres(command: str) -> None:
        subprocess.run(["su", "postgres", "-c", command], check=True, capture_output=True, timeout=120)

    as_postgres(f"{PG_BIN}/initdb -D {folder}/data -U postgres -A trust")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    as_postgres(f"{PG_BIN}/pg_ctl -D {folder}/data -o '{options}' -l {folder}/log -w start")
    try:
        for name in ("prefect", "mlflow", "optuna"):
            as_postgres(f"{PG_BIN}/psql -h 127.0.0.1 -p {port} -U postgres -c 'create database {name}'")
        yield f"127.0.0.1:{port}"
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl -D {folder}/data -m fast stop")


@contextlib.contextmanager
def mlflow_server(folder: Path, backend: str) -> Iterator[str]:
    """``mlflow server`` on PostgreSQL with proxied artifacts on its own volume, job runners off (they would
    start ~8 huey processes of ~250 MB); yields its URL."""
    folder.mkdir(parents=True)
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = _spawn(cmd, folder, env, folder / "mlflow.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {proc.returncode}: {(folder / 'mlflow.log').read_text()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy: {(folder / 'mlflow.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(proc, "mlflow server")


@dataclass
class Stack:
    server: PrefectServer
    tracking_uri: str
    optuna_storage: str
    state_dir: Path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="loanrisk-tunepool-"))
    os.chmod(root, 0o755)  # the postgres user reaches its cluster folder inside
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres(root / "pg"))
        server = stack.enter_context(
            prefect_server(
                root / "prefect",
                extra_env={
                    "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{pg}/prefect"
                },
            )
        )
        tracking = stack.enter_context(
            mlflow_server(root / "mlflow", f"postgresql+psycopg2://postgres@{pg}/mlflow")
        )
        storage = f"postgresql+psycopg2://postgres@{pg}/optuna"
        env = server.client_env(root / "setup", {"LOANRISK_STATE_DIR": str(root / "setup-state")})
        setup = subprocess.run(
            [sys.executable, "-m", "deployments.setup"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert setup.returncode == 0, setup.stderr[-3000:]
        for name in WORKER_NAMES:
            worker_env = {
                "LOANRISK_TUNE_WORKER_NAME": name, "LOANRISK_OPTUNA_STORAGE": storage,
                "MLFLOW_TRACKING_URI": tracking, **TINY, **BEAT,
            }  # fmt: skip
            stack.enter_context(
                process_worker(
                    server, POOL, root / name, state_dir=root / f"{name}-state", extra_env=worker_env, limit=1
                )
            )
        yield Stack(server, tracking, storage, root / "state")


def settings_for(stack: Stack, n_trials: int) -> Any:
    from tasks.settings import Settings

    return Settings(
        state_dir=stack.state_dir, optuna_storage=stack.optuna_storage, mlflow_tracking_uri=stack.tracking_uri,
        n_trials=n_trials, tune_workers=2, tune_mode="pool", max_iterations=300, early_stopping_rounds=300,
        thread_count=1, tune_timeout_seconds=900, tune_heartbeat_seconds=1, tune_grace_seconds=5,
    )  # fmt: skip


@contextlib.contextmanager
def api(stack: Stack) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.server.api_url}):
        yield


def study_trials(stack: Stack, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=stack.optuna_storage).trials


def test_pool_mode_spreads_one_study_over_both_workers(stack: Stack, sample_split) -> None:
    from tasks.model import tune_study
    from tasks.model.tune import tune
    from tasks.registry import tracking

    s = settings_for(stack, n_trials=8)
    with api(stack), tracking.run(s, "pool-spread") as run_id:
        summary = tune(s, sample_split, "pool-spread", run_id)
    trials = [t for t in study_trials(stack, "pool-spread") if tune_study.SLOT in t.user_attrs]
    finished = [t for t in trials if t.state in tune_study.FINISHED]
    assert len(finished) == 8 and summary["n_complete"] + summary["n_pruned"] == 8
    names = {t.user_attrs[tune_study.WORKER].split(":")[0] for t in finished}
    assert names == set(WORKER_NAMES), [t.user_attrs for t in finished]
    children = tracking.client(s).search_runs(
        [tracking.experiment_id(s)], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert {c.data.tags["optuna.worker"].split(":")[0] for c in children} == set(WORKER_NAMES)
    assert len(children) == 8
    data = {a.path for a in tracking.client(s).list_artifacts(run_id, "tuning/data")}
    assert data == {"tuning/data/train.parquet", "tuning/data/valid.parquet"}


@pytest.mark.faults
def test_a_tune_worker_killed_during_a_trial_loses_only_that_trial(stack: Stack, sample_split) -> None:
    from tasks.model import tune_study
    from tasks.model.tune import tune
    from tasks.registry import tracking

    s = settings_for(stack, n_trials=6)

    def run() -> dict[str, Any]:
        with api(stack), tracking.run(s, "pool-killed") as run_id:  # pool workers read its data artifact
            return tune(s, sample_split, "pool-killed", run_id)

    victim, outcome = kill_during_a_trial(
        run, tune_study.storage_for(s), "pool-killed", s.tuning.tune_timeout_seconds
    )
    trials = study_trials(stack, "pool-killed")
    assert_rerun_elsewhere(victim, outcome, trials)
    assert (
        retried_on(trials, victim) != victim.user_attrs[tune_study.WORKER].split(":")[0]
    )  # the other worker
    assert sum(t.state in tune_study.FINISHED for t in trials if tune_study.SLOT in t.user_attrs) == 6


def retried_on(trials: list[optuna.trial.FrozenTrial], victim: optuna.trial.FrozenTrial) -> str:
    from tasks.model import tune_study

    # a slot's retry may be queued twice (tune_study.reconcile); the second copy fails as surplus and ran nowhere
    reruns = [t for t in trials if tune_study.retried_from(t) == victim.number]
    (rerun,) = [t for t in reruns if tune_study.SURPLUS not in t.user_attrs]
    return rerun.user_attrs[tune_study.WORKER].split(":")[0]
