"""Test session set-up: everything a run writes goes under the clone's ``.state/tests/run-<pid>/``, Prefect quiet
and fast, markers enforced under CI.

A run is the pytest process and, with ``-n`` (pytest-xdist, the default: ``pyproject.toml``), its workers. They
share the run's folder (``<pid>`` is the controlling process's): temporary files of every process and its
children (``tmp/``), pytest's tmp paths, the session's one training run (``trained/``, made by whichever worker
needs it first); each process has its own state folder (``state-<worker>/``: MLflow store, Prefect home). The
folder is removed when the run passes, kept for reading when it fails; a later run removes the folders of runs
whose process is gone. The engine and registry clean-up runs once, in the controlling process
(``tests/infra/docker_fixtures.py``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = REPO_ROOT / ".state" / "tests"
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... in a worker; None in the controlling process
os.environ.setdefault("LOANRISK_TEST_RUN", str(os.getpid()))  # the workers inherit the controller's
RUN_DIR = RUNS / f"run-{os.environ['LOANRISK_TEST_RUN']}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_finished_runs() -> None:
    """Folders of earlier runs whose pytest process has ended (a failed run's folder stays until then)."""
    for folder in RUNS.glob("run-*"):
        pid = folder.name.removeprefix("run-")
        if folder != RUN_DIR and (not pid.isdigit() or not _pid_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


if WORKER is None:
    RUNS.mkdir(parents=True, exist_ok=True)
    _remove_finished_runs()
(RUN_DIR / "tmp").mkdir(parents=True, exist_ok=True)
os.environ["TMPDIR"] = str(RUN_DIR / "tmp")
tempfile.tempdir = None  # re-read TMPDIR
os.environ.setdefault("LOANRISK_STATE_DIR", str(RUN_DIR / f"state-{WORKER or 'main'}"))
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ["LOANRISK_STATE_DIR"]) / "prefect"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # the ephemeral server's database is here
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("LOANRISK_TASK_RETRY_DELAY_SECONDS", "0")
# Small fits and few bootstrap resamples: the tests check behaviour, not model quality. A fixed thread count
# keeps CatBoost's models, and so the gate's decisions, the same on every machine.
os.environ.setdefault("LOANRISK_MAX_ITERATIONS", "150")
os.environ.setdefault("LOANRISK_BOOTSTRAP_SAMPLES", "20")
os.environ.setdefault("LOANRISK_THREAD_COUNT", "2")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

from tasks.settings import Settings, get_settings  # noqa: E402
from tests.infra.docker_fixtures import docker_services, serving_layers  # noqa: E402, F401 - fixtures for all

get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state (MLflow store, Optuna storage, data cache) lives in this test's tmp dir."""
    return Settings(state_dir=tmp_path / "state", n_trials=2, max_iterations=80, tune_timeout_seconds=120)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (scale 0.02), generated once per session."""
    from tasks.data.sample import generate

    out = tmp_path_factory.mktemp("sample")
    generate(out, scale=0.02, seed=7)
    return out


def pytest_configure(config: pytest.Config) -> None:
    """pytest's tmp paths under this run's folder (not the machine's temporary folder; a worker gets its own
    folder in the controller's from pytest-xdist)."""
    if not config.option.basetemp and WORKER is None:
        config.option.basetemp = str(RUN_DIR / "pytest")


ENGINE_SNAPSHOT = RUN_DIR / "engine.json"


@pytest.fixture(scope="session")
def snapshot_file() -> Path:
    """Where the run notes what the Docker engine and registry held before it (``tests/infra/docker_fixtures``)."""
    return ENGINE_SNAPSHOT


def pytest_sessionstart(session: pytest.Session) -> None:
    """The controlling process notes the engine's and the registry's contents when they already run."""
    if WORKER is None:
        from tests.infra.docker_fixtures import _read_services, note_engine, services_up

        if services_up():
            note_engine(ENGINE_SNAPSHOT, _read_services())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Prefect's ephemeral servers while output capture is still open (else it logs to a closed file); in
    the controlling process, remove what the tests added to the engine and the registry, and fail the run if
    something could not be removed."""
    if WORKER is None:
        from tests.infra.docker_fixtures import leave_nothing

        left = leave_nothing(ENGINE_SNAPSHOT)
        if left:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"ERROR: the tests left these behind and they could not be removed: {left}"
                )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            exitstatus = session.exitstatus
    session.config._loanrisk_exitstatus = int(exitstatus)  # type: ignore[attr-defined]
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover
        return
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


def pytest_unconfigure(config: pytest.Config) -> None:
    """A passing run leaves nothing: its folder goes (a failing one stays for reading)."""
    if WORKER is None and getattr(config, "_loanrisk_exitstatus", 1) == 0:
        with contextlib.suppress(OSError):
            shutil.rmtree(RUN_DIR)


@pytest.fixture(scope="session")
def trained_run():
    """The run's one training run (``tests/training.py``): trained, registered, its bundle downloaded; the
    first worker to need it makes it, the others wait for it and read it."""
    from tests.training import shared_training

    return shared_training(RUN_DIR / "trained")


@pytest.fixture(scope="session")
def sample_split(sample_dir: Path):
    """The small sample's model table split by time (the tuning tests' train and valid slices)."""
    from tasks.data.reading import read_tables
    from tasks.model.features import build_model_table
    from tasks.model.split import split_by_time

    s = Settings()
    tables = read_tables(sample_dir)
    table = build_model_table(
        tables["loan"], tables["clarity"], s.data.label_bad_statuses, s.data.label_good_statuses
    )
    return split_by_time(table, s.data.split_fractions)
