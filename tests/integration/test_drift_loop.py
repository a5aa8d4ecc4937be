"""The loop on a real Prefect server and process worker: service log → monitor → event → retrain trigger.

One server (its scheduler off, so no scheduled run appears by itself; the trigger and action services on) with
the deployments of prefect.yaml, one process worker on the pool, one champion packaged the training way with its
reference profile. Two populations of applicants, the same one (seed 8) and a shifted one (``tasks.data.sample --drift
applicants``: more ``lead`` applications, higher APR, lower clarity score), are sent over HTTP to the real service
(gunicorn, two workers, the prediction log on under the settings' pseudonym key), a few through ``/predict`` and
the rest through ``/predict/batch``; a graceful stop flushes each log (``tests/monitor_helpers.py``). The logs
the service wrote hold every record, from both endpoints, under pseudonymised ids, and no ``anon_ssn`` value or
raw loan id.

The monitor runs as the ``loan-risk-monitor/daily`` deployment on the worker. Same population: a
``loan-risk.drift.ok`` event and no retrain. Shifted: ``loan-risk.drift.detected`` naming exactly the three
shifted features, read back from the server's events API, and one ``loan-risk-training/retrain`` run created by
the trigger; a second detection inside the cooldown creates none. The retrain run is cancelled once seen.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving.predlog import read_log
from tasks.monitoring import drift as monitor
from tasks.settings import Settings
from tests.integration.prefect_fixtures import (
    REPO_ROOT,
    PrefectServer,
    ProcessWorker,
    prefect_server,
    process_worker,
)
from tests.integration.test_deployments import _run_setup
from tests.monitor_helpers import SINGLES, champion_with_service_logs
from tests.privacy_scan import KnownValues, Scan
from tests.serving.synthetic import records_from_files
from tests.serving.test_predlog_workers import log_bytes

pytestmark = pytest.mark.prefect_server

POOL = "loan-risk-pool"
MONITOR = "loan-risk-monitor/daily"
TRAINING = "loan-risk-training/retrain"
SHIFTED = {"apr", "clearfraudscore", "leadType"}
TRIGGER_WAIT_S = 90.0
QUIET_WAIT_S = 20.0


@dataclass
class Loop:
    server: PrefectServer
    worker: ProcessWorker
    env: dict[str, str]
    logs: dict[str, Path]
    version: str
    settings: Settings
    sources: dict[str, Path]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        with self.server.http() as http:
            response = http.post(path, json=body)
            response.raise_for_status()
            return response.json()

    def drift_events(self) -> list[dict[str, Any]]:
        found = self.post(
            "events/filter", {"filter": {"event": {"prefix": ["loan-risk.drift."]}}, "limit": 50}
        )
        return sorted(found["events"], key=lambda e: e["occurred"])

    def retrain_runs(self) -> list[dict[str, Any]]:
        with self.server.http() as http:
            deployment = http.get(f"deployments/name/{TRAINING}").json()
        return self.post("flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})

    def run_monitor(self, log: str) -> None:
        """The daily deployment on the worker, over the last two hours of ``log``; waits for it to complete."""
        cmd = [sys.executable, "-m", "prefect", "deployment", "run", MONITOR, "--watch"]
        cmd += ["--param", f"log_dir={self.logs[log]}", "--param", "since=2h"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}\n{self.worker.log_tail()}"


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("drift-loop")
    settings, version, logs, sources = champion_with_service_logs(tmp, sample_dir)
    with prefect_server(
        tmp / "server", extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    ) as server:
        state = settings.state_dir
        # the monitor runs join no outcomes here, so they need not share the service's pseudonym key
        env = server.client_env(tmp / "client", {"LOANRISK_STATE_DIR": str(state)})
        _run_setup(env)
        # a retrain run the trigger creates would start on this worker: keep it tiny (it is cancelled anyway)
        tiny = {
            "LOANRISK_SAMPLE_SCALE": "0.01",
            "LOANRISK_N_TRIALS": "1",
            "LOANRISK_DEPLOY_MODE": "off",
        }
        with process_worker(server, POOL, tmp / "worker", state_dir=state, extra_env=tiny) as worker:
            yield Loop(server, worker, env, logs, version, settings, sources)


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout:.0f} s")
        time.sleep(1)


def _cancel(loop: Loop, runs: list[dict[str, Any]]) -> None:
    for run in runs:
        loop.post(
            f"flow_runs/{run['id']}/set_state",
            {"state": {"type": "CANCELLING", "message": "drift loop test: created is enough"}, "force": True},
        )


@pytest.mark.parametrize("name", ["plain", "shifted"])
def test_the_service_wrote_the_logs_without_personal_values(loop: Loop, name: str) -> None:
    read = read_log(loop.logs[name])
    logged = list(read)
    assert (read.torn, read.skipped) == (0, 0)
    sent = records_from_files(loop.sources[name])
    assert len(logged) == len(sent)
    assert {r["model_version"] for r in logged} == {loop.version}
    endpoints = [r["endpoint"] for r in logged]
    assert endpoints.count("/predict") == SINGLES and endpoints.count("/predict/batch") == len(sent) - SINGLES
    # ids are the loan ids under the settings' key, so outcomes can be joined later
    token = loop.settings.pseudonymiser().token
    assert sorted(r["id"] for r in logged) == sorted(token(r["loanId"]) for r in sent)

    scan = Scan(KnownValues.from_source(loop.sources[name]))
    text = log_bytes(loop.logs[name])
    scan.data(str(loop.logs[name]), text)
    assert scan.files == 1 and scan.bytes > 0 and scan.hits == [], scan.summary()
    assert b"anon_ssn" not in text and b"loanId" not in text


def test_the_same_population_emits_ok_and_no_retrain(loop: Loop) -> None:
    loop.run_monitor("plain")
    events = _wait("the drift event", loop.drift_events, 30)
    assert [e["event"] for e in events] == [monitor.EVENT_OK]
    (event,) = events
    assert event["resource"]["prefect.resource.id"] == "loan-risk.model.loan-risk"
    assert event["resource"]["loan-risk.model.version"] == loop.version
    assert event["payload"]["drifted_features"] == [] and event["payload"]["volume"] > 500
    time.sleep(5)
    assert loop.retrain_runs() == []


def test_drift_triggers_one_retrain_per_cooldown(loop: Loop) -> None:
    loop.run_monitor("shifted")

    def detected() -> list[dict[str, Any]]:
        return [e for e in loop.drift_events() if e["event"] == monitor.EVENT_DETECTED]

    (event,) = _wait("loan-risk.drift.detected", detected, 30)
    payload = event["payload"]
    assert set(payload["drifted_features"]) == SHIFTED
    assert all(payload["feature_psi"][name] >= 0.25 for name in SHIFTED)
    assert all(psi < 0.25 for name, psi in payload["feature_psi"].items() if name not in SHIFTED)
    assert event["resource"]["loan-risk.model.version"] == loop.version

    started = time.monotonic()
    runs = _wait("the retrain run the trigger creates", loop.retrain_runs, TRIGGER_WAIT_S)
    fired_in = time.monotonic() - started
    assert len(runs) == 1
    (run,) = runs
    assert run["state_type"] in {"SCHEDULED", "PENDING", "RUNNING"}
    assert run["idempotency_key"]  # the automation's action made it (its triggered action's key)
    # the deployment's defaults, as the two-day schedule runs it: the settings decide
    assert run["parameters"] == {
        "source": None,
        "scale": None,
        "n_trials": None,
        "dry_run": False,
        "deploy": None,
    }
    _cancel(loop, runs)

    # a second detection inside the cooldown: the event arrives, no second run is created
    loop.run_monitor("shifted")
    _wait("the second detection", lambda: len(detected()) == 2, 30)
    time.sleep(max(QUIET_WAIT_S, 3 * fired_in))
    assert [r["id"] for r in loop.retrain_runs()] == [run["id"]]
