"""Fixtures of the serving tests: a small but real bundle, apps built on it, and a live gunicorn server."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from serving.app import create_app
from serving.bundle import Bundle, load_bundle
from serving.config import ServiceConfig
from serving.logs import LOGGER_NAME, JsonFormatter
from serving.predlog_files import PREFIX, SPOOL
from tests.serving.remote import HttpClient, service_url
from tests.serving.synthetic import make_bundle, sample_records, strip_label

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def labelled_records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Labelled loans joined with their clarity report (CSV string values), from tasks.data.sample at scale 0.02."""
    records = sample_records(tmp_path_factory.mktemp("sample"), scale=0.02, seed=1)
    assert len(records) >= 200, f"only {len(records)} labelled records"
    return records


@pytest.fixture(scope="session")
def records(labelled_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same records without the label: what a client posts."""
    return [strip_label(r) for r in labelled_records]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, labelled_records: list[dict[str, Any]]) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("bundle-v1"), labelled_records, iterations=50, model_version="1"
    )


@pytest.fixture(scope="session")
def bundle_dir_v2(tmp_path_factory: pytest.TempPathFactory, labelled_records: list[dict[str, Any]]) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("bundle-v2"),
        labelled_records,
        iterations=30,
        depth=3,
        model_version="2",
        seed=7,
    )


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture
def make_app(bundle_dir: Path) -> Callable[..., Flask]:
    def factory(**overrides: Any) -> Flask:
        settings: dict[str, Any] = {"bundle_dir": bundle_dir, "admin_token": ADMIN_TOKEN, "log_level": "INFO"}
        settings.update(overrides)
        app = create_app(ServiceConfig(**settings))
        app.testing = True
        return app

    return factory


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(request: pytest.FixtureRequest) -> FlaskClient | HttpClient:
    """The in-process app's test client, or an HTTP client on LOANRISK_TEST_SERVICE_URL (see remote.py)."""
    return _client(request, "app")


@pytest.fixture(scope="module")
def contract_app(bundle_dir: Path) -> Flask | None:
    """The app the contract suites (schemathesis, fuzz) probe: batches of at most 50, reload enabled.

    None when they probe a running service instead (started with the same two settings).
    """
    if service_url() is not None:
        return None
    config = ServiceConfig(
        bundle_dir=bundle_dir, admin_token=ADMIN_TOKEN, max_batch_size=50, log_level="WARNING"
    )
    app = create_app(config)
    app.testing = True
    return app


@pytest.fixture(scope="module")
def contract_client(request: pytest.FixtureRequest) -> FlaskClient | HttpClient:
    return _client(request, "contract_app")


def _client(request: pytest.FixtureRequest, app_fixture: str) -> FlaskClient | HttpClient:
    url = service_url()
    if url is None:
        return request.getfixturevalue(app_fixture).test_client()
    http = HttpClient(url)
    request.addfinalizer(http.close)
    return http


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against a running service, leave out the tests that need the app in this process (deselected, not skipped)."""
    if service_url() is None:
        return
    here = Path(__file__).parent
    kept, dropped = [], []
    for item in items:
        local = here in Path(str(item.path)).parents
        (dropped if local and item.get_closest_marker("inprocess") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[str]]]:
    """Everything the service logs (JSON lines) while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [line for line in stream.getvalue().splitlines() if line.strip()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- a live server in a subprocess --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    worker_pids: list[int] = field(default_factory=list)  # gunicorn's workers when it got ready

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout_s: float = 60
) -> tuple[int, Any]:
    """One HTTP request to a live server (POST when ``body`` is given): its status and parsed JSON answer."""
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (gunicorn's workers, for its master)."""
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


READINESS_PROBES = frozenset({"/health", "/model/workers"})  # what _wait_ready asks a starting server


def loaded_workers(server: LiveServer, admin_token: str) -> list[int] | None:
    """The pids of gunicorn's workers once every one has its model loaded, else None. Each worker records its own
    state in the service's sync folder once its model is in (``GET /model/workers``), shortly before it starts
    accepting on the listening socket the master shares (a connection made meanwhile waits in its queue); they
    count once they are exactly the master's children, so a worker being replaced counts as not ready."""
    try:
        status, body = call(
            f"{server.url}/model/workers", headers={"Authorization": f"Bearer {admin_token}"}, timeout_s=2
        )
        workers = sorted(children(server.process.pid))
    except (urllib.error.URLError, OSError, ValueError):
        return None
    if status != 200:
        return None
    pids = sorted(w["pid"] for w in body["workers"] if w.get("state") == "loaded")
    return pids if pids and pids == workers else None


def _wait_ready(
    server: LiveServer, timeout_s: float, workers: int | None = None, admin_token: str = ADMIN_TOKEN
) -> None:
    """Wait until ``/health`` answers 200 and, given ``workers``, until that many gunicorn workers have each
    loaded the model (:func:`loaded_workers`, kept in ``server.worker_pids``): ``/health`` is one worker's
    answer, and the first worker up would otherwise take every request sent before the others are."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited ({server.process.returncode}):\n{server.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as r:
                healthy = r.status == 200
        except (urllib.error.URLError, OSError):
            healthy = False
        if healthy and workers is None:
            return
        if healthy:
            pids = loaded_workers(server, admin_token)
            if pids is not None and len(pids) == workers:
                server.worker_pids = pids
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {timeout_s}s:\n{server.log_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the service gracefully: SIGTERM to gunicorn's master, which stops its workers (each writes what its
    prediction log queues and starts the conversion of its last spool). The converters the workers started go
    on in the service's process group, as they do when a worker stops (see :func:`wait_converted`); only a stop
    that does not end in time kills the whole group."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)  # gunicorn's graceful_timeout is 30 s
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the master, its workers, their converters
        process.wait(timeout=10)


def wait_converted(folder: Path, timeout_s: float = 120) -> None:
    """Wait until the prediction log in ``folder`` holds no spool: after a graceful stop every spool is handed to
    a converter, which renames its ``.jsonl.gz`` into place complete before it removes the spool, so from then on
    the folder holds the log as it stays (what a test that lists it and reads each file needs)."""
    deadline = time.monotonic() + timeout_s
    while spools := sorted(p.name for p in folder.glob(f"{PREFIX}*{SPOOL}")):
        assert time.monotonic() < deadline, f"spools not converted in {timeout_s:.0f} s: {spools}"
        time.sleep(0.1)


def start_service(folder: Path, bundle_dir: Path, workers: int = 2, **env: str) -> LiveServer:
    """gunicorn (serving/gunicorn_conf.py) serving ``bundle_dir`` on a free port, in its own session, ready
    (``/health`` answers 200 and every one of the ``workers`` has loaded the model); its output goes to
    ``folder/server-<port>.log``. ``env`` is added to the environment (it must keep an admin token: readiness
    reads ``/model/workers``). The caller stops it (:func:`_stop`); a server that does not get ready is stopped
    here."""
    port = free_port()
    log_path = folder / f"server-{port}.log"
    multiproc = folder / f"prometheus-{port}"
    environ = dict(os.environ)
    environ.pop("LOANRISK_RELOAD_SYNC_DIR", None)
    environ.update(
        LOANRISK_BUNDLE_DIR=str(bundle_dir),
        LOANRISK_ADMIN_TOKEN=ADMIN_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        PYTHONPATH=str(REPO_ROOT),
    )
    environ.update(env)
    command = [
        sys.executable, "-m", "gunicorn", "--config", str(REPO_ROOT / "serving" / "gunicorn_conf.py"),
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server, 120, workers, environ["LOANRISK_ADMIN_TOKEN"])
    except BaseException:
        _stop(process)
        raise
    return server


@pytest.fixture
def live_server(tmp_path: Path, bundle_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start gunicorn (serving/gunicorn_conf.py) in a subprocess; stopped by process group at teardown."""
    started: list[LiveServer] = []

    def start(workers: int = 2, **env: str) -> LiveServer:
        server = start_service(tmp_path, bundle_dir, workers, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        _stop(server.process)
