"""A real Prefect server and process worker for the deployment tests, each a subprocess that the test owns.

    with prefect_server(tmp / "server", auth_string="ci:secret") as server:
        run(["python", "-m", "deployments.setup"], env=server.client_env(tmp / "client"))
        with process_worker(server, "loan-risk-pool", tmp / "worker", state_dir=tmp / "state") as worker:
            ...

The server is ``prefect server start --host 127.0.0.1 --port <free>`` in the foreground of its own session
(``start_new_session=True``), with its own PREFECT_HOME (so its own SQLite database), polled on /api/health and
stopped by its process group at the end. The worker is started the same way: a worker started as a plain
background job of a non-interactive shell ignores SIGINT/SIGTERM, one in its own session does not.
Nothing here touches the developer's ~/.prefect or the project's .state.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = float(os.environ.get("LOANRISK_TEST_PREFECT_START_TIMEOUT", "180"))
WORKER_START_TIMEOUT_S = 90.0

# Prefect settings that would point a child process at another API, profile or database.
_PREFECT_LEAKS = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_UI_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
)

QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLI_COLORS": "false",
    "COLUMNS": "160",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(prefect_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without Prefect connection settings, with its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in _PREFECT_LEAKS}
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(QUIET_PREFECT)
    env["PREFECT_HOME"] = str(prefect_home)
    env.update(extra or {})
    return env


def _stop_group(proc: subprocess.Popen[Any], name: str, timeout: float = 30.0) -> None:
    """SIGTERM the process group the child leads, then SIGKILL it when it lingers."""
    if proc.poll() is None:
        logger.info("stopping %s (pid %s)", name, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing its process group", name, timeout)
    # Children of the leader (uvicorn workers, flow-run subprocesses) may outlive it: take the group down.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _spawn(cmd: list[str], cwd: Path, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[Any]:
    """Start ``cmd`` in a session of its own (so its whole group can be stopped), output to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class PrefectServer:
    """A running server: where it is, how to authenticate, where it logs."""

    api_url: str
    home: Path
    log_path: Path
    proc: subprocess.Popen[Any]
    auth_string: str | None = None
    started_in_s: float = 0.0

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def client_env(self, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a CLI or client process talking to this server (own PREFECT_HOME under ``home``)."""
        env = base_env(home)
        env["PREFECT_API_URL"] = self.api_url
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        env.update(extra or {})
        return env

    def headers(self) -> dict[str, str]:
        if not self.auth_string:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}

    def http(self) -> httpx.Client:
        """An httpx client on the API with the server's credentials."""
        return httpx.Client(base_url=self.api_url + "/", headers=self.headers(), timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


@contextlib.contextmanager
def prefect_server(
    home: Path,
    *,
    auth_string: str | None = None,
    port: int | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = SERVER_START_TIMEOUT_S,
) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1:<port> with its own home/database; stopped on exit."""
    port = port or free_port()
    env = base_env(
        home,
        {
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_UI_ENABLED": "false",  # the tests read the API; skips building the UI bundle
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            **(extra_env or {}),
        },
    )
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    log_path = home / "server.log"
    api_url = f"http://127.0.0.1:{port}/api"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    t0 = time.monotonic()
    proc = _spawn(cmd, home, env, log_path)
    server = PrefectServer(api_url=api_url, home=home, log_path=log_path, proc=proc, auth_string=auth_string)
    try:
        deadline = t0 + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited {proc.returncode} during start:\n{server.log_tail()}"
                )
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy in {timeout:.0f}s:\n{server.log_tail()}")
            time.sleep(0.5)
        server.started_in_s = time.monotonic() - t0
        logger.info("prefect server on %s healthy in %.1fs", api_url, server.started_in_s)
        yield server
    finally:
        _stop_group(proc, "prefect server")


@dataclass
class ProcessWorker:
    pool: str
    log_path: Path
    proc: subprocess.Popen[Any]
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)


@contextlib.contextmanager
def process_worker(
    server: PrefectServer,
    pool: str,
    home: Path,
    *,
    state_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = WORKER_START_TIMEOUT_S,
    limit: int | None = None,
) -> Iterator[ProcessWorker]:
    """``prefect worker start --pool POOL --type process`` against ``server``; its flow runs keep their state
    (MLflow, Optuna, data) in ``state_dir``. Ready once the server lists it as a worker of the pool. ``limit``
    caps the flow runs it runs at once (``--limit``)."""
    env = server.client_env(
        home,
        {
            "LOANRISK_STATE_DIR": str(state_dir),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        },
    )
    log_path = home / "worker.log"
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    proc = _spawn(cmd, home, env, log_path)
    worker = ProcessWorker(pool=pool, log_path=log_path, proc=proc, env=env)
    try:
        deadline = time.monotonic() + timeout
        with server.http() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited {proc.returncode} during start:\n{worker.log_tail()}")
                response = http.post(f"work_pools/{pool}/workers/filter", json={})
                if response.status_code == 200 and response.json():
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker not registered in {timeout:.0f}s:\n{worker.log_tail()}")
                time.sleep(0.5)
        yield worker
    finally:
        with contextlib.suppress(Exception):
            cancel_active_runs(server)
        _stop_group(proc, "prefect worker")


def require_postgres() -> None:
    """Skip when PostgreSQL's server binaries are missing (``deployments.stack`` needs them); fail under CI."""
    from deployments.stack.postgres import PostgresMissing, bindir
    from tests.infra.docker_fixtures import in_ci

    try:
        bindir()
    except PostgresMissing as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL missing in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))


def cancel_active_runs(server: PrefectServer, wait_s: float = 30.0) -> int:
    """Cancel the runs still scheduled, pending or running (a test that gave up on one), so that none keeps
    going after the worker is stopped; waits a little for the worker to end them. Returns how many."""
    active = {"any_": ["SCHEDULED", "PENDING", "RUNNING", "PAUSED"]}
    with server.http() as http:
        runs = http.post("flow_runs/filter", json={"flow_runs": {"state": {"type": active}}}).json()
        for run in runs:
            http.post(
                f"flow_runs/{run['id']}/set_state",
                json={"state": {"type": "CANCELLING", "message": "test teardown"}, "force": True},
            )
        deadline = time.monotonic() + wait_s
        while runs and time.monotonic() < deadline:
            busy = {"any_": ["PENDING", "RUNNING", "CANCELLING"]}
            if not http.post("flow_runs/filter", json={"flow_runs": {"state": {"type": busy}}}).json():
                break
            time.sleep(1)
    if runs:
        logger.warning("cancelled %d flow run(s) left active", len(runs))
    return len(runs)
