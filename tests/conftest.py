"""Test session set-up: all state in a throwaway folder, Prefect quiet and fast, markers enforced under CI."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="loanrisk-tests-"))
os.environ.setdefault("LOANRISK_STATE_DIR", str(_STATE))
os.environ.setdefault("PREFECT_HOME", str(Path(os.environ["LOANRISK_STATE_DIR"]) / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("LOANRISK_TASK_RETRY_DELAY_SECONDS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

from tasks.settings import Settings, get_settings  # noqa: E402

get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state (MLflow store, Optuna storage, data cache) lives in this test's tmp dir."""
    return Settings(state_dir=tmp_path / "state", n_trials=2, max_iterations=80, tune_timeout_seconds=120)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (scale 0.02), generated once per session."""
    from tasks.sample import generate

    out = tmp_path_factory.mktemp("sample")
    generate(out, scale=0.02, seed=7)
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop Prefect's ephemeral servers while output capture is still open (else it logs to a closed file)."""
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:  # pragma: no cover
        return
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


@pytest.fixture(scope="session")
def sample_split(sample_dir: Path):
    """The small sample's model table split by time (the tuning tests' train and valid slices)."""
    from tasks.features import build_model_table
    from tasks.reading import read_tables
    from tasks.split import split_by_time

    s = Settings()
    tables = read_tables(sample_dir)
    table = build_model_table(tables["loan"], tables["clarity"], s.label_bad_statuses, s.label_good_statuses)
    return split_by_time(table, s.split_fractions)
