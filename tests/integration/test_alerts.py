"""Alerts (issue 11) against a real Prefect server and a local HTTP receiver that records what it got.

The automations come from ``python -m deployments.alerts`` with two channels, a generic webhook (Prefect's
Webhook block) and an Apprise URL (``json://`` to the receiver). Then real things happen: a loan-risk flow run
fails (``python -m flows.score`` on a missing file), the promote stage promotes a registered version, the
commit-champion stage releases it, and the drift monitor's event arrives. Each gives one notification per channel
with its useful fields; a failing flow that is not ours, a dry-run and a rejected promotion, and a
``loan-risk.drift.ok`` event give none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.prefect_fixtures import REPO_ROOT, PrefectServer, free_port, prefect_server

pytestmark = pytest.mark.prefect_server

ALERT_NAMES = {
    "loan-risk: flow run failed",
    "loan-risk: model promoted",
    "loan-risk: model released",
    "loan-risk: drift detected",
}
NOTIFY_TIMEOUT_S = 120.0
QUIET_AFTER_S = 15.0


@dataclass
class Receiver:
    """A local HTTP server that records every POST: (path, parsed JSON body)."""

    port: int = 0
    got: list[tuple[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_path(self, path: str) -> list[Any]:
        with self.lock:
            return [body for p, body in self.got if p == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = {"unparsed": body.decode(errors="replace")}
            with rec.lock:
                rec.got.append((self.path, parsed))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Stand:
    server: PrefectServer
    env: dict[str, str]
    setup_runs: list[dict[str, Any]]


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stand]:
    tmp = tmp_path_factory.mktemp("alerts")
    port = free_port()  # a server with a UI address, so the alerts can link to the run
    ui = {"PREFECT_UI_URL": f"http://127.0.0.1:{port}", "PREFECT_SERVER_UI_ENABLED": "true"}
    with prefect_server(tmp / "server", port=port, extra_env=ui) as server:
        env = server.client_env(
            tmp / "client",
            {
                "LOANRISK_STATE_DIR": str(tmp / "state"),
                "LOANRISK_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{receiver.port}/webhook",
                "LOANRISK_ALERT_APPRISE_URLS": json.dumps([f"json://127.0.0.1:{receiver.port}/apprise"]),
                "LOANRISK_TASK_RETRIES": "0",
            },
        )
        runs = []
        for _ in range(2):
            proc = _run([sys.executable, "-m", "deployments.alerts"], env)
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs.append(_last_json(proc))
        yield Stand(server, env, runs)


def test_alerts_setup_is_idempotent(stand: Stand) -> None:
    first, second = stand.setup_runs
    assert first["channels"] == second["channels"] == ["webhook", "apprise"]
    assert {a["name"] for a in first["automations"]} == ALERT_NAMES
    assert {a["status"] for a in first["automations"]} == {"created"}
    assert {a["status"] for a in second["automations"]} == {"updated"}
    assert {a["id"] for a in first["automations"]} == {a["id"] for a in second["automations"]}
    with stand.server.http() as http:
        automations = http.post("automations/filter", json={}).json()
        blocks = http.post("block_documents/filter", json={}).json()
    assert sorted(a["name"] for a in automations) == sorted(ALERT_NAMES)  # no duplicates
    names = {b["name"] for b in blocks}
    assert {"loan-risk-alert-webhook", "loan-risk-alert-apprise-1"} <= names
    # the URLs are secrets in the blocks, not in prefect.yaml
    assert "127.0.0.1" not in (REPO_ROOT / "prefect.yaml").read_text()


# Run in a process pointed at the server: the real promote and commit-champion stages on a real (SQLite) MLflow
# registry, and the drift monitor's events as it emits them.
EVENTS_SCRIPT = r"""
import json, tempfile
from pathlib import Path
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from tasks.registry import versions
from tasks.registry import tracking
from tasks.monitoring.events import model_resource
from tasks.registry.promote import promote_task
from tasks.release.candidate import Candidate
from tasks.release.plan import commit_task, plan_release
from tasks.settings import get_settings

settings = get_settings()
with tracking.run(settings, "alerts-test", {}) as run_id:
    made = [versions.register_bundle(settings, run_id, Path(tempfile.mkdtemp()), {}) for _ in range(3)]
good = {"test_precision": 0.81, "test_recall": 0.77, "test_f1": 0.79, "test_roc_auc": 0.8412}
bad = {**good, "test_precision": 0.5}
promote_task.fn(settings, made[0], good, None, dry_run=True)   # dry run: no event
promote_task.fn(settings, made[1], bad, None)                  # rejected: no event
promote_task.fn(settings, made[2], good, None)                 # promoted
plan = plan_release(settings, made[2], None, False, None, "test@host")
image = Candidate(made[2], "sha256:" + "ab" * 32, "localhost:5055/loan-risk", True, metrics=good)
commit_task.fn(settings, plan, image, "c0ffee")                    # released
emit_event("loan-risk.drift.ok", resource=model_resource(settings.registry.model_name, made[2]), payload={"score_psi": 0.01})
emit_event("loan-risk.drift.detected", resource=model_resource(settings.registry.model_name, made[2]),
           payload={"score_psi": 0.31, "features": {"apr": 0.42, "leadType": 0.27}})
EventsWorker.drain_all()
print(json.dumps({"promoted": made[2]}))
"""

OTHER_FAILING_FLOW = r"""
from prefect import flow

@flow(name="someone-elses-flow")
def other() -> None:
    raise RuntimeError("not ours")

other()
"""


def _wait_for(receiver: Receiver, count: int) -> None:
    deadline = time.monotonic() + NOTIFY_TIMEOUT_S
    while len(receiver.got) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(QUIET_AFTER_S)  # and nothing more comes


def test_each_alert_notifies_every_channel_once(stand: Stand, receiver: Receiver, tmp_path: Path) -> None:
    other = _run([sys.executable, "-c", OTHER_FAILING_FLOW], stand.env)
    assert other.returncode != 0
    missing = tmp_path / "no-such-applications.csv"
    failed = _run(
        [
            sys.executable,
            "-m",
            "flows.score",
            str(missing),
            "--output",
            "o.csv",  # under the score root: the run must start (and fail on the bundle) to alert
            "--bundle",
            str(tmp_path),
        ],
        stand.env,
    )
    assert failed.returncode == 1 and "is not a model bundle" in _last_json(failed)["error"]
    events = _run([sys.executable, "-c", EVENTS_SCRIPT], stand.env)
    assert events.returncode == 0, events.stderr[-3000:]
    version = _last_json(events)["promoted"]

    _wait_for(receiver, 8)
    hooks, apprise = receiver.by_path("/webhook"), receiver.by_path("/apprise")
    by_alert = {h["alert"]: h for h in hooks}
    assert sorted(h["alert"] for h in hooks) == sorted(
        ["flow-run-failed", "model-promoted", "model-released", "drift-detected"]
    ), hooks
    assert len(apprise) == 4, apprise

    fail = by_alert["flow-run-failed"]
    assert fail["flow"] == "loan-risk-score" and fail["state"] == "Failed"
    assert fail["flow_run"] and "is not a model bundle" in fail["reason"]
    assert fail["link"] == f"{stand.server.ui_url}/runs/flow-run/{fail['flow_run_id']}", fail
    for kind in ("model-promoted", "model-released", "drift-detected"):
        assert by_alert[kind]["model"] == "loan-risk" and by_alert[kind]["version"] == version, by_alert[kind]
    assert "precision 0.8100 >= minimum" in by_alert["model-promoted"]["reason"]
    assert by_alert["model-promoted"]["payload"]["metrics"]["test_roc_auc"] == 0.8412
    released = by_alert["model-released"]
    assert released["digest"] == "sha256:" + "ab" * 32 and released["payload"]["kind"] == "release"
    assert by_alert["drift-detected"]["payload"]["score_psi"] == 0.31

    texts = {a["title"]: a["message"] for a in apprise}
    assert any(t.startswith("loan-risk-score: run") and "Failed" in t for t in texts), texts
    assert f"loan-risk v{version} promoted to candidate" in texts
    assert f"loan-risk v{version} released (release)" in texts
    assert "sha256:" + "ab" * 32 in texts[f"loan-risk v{version} released (release)"]
    assert "0.31" in texts[f"loan-risk v{version}: drift detected"]


@pytest.mark.nightly
def test_a_required_deploy_without_an_engine_fails_the_training_run_and_alerts(
    stand: Stand, receiver: Receiver, tmp_path: Path
) -> None:
    """deploy_mode "required" with the engine stopped (its socket answers nobody): the promoted version's
    training run fails naming the engine, and the failed-run automation notifies."""
    env = {
        **stand.env,
        "LOANRISK_DEPLOY_MODE": "required",
        "LOANRISK_DOCKER_HOST": f"unix://{tmp_path / 'stopped-engine.sock'}",
        "LOANRISK_MIN_PRECISION": "0.5",
        "LOANRISK_MIN_RECALL": "0.5",
        "LOANRISK_MIN_F1_GAIN": "-1",
        "LOANRISK_MAX_ITERATIONS": "80",
        "LOANRISK_STATE_DIR": str(tmp_path / "state"),
    }
    proc = _run(
        [sys.executable, "-m", "flows.training", "--scale", "0.02", "--n-trials", "2"], env, timeout=600
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    out = proc.stdout + proc.stderr
    assert "deploy_mode is required and no Docker engine answers at unix://" in out, out[-3000:]
    assert "stopped-engine.sock" in out
    deadline = time.monotonic() + NOTIFY_TIMEOUT_S
    while time.monotonic() < deadline:
        failed = [h for h in receiver.by_path("/webhook") if h.get("flow") == "loan-risk-training"]
        if failed:
            break
        time.sleep(1)
    assert failed, receiver.by_path("/webhook")
    assert failed[0]["state"] == "Failed" and "no Docker engine answers" in failed[0]["reason"], failed[0]
