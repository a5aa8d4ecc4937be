"""prefect.yaml, deployments.setup, the REST trigger and the GitHub workflows, against a real Prefect server.

The ``prefect_server`` tests share one server (with HTTP Basic auth on, as a self-hosted install would run it)
and one process worker for the module; each training run is small (sample data at scale 0.02, two trials,
no deploy). The unmarked tests at the top read the files only (and actionlint installs itself once).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments import setup as deploy_setup
from tests.integration.prefect_fixtures import (
    REPO_ROOT,
    PrefectServer,
    ProcessWorker,
    base_env,
    prefect_server,
    process_worker,
)

POOL = "loan-risk-pool"
TRAINING = "loan-risk-training/retrain"
DEPLOY = "loan-risk-deploy/deploy"
MONITOR = "loan-risk-monitor/daily"
CRON = "0 2 */2 * *"
AUTH = "ci:test-pass"
SMALL_RUN = ["source=sample", "scale=0.02", "n_trials=2", "deploy=false"]
RUN_TIMEOUT_S = 900


def _params(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--param", item)]


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def _when(text: str | None) -> datetime:
    assert text, "missing timestamp"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _flow_defaults(path: Path, function: str) -> dict[str, Any]:
    """The parameters and defaults of a flow function, read from its source (no import of the heavy stack)."""
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    args = fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    return {a.arg: _default(d) for a, d in zip(args, defaults, strict=True)}


def _default(node: ast.expr | None) -> Any:
    """A literal default, or one of the alias names (``Alias.CANDIDATE.value``)."""
    from tasks.registry.aliases import Alias

    if node is None:
        return "<required>"
    try:
        return ast.literal_eval(node)
    except ValueError:
        return eval(compile(ast.Expression(node), "<default>", "eval"), {"Alias": Alias})  # noqa: S307 - our source


# --- the files, statically -----------------------------------------------------------------------


def test_prefect_yaml_declares_the_deployments() -> None:
    data = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in data["deployments"]}
    assert set(deps) == {"retrain", "deploy", "rollback", "score", "daily", "tune-worker"}
    score = deps["score"]
    assert score["entrypoint"] == "flows/score.py:score_flow" and not score["schedules"]  # on demand
    defaults = _flow_defaults(REPO_ROOT / "flows/score.py", "score_flow")
    assert {k for k, v in defaults.items() if v == "<required>"} == {"input", "output"}
    assert score["parameters"] == {k: v for k, v in defaults.items() if v != "<required>"}
    assert score["work_pool"]["name"] == POOL

    retrain, deploy, daily = deps["retrain"], deps["deploy"], deps["daily"]
    assert retrain["entrypoint"] == "flows/training.py:training_flow"
    assert deploy["entrypoint"] == "flows/deploy.py:deploy_flow"
    assert retrain["schedules"] == [{"cron": CRON, "timezone": "UTC", "active": True}]
    assert not deploy.get("schedules")
    assert retrain["concurrency_limit"]["limit"] == 1
    assert retrain["concurrency_limit"]["collision_strategy"] == "ENQUEUE"
    for dep in deps.values():
        assert dep["work_pool"]["name"] == POOL

    # the parameters are the flows' own, with the flows' defaults
    assert retrain["parameters"] == _flow_defaults(REPO_ROOT / "flows/training.py", "training_flow")
    assert deploy["parameters"] == _flow_defaults(REPO_ROOT / "flows/deploy.py", "deploy_flow")
    rollback = deps["rollback"]
    assert rollback["entrypoint"] == "flows/rollback.py:rollback_flow" and not rollback["schedules"]
    assert rollback["parameters"] == _flow_defaults(REPO_ROOT / "flows/rollback.py", "rollback_flow")
    assert "concurrency_limit" not in rollback  # never queued behind deploys
    assert daily["parameters"] == _flow_defaults(REPO_ROOT / "flows/monitor.py", "monitor_flow")
    # the tune worker: no schedule, no run limit (the tune stage starts tune_workers runs at once)
    worker = deps["tune-worker"]
    assert worker["entrypoint"] == "flows/tune_worker.py:tune_worker_flow"
    assert not worker.get("schedules") and "concurrency_limit" not in worker
    worker_defaults = _flow_defaults(REPO_ROOT / "flows/tune_worker.py", "tune_worker_flow")
    assert worker["parameters"] == {k: v for k, v in worker_defaults.items() if v != "<required>"}

    # the pull step runs the code from the checkout recorded by the build step
    (build,) = data["build"]
    step = build["prefect.deployments.steps.run_shell_script"]
    (pull,) = data["pull"]
    assert pull == {
        "prefect.deployments.steps.set_working_directory": {"directory": "{{ " + step["id"] + ".stdout }}"}
    }


def test_monitor_runs_daily_and_drift_triggers_retrain_once_per_cooldown() -> None:
    data = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in data["deployments"]}
    assert deps["daily"]["entrypoint"] == "flows/monitor.py:monitor_flow"
    assert deps["daily"]["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
    (trigger,) = deps["retrain"]["triggers"]
    assert trigger["expect"] == ["loan-risk.drift.detected"]
    assert trigger["match"] == {"prefect.resource.id": "loan-risk.model.*"}
    assert (trigger["posture"], trigger["threshold"], trigger["within"]) == ("Reactive", 1, 86_400)
    assert not deps["deploy"].get("triggers") and not deps["daily"].get("triggers")
    # the cooldown setting becomes the trigger's window; nothing else changes
    shorter = deploy_setup.configured(data, cooldown=3600)
    assert shorter["deployments"][0]["triggers"][0]["within"] == 3600
    shorter["deployments"][0]["triggers"][0]["within"] = 86_400
    assert shorter == json.loads(json.dumps(data))


def test_setup_can_rename_the_pool() -> None:
    data = deploy_setup.load_prefect_file(REPO_ROOT / "prefect.yaml")
    renamed = deploy_setup.configured(data, "other-pool")
    assert {s.pool for s in deploy_setup.deployment_specs(renamed)} == {"other-pool"}
    assert {s.pool for s in deploy_setup.deployment_specs(data)} == {POOL}  # the original is untouched
    assert [d["entrypoint"] for d in renamed["deployments"]] == [d["entrypoint"] for d in data["deployments"]]


def test_setup_refuses_without_an_api(tmp_path: Path) -> None:
    env = base_env(tmp_path / "home", {"LOANRISK_STATE_DIR": str(tmp_path / "state")})
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.setup"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no Prefect API configured" in proc.stderr


def _workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO_ROOT / ".github/workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads a bare `on` key as True
    return data


def test_retrain_workflow_calls_the_trigger() -> None:
    wf = _workflow("retrain.yml")
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert {"source", "scale", "n_trials", "dry_run"} <= set(inputs)
    assert wf["on"]["push"]["branches"] == ["main"]
    assert {"loanrisk.toml", "tasks/**", "flows/training.py", "prefect.yaml"} <= set(
        wf["on"]["push"]["paths"]
    )
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    (trigger,) = [s for s in steps if "deployments.trigger" in s.get("run", "")]
    assert f"deployments.trigger {TRAINING}" in trigger["run"] and "--wait" in trigger["run"]
    for secret in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        assert trigger["env"][secret] == "${{ secrets." + secret + " }}"


def test_ci_workflow_runs_the_ci_script() -> None:
    wf = _workflow("ci.yml")
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("bash .ci/run" in r and "--all" not in r for r in runs)


def test_nightly_workflow_runs_both_tiers_on_a_schedule() -> None:
    wf = _workflow("nightly.yml")
    assert wf["on"]["schedule"] and "workflow_dispatch" in wf["on"]
    runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("bash .ci/run --all" in r for r in runs)


def _actionlint(*files: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "tests/infra/actionlint.sh"), *files],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_actionlint_passes_on_the_workflows() -> None:
    proc = _actionlint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "retrain.yml" in proc.stderr and "ci.yml" in proc.stderr


def test_actionlint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on:\n  workflow_dispatch:\n    inputs:\n      scale: {type: string}\n"
        "jobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ inputs.sclae }}\n"
    )
    proc = _actionlint(str(bad))
    assert proc.returncode == 1
    assert 'property "sclae" is not defined' in proc.stdout


# --- a real server, worker and training runs -----------------------------------------------------


@dataclass
class Deployed:
    server: PrefectServer
    env: dict[str, str]  # a client's environment: API URL and credentials
    setup_result: dict[str, Any]
    setup_s: float
    tmp: Path

    def deployment(self, name: str) -> dict[str, Any]:
        with self.server.http() as http:
            response = http.get(f"deployments/name/{name}")
            response.raise_for_status()
            return response.json()


def _run_setup(env: dict[str, str]) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.setup"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"setup exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return _last_json(proc.stdout), elapsed


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("prefect-deployments")
    # The scheduler service is off so that no run appears by itself; the schedule test asks the server to
    # schedule the next runs from the deployment's schedule (the same code the service runs).
    with prefect_server(
        tmp / "server", auth_string=AUTH, extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    ) as server:
        env = server.client_env(tmp / "client", {"LOANRISK_STATE_DIR": str(tmp / "client-state")})
        result, elapsed = _run_setup(env)
        yield Deployed(server=server, env=env, setup_result=result, setup_s=elapsed, tmp=tmp)


@pytest.fixture(scope="module")
def worker(deployed: Deployed) -> Iterator[ProcessWorker]:
    with process_worker(
        deployed.server,
        POOL,
        deployed.tmp / "worker",
        state_dir=deployed.tmp / "worker-state",
        extra_env={"LOANRISK_TASK_RETRY_DELAY_SECONDS": "0"},
    ) as w:
        yield w


def _trigger(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The trigger client, called as the retrain workflow calls it."""
    return subprocess.Popen(
        [sys.executable, "-m", "deployments.trigger", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(
    proc: subprocess.Popen[str], worker: ProcessWorker | None = None
) -> tuple[int, dict[str, Any], str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    context = f"stdout:\n{out}\nstderr:\n{err[-3000:]}" + (
        f"\nworker log:\n{worker.log_tail()}" if worker else ""
    )
    assert out.strip(), context
    return proc.returncode, _last_json(out), context


@pytest.mark.prefect_server
def test_setup_deploys_both_deployments(deployed: Deployed) -> None:
    result = deployed.setup_result
    assert result["pool"] == POOL and result["api_url"] == deployed.server.api_url
    by_name = {d["name"]: d for d in result["deployments"]}
    assert set(by_name) == {
        TRAINING,
        DEPLOY,
        MONITOR,
        "loan-risk-score/score",
        "loan-risk-training/tune-worker",
        "loan-risk-rollback/rollback",
    }
    assert by_name["loan-risk-rollback/rollback"]["schedules"] == []
    assert by_name[TRAINING]["schedules"] == [{"cron": CRON, "timezone": "UTC", "active": True}]
    assert by_name[TRAINING]["concurrency_limit"] == 1
    assert by_name[DEPLOY]["schedules"] == []
    assert by_name[MONITOR]["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
    # the drift trigger became an automation of the retrain deployment: reactive, once per day
    (trigger,) = by_name[TRAINING]["triggers"]
    assert trigger["expect"] == ["loan-risk.drift.detected"] and trigger["enabled"]
    assert (trigger["posture"], trigger["threshold"], trigger["within"]) == ("Reactive", 1, 86_400)
    assert by_name[DEPLOY]["triggers"] == [] and by_name[MONITOR]["triggers"] == []

    with deployed.server.http() as http:
        pool = http.get(f"work_pools/{POOL}").json()
    assert pool["type"] == "process"
    training = deployed.deployment(TRAINING)
    assert training["work_pool_name"] == POOL
    assert training["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
    ]
    assert training["parameters"] == {
        "source": None,
        "scale": None,
        "n_trials": None,
        "dry_run": False,
        "deploy": None,
    }
    assert training["global_concurrency_limit"]["limit"] == 1
    assert training["concurrency_options"]["collision_strategy"] == "ENQUEUE"


@pytest.mark.prefect_server
def test_setup_is_idempotent(deployed: Deployed) -> None:
    again, _ = _run_setup(deployed.env)
    assert again["pool_created"] is False
    first = {d["name"]: d["id"] for d in deployed.setup_result["deployments"]}
    assert {d["name"]: d["id"] for d in again["deployments"]} == first


@pytest.mark.prefect_server
def test_training_schedule_runs_every_second_day_at_0200_utc(deployed: Deployed) -> None:
    training = deployed.deployment(TRAINING)
    (schedule,) = training["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"] is True

    with deployed.server.http() as http:
        response = http.post(f"deployments/{training['id']}/schedule", json={"min_runs": 6, "max_runs": 6})
        assert response.status_code < 300, response.text
        runs = http.post(
            "flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [training["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 20,
            },
        ).json()
        try:
            starts = [_when(r["expected_start_time"]) for r in runs]
            assert len(starts) == 6, runs
            assert all(r["auto_scheduled"] for r in runs)
            for start in starts:
                assert start.utcoffset() is not None and start.utcoffset().total_seconds() == 0
                assert (start.hour, start.minute, start.second) == (2, 0, 0), start
                assert start.day % 2 == 1, start  # */2 on the day of the month: 1, 3, 5, ...
            assert starts == sorted(starts) and len(set(starts)) == len(starts)
            gaps = {(b - a).days for a, b in zip(starts, starts[1:], strict=False)}
            assert gaps <= {1, 2}, gaps  # two days, one across the end of a 31-day month
        finally:  # leave no scheduled run for the worker to pick up near 02:00 UTC
            for run in runs:
                http.delete(f"flow_runs/{run['id']}")


@pytest.mark.prefect_server
def test_prefect_deployment_run_completes_a_small_training(deployed: Deployed, worker: ProcessWorker) -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", TRAINING, *_params(SMALL_RUN), "--watch"],
        cwd=deployed.tmp,
        env=deployed.env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    elapsed = time.monotonic() - t0
    context = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\nworker log:\n{worker.log_tail()}"
    assert proc.returncode == 0, context
    assert "Completed" in proc.stdout, context

    with deployed.server.http() as http:
        runs = http.post(
            "flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [deployed.deployment(TRAINING)["id"]]}},
                "sort": "START_TIME_DESC",
            },
        ).json()
    done = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert done, runs
    assert done[0]["parameters"] == {
        "source": "sample",
        "scale": 0.02,
        "n_trials": 2,
        "dry_run": False,
        "deploy": False,
    }
    assert elapsed < RUN_TIMEOUT_S


@pytest.mark.prefect_server
def test_trigger_runs_complete_and_never_overlap(deployed: Deployed, worker: ProcessWorker) -> None:
    """Two runs asked for at once: both complete; the second waits for the first (concurrency_limit: 1)."""
    args = [TRAINING, *_params(SMALL_RUN), "--wait", "--timeout", str(RUN_TIMEOUT_S), "--poll-interval", "2"]
    procs = [_trigger(deployed.env, *args), _trigger(deployed.env, *args)]
    results = [_finish(p, worker) for p in procs]
    for code, last, context in results:
        assert code == 0, context
        assert last["state"] == "COMPLETED", context
        assert last["url"] == f"{deployed.server.ui_url}/runs/flow-run/{last['id']}"

    with deployed.server.http() as http:
        runs = [http.get(f"flow_runs/{last['id']}").json() for _, last, _ in results]
        first, second = sorted(runs, key=lambda r: _when(r["start_time"]))
        assert _when(first["end_time"]) <= _when(second["start_time"]), (first, second)
        history = http.get("flow_run_states/", params={"flow_run_id": second["id"]}).json()
    names = [s["name"] for s in history]
    assert "AwaitingConcurrencySlot" in names, names


@pytest.mark.prefect_server
def test_trigger_reports_a_failed_run(deployed: Deployed, worker: ProcessWorker) -> None:
    proc = _trigger(
        deployed.env,
        TRAINING,
        *_params(["source=/nonexistent", "deploy=false"]),
        "--wait",
        "--timeout",
        str(RUN_TIMEOUT_S),
        "--poll-interval",
        "2",
    )
    code, last, context = _finish(proc, worker)
    assert code == 1, context
    assert last["state"] == "FAILED" and last["id"], context
    assert last["error"] is None and last["url"].endswith(last["id"])


@pytest.mark.prefect_server
@pytest.mark.parametrize(
    ("auth", "expected"),
    [("ci:wrong-pass", "refused the credentials"), (None, "no credentials were given")],
)
def test_trigger_with_wrong_credentials_says_so(deployed: Deployed, auth: str | None, expected: str) -> None:
    env = {k: v for k, v in deployed.env.items() if k != "PREFECT_API_AUTH_STRING"}
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    code, last, context = _finish(_trigger(env, TRAINING, "--wait", "--retries", "0"))
    assert code == 6, context
    assert "authentication failed" in context and expected in context and "HTTP 401" in context
    assert last["id"] is None


@pytest.mark.prefect_server
def test_trigger_unknown_deployment(deployed: Deployed) -> None:
    code, last, context = _finish(_trigger(deployed.env, "loan-risk-training/nope"))
    assert code == 7 and "not found" in last["error"], context


@pytest.mark.prefect_server
def test_server_refuses_wrong_credentials_to_prefect_clients_too(deployed: Deployed) -> None:
    """The server really enforces the auth string (so the trigger's 401 is the server's, not the client's)."""
    assert httpx.get(f"{deployed.server.api_url}/deployments/name/{TRAINING}", timeout=10).status_code == 401
    env = {**deployed.env, "PREFECT_API_AUTH_STRING": "ci:wrong-pass"}
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.setup"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 6, proc.stderr[-3000:]
    assert "refused the credentials" in proc.stderr
